"""Ingest from local folders, git checkouts, git URLs and archives, on real trees and repositories."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from tests.conftest import git, write_tree

from repotune import ingest as ingest_stage
from repotune.errors import RepotuneError
from repotune.ingest import IngestConfig
from repotune.records import Kind, Record, parse_include, read_records
from repotune.sources import archive


def ingest(source: Path | str, out: Path, **kwargs) -> tuple[dict, dict[str, Record]]:
    result = ingest_stage.run(IngestConfig(source=str(source), output=out, **kwargs))
    manifest = json.loads(result.output.manifest.read_text())
    assert (result.records, result.commit, result.kept) == (
        manifest["records"],
        manifest["commit"],
        manifest["kept"],
    )
    records = {r.file_path or r.meta.get("sha"): r for r in read_records(out / "records.jsonl")}
    return manifest, records


def test_folder_keeps_code_and_docs_and_counts_every_skip(sample_tree: Path, tmp_path: Path) -> None:
    manifest, records = ingest(sample_tree, tmp_path / "out")
    assert set(records) == {
        "README.md",
        "src/sample/__init__.py",
        "src/sample/math.py",
        "scripts/run",
        "docs/guide.rst",
    }
    assert records["src/sample/math.py"].kind is Kind.CODE
    assert records["src/sample/math.py"].language == "python"
    assert records["scripts/run"].language == "python"  # from the shebang
    assert records["docs/guide.rst"].kind is Kind.DOC
    assert records["README.md"].language == "markdown"
    assert records["src/sample/math.py"].content.startswith("def add(a: int, b: int)")
    assert manifest["source_type"] == "folder"
    assert manifest["commit"] is None
    assert manifest["skipped"] == {"binary": 2, "ignored": 2, "lockfile": 1, "vendored": 1}
    assert manifest["kept"] == {"code": 3, "doc": 2}
    assert manifest["records"] == 5


def test_ids_are_stable_across_runs(sample_tree: Path, tmp_path: Path) -> None:
    _, first = ingest(sample_tree, tmp_path / "a")
    _, second = ingest(sample_tree, tmp_path / "b")
    assert {k: r.id for k, r in first.items()} == {k: r.id for k, r in second.items()}
    assert len({r.id for r in first.values()}) == len(first)


def test_include_narrows_kinds(sample_tree: Path, tmp_path: Path) -> None:
    manifest, records = ingest(sample_tree, tmp_path / "out", kinds=parse_include("docs"))
    assert {r.kind for r in records.values()} == {Kind.DOC}
    assert manifest["skipped"]["excluded_code"] == 3


def test_unknown_include_is_named() -> None:
    with pytest.raises(RepotuneError, match="--include: unknown kind 'source'"):
        parse_include("code,source")


def test_repotuneignore_and_nested_gitignore(sample_tree: Path, tmp_path: Path) -> None:
    write_tree(
        sample_tree,
        {
            ".repotuneignore": "docs/\n",
            "src/sample/.gitignore": "math.py\n",
            "src/sample/keep.py": "def keep():\n    return 'kept because only math.py is ignored here'\n",
        },
    )
    _, records = ingest(sample_tree, tmp_path / "out")
    assert "docs/guide.rst" not in records
    assert "src/sample/math.py" not in records
    assert "src/sample/keep.py" in records


def test_symlinks_are_never_followed(sample_tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("HOST_SECRET = 'must never be read'\n")
    os.symlink(outside, sample_tree / "link_out.py")
    os.symlink(tmp_path, sample_tree / "link_dir")
    manifest, records = ingest(sample_tree, tmp_path / "out")
    assert "link_out.py" not in records
    assert not any("must never be read" in r.content for r in records.values())
    assert manifest["skipped"]["symlink"] == 2


def test_odd_names_large_and_non_utf8_files_do_not_stop_the_run(sample_tree: Path, tmp_path: Path) -> None:
    write_tree(
        sample_tree,
        {
            "odd name ü [1].py": "print('odd names are fine')\n",
            "big.py": "x = 1\n" * 300_000,
            "latin1.py": "# caf\xe9\n".encode("latin-1") + b"print('mostly ascii, one stray byte')\n" * 20,
            "other_encoding.txt": "日本語のテキスト".encode("shift_jis") * 50,
        },
    )
    manifest, records = ingest(sample_tree, tmp_path / "out", max_file_bytes=100_000)
    assert "odd name ü [1].py" in records
    assert "big.py" not in records and manifest["skipped"]["too_large"] == 1
    assert "\ufffd" in records["latin1.py"].content
    assert records["latin1.py"].meta["replaced_chars"] == 1
    assert manifest["skipped"]["not_utf8"] == 1


def test_git_checkout_yields_files_and_commits(sample_repo: Path, tmp_path: Path) -> None:
    manifest, records = ingest(sample_repo, tmp_path / "out")
    head = git(sample_repo, "rev-parse", "HEAD").strip()
    assert manifest["source_type"] == "git"
    assert manifest["commit"] == head
    commits = [r for r in records.values() if r.kind is Kind.COMMIT]
    assert len(commits) == 3
    first = next(c for c in commits if c.content.startswith("Add the sample package"))
    assert "It adds numbers." in first.content
    assert "diff --git a/src/sample/math.py b/src/sample/math.py" in first.content
    assert "+def add(a: int, b: int) -> int:" in first.content
    assert first.meta["date"] == "2024-01-01T10:00:00+00:00"
    assert first.meta["files"] == ["src/sample/math.py"]
    assert first.file_path is None and first.revision == first.meta["sha"]
    assert "ada@example.com" not in first.content + json.dumps(first.meta)
    assert records["src/sample/math.py"].revision == head
    assert manifest["kept"]["commit"] == 3


def test_commit_diffs_are_capped(sample_repo: Path, tmp_path: Path) -> None:
    _, records = ingest(sample_repo, tmp_path / "out", kinds=parse_include("commits"), max_diff_bytes=200)
    assert {r.kind for r in records.values()} == {Kind.COMMIT}
    big = next(r for r in records.values() if r.content.startswith("Add docs"))
    assert big.meta["diff_truncated"] is True
    assert big.content.endswith("[diff truncated]")


@pytest.mark.integration
def test_git_url_with_ref_resolves_the_commit(sample_repo: Path, tmp_path: Path) -> None:
    first_sha = git(sample_repo, "rev-list", "--max-parents=0", "HEAD").strip()
    git(sample_repo, "tag", "v0.1", first_sha)
    manifest, records = ingest(f"file://{sample_repo}", tmp_path / "out", ref="v0.1")
    assert manifest["commit"] == first_sha
    assert manifest["ref"] == "v0.1"
    assert set(k for k, r in records.items() if r.kind is not Kind.COMMIT) == {"src/sample/math.py"}
    assert sum(r.kind is Kind.COMMIT for r in records.values()) == 1


@pytest.mark.integration
def test_every_clone_of_a_repository_names_the_same_root_commit(sample_repo: Path, tmp_path: Path) -> None:
    first_sha = git(sample_repo, "rev-list", "--max-parents=0", "HEAD").strip()
    elsewhere = tmp_path / "another-folder-name"
    git(tmp_path, "clone", "--quiet", str(sample_repo), str(elsewhere))
    roots = [
        ingest(source, tmp_path / f"out{i}", kinds=frozenset({Kind.CODE}))[0]["root_commit"]
        for i, source in enumerate((sample_repo, elsewhere, f"file://{sample_repo}"))
    ]
    assert roots == [first_sha] * 3
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "--quiet", "--depth=1", f"file://{sample_repo}", str(shallow))
    # a shallow clone's oldest commit is where the clone stopped, not where the project began
    assert ingest(shallow, tmp_path / "out-shallow", kinds=frozenset({Kind.CODE}))[0]["root_commit"] is None
    assert ingest(sample_repo / "src", tmp_path / "out-folder")[0]["root_commit"] is None


def test_the_file_split_of_a_checkout_reads_tracked_files_only(sample_repo: Path, tmp_path: Path) -> None:
    (sample_repo / "notes-untracked.txt").write_text("db password is zzuntrackedzz\n")
    (sample_repo / "README.md").write_text("# Sample\n\nEdited, not committed yet.\n")  # tracked, modified
    manifest, records = ingest(sample_repo, tmp_path / "out", cut="HEAD")
    assert manifest["split"]["mode"] == "files"
    assert "notes-untracked.txt" not in records and manifest["skipped"]["untracked"] == 1
    assert "Edited, not committed yet." in records["README.md"].content  # as on disk


@pytest.mark.integration
def test_a_github_token_reaches_githubs_git_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A private repository on a cluster is cloned by its plain URL: GITHUB_TOKEN (the Secret
    repotune-github) goes to the GitHub server as an Authorization header, and to no other host."""
    import base64
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from repotune.sources.revision import resolve_revision

    seen: list[str | None] = []

    class Server(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret123")
    try:
        for server in (url, None):  # GitHub Enterprise at this address; then github.com (the default)
            if server:
                monkeypatch.setenv("GITHUB_SERVER_URL", server)
            else:
                monkeypatch.delenv("GITHUB_SERVER_URL")
            with pytest.raises(RepotuneError) as failed:
                resolve_revision(f"{url}/team/private.git")
            assert "ghp_secret123" not in str(failed.value)
    finally:
        httpd.shutdown()
    basic = base64.b64encode(b"x-access-token:ghp_secret123").decode()
    assert seen[0] == f"basic {basic}" and seen[-1] is None


@pytest.mark.integration
def test_git_url_errors_are_one_line(sample_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match="--ref 'no-such-tag' is not a branch, tag or commit"):
        ingest_stage.run(
            IngestConfig(source=f"file://{sample_repo}", output=tmp_path / "a", ref="no-such-tag")
        )
    with pytest.raises(RepotuneError, match="cannot clone"):
        ingest_stage.run(IngestConfig(source=f"file://{tmp_path}/missing.git", output=tmp_path / "b"))
    empty = tmp_path / "empty"
    git(tmp_path, "init", "--quiet", str(empty))
    with pytest.raises(RepotuneError, match=r"^file://\S+/empty has no commits \(an empty repository\)$"):
        ingest_stage.run(IngestConfig(source=f"file://{empty}", output=tmp_path / "c"))


@pytest.mark.integration
def test_git_url_ref_names_any_branch_tag_or_commit(sample_repo: Path, tmp_path: Path) -> None:
    """A fresh clone has only the default branch locally: the others are found as origin/NAME."""
    main = git(sample_repo, "rev-parse", "HEAD").strip()
    first = git(sample_repo, "rev-list", "--max-parents=0", "HEAD").strip()
    git(sample_repo, "tag", "v0.1", first)
    git(sample_repo, "checkout", "--quiet", "-b", "feature", first)
    write_tree(sample_repo, {"src/sample/feature.py": "def feature() -> int:\n    return 1\n"})
    git(sample_repo, "add", "--all")
    git(sample_repo, "commit", "--quiet", "--message", "Add the feature")
    feature = git(sample_repo, "rev-parse", "HEAD").strip()
    git(sample_repo, "checkout", "--quiet", "main")
    expected = {
        "feature": feature,
        "refs/heads/feature": feature,
        "origin/feature": feature,
        "main": main,
        "refs/heads/main": main,
        "v0.1": first,
        "refs/tags/v0.1": first,
        first: first,
        feature[:10]: feature,
    }
    for index, (ref, sha) in enumerate(expected.items()):
        result = ingest_stage.run(
            IngestConfig(source=f"file://{sample_repo}", output=tmp_path / str(index), ref=ref, cut="HEAD")
        )
        assert result.commit == sha, ref
    files = {r.file_path for r in read_records(tmp_path / "0" / "records.jsonl")}
    assert "src/sample/feature.py" in files


@pytest.mark.integration
def test_git_clone_errors_show_gits_reason_without_credentials(tmp_path: Path) -> None:
    import subprocess
    import sys

    missing = f"file://{tmp_path}/nonexistent.git"
    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "ingest", missing, "-o", str(tmp_path / "o")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: cannot clone {missing}: '{tmp_path}/nonexistent.git' does not appear to be a git "
        "repository; Could not read from remote repository."
    )
    # a token in the URL never reaches the message, whatever git says about the URL
    from tests.s3_server import closed_port_url

    with_token = closed_port_url().replace("http://", "http://ada:tok3n@") + "/o/r.git"
    with pytest.raises(RepotuneError) as raised:
        ingest_stage.run(IngestConfig(source=with_token, output=tmp_path / "b"))
    message = str(raised.value)
    assert "tok3n" not in message and "ada" not in message
    assert message.startswith("cannot clone http://127.0.0.1:") and "Failed to connect" in message


@pytest.mark.integration
def test_a_bare_repository_is_refused_not_read_as_git_internals(sample_repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "repo.git"
    git(tmp_path, "clone", "--quiet", "--bare", str(sample_repo), str(bare))
    for folder in (bare, sample_repo / ".git"):
        with pytest.raises(RepotuneError, match=r"is a bare git repository .*: point at a checkout"):
            ingest_stage.run(IngestConfig(source=str(folder), output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes], mode: str) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


CODE = b"def greet(name):\n    return f'hello {name}'\n"


@pytest.mark.parametrize("suffix,mode", [(".zip", None), (".tar.gz", "w:gz"), (".tar.xz", "w:xz")])
def test_archives_extract_with_their_single_top_folder_as_root(tmp_path: Path, suffix: str, mode) -> None:
    members = {"proj-1.0/app/greet.py": CODE, "proj-1.0/README.md": b"# proj\n\nGreets people by name.\n"}
    path = tmp_path / f"proj{suffix}"
    _zip(path, members) if mode is None else _tar(path, members, mode)
    manifest, records = ingest(path, tmp_path / "out")
    assert set(records) == {"app/greet.py", "README.md"}
    assert manifest["source_type"] == "archive"


@pytest.mark.parametrize(
    "name,message",
    [
        ("../evil.py", "escapes the archive"),
        ("/etc/evil.py", "absolute path"),
        ("ok/../../evil.py", "escapes the archive"),
    ],
)
def test_archives_with_escaping_members_are_rejected(tmp_path: Path, name: str, message: str) -> None:
    for path in (
        _zip(tmp_path / "bad.zip", {name: CODE}),
        _tar(tmp_path / "bad.tar.gz", {name: CODE}, "w:gz"),
    ):
        with pytest.raises(RepotuneError, match=message):
            ingest_stage.run(IngestConfig(source=str(path), output=tmp_path / "out"))
    assert not (tmp_path / "evil.py").exists()


def test_archive_links_are_skipped_and_bombs_rejected(tmp_path: Path) -> None:
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        code = tarfile.TarInfo("proj/app.py")
        code.size = len(b"print('hi')\n")
        tf.addfile(code, io.BytesIO(b"print('hi')\n"))
        for name, kind, target in (("passwd", tarfile.SYMTYPE, "/etc/passwd"), ("alias.py", tarfile.LNKTYPE,
                                   "proj/app.py")):  # fmt: skip
            link = tarfile.TarInfo(f"proj/{name}")
            link.type, link.linkname = kind, target
            tf.addfile(link)
    assert archive.scan(path).links == 2
    _, records = ingest(path, tmp_path / "out")
    assert set(records) == {"app.py"}  # the links were neither extracted nor followed
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.txt": b"0" * 5_000_000})
    with pytest.raises(RepotuneError, match="archive bomb"):
        archive.extract(bomb, tmp_path / "x", archive.ArchiveLimits(max_total_bytes=1_000_000))


def test_an_archived_repository_runs_nothing_of_its_own_config(make_repo, tmp_path: Path) -> None:
    """An uploaded archive's .git is read for its history, but the programs its config names (a diff
    driver's textconv, a filter's smudge, core.fsmonitor, a hook) never run; a .git file naming
    another repository's git folder is no history at all."""
    marks = tmp_path / "ran"
    marks.mkdir()
    first = {".gitattributes": "*.py diff=evil filter=evil\n", "tool.py": "def tool():\n    return 0\n"}
    commits = [("Add the tool", first, "2024-01-01T10:00:00+00:00")]
    for day in range(2, 13):
        body = f"def step_{day}(value):\n    return value + {day}\n"
        commits.append((f"Add step {day}", {f"steps/s{day}.py": body}, f"2024-01-{day:02d}T10:00:00+00:00"))
    repo = make_repo(commits, name="evil")
    for key, program in (
        ("diff.evil.textconv", f"sh -c 'touch {marks}/textconv; cat \"$0\"'"),
        ("filter.evil.smudge", f"sh -c 'touch {marks}/smudge; cat'"),
        ("core.fsmonitor", f"touch {marks}/fsmonitor; echo"),
        ("core.hooksPath", str(tmp_path / "hooks")),
    ):
        git(repo, "config", key, program)
    (tmp_path / "hooks").mkdir()
    hook = tmp_path / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\ntouch {marks}/hook\n")
    hook.chmod(0o755)
    git(repo, "status")  # the repository's own git runs them: the test's programs work
    assert {p.name for p in marks.iterdir()} >= {"fsmonitor"}
    for mark in marks.iterdir():
        mark.unlink()
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(repo, arcname="evil")
    manifest, records = ingest(path, tmp_path / "out", cut="HEAD~3")  # files checked out at the cut
    assert list(marks.iterdir()) == []
    assert manifest["split"]["mode"] == "temporal", manifest["split"]
    assert any(r.kind == "commit" for r in records.values())
    (repo / ".git").rename(tmp_path / "real.git")
    (repo / ".git").write_text(f"gitdir: {tmp_path / 'real.git'}\n")
    with tarfile.open(path, "w:gz") as tf:
        tf.add(repo, arcname="evil")
    manifest, records = ingest(path, tmp_path / "out2")
    assert not any(r.kind == "commit" for r in records.values()) and "tool.py" in records
    assert list(marks.iterdir()) == []


def test_what_the_walk_leaves_out_is_left_out_of_commit_diffs_too(make_repo, tmp_path: Path) -> None:
    """A file kept out by .repotuneignore, a vendored folder, a lockfile or a minified bundle is not
    read from the tree, and not from the commits that change it either (nor the ignore file itself,
    which the walk skips too): their diff sections go
    before the size cap (so junk does not crowd the real change out), counted by reason."""
    secret_algo = "PROPRIETARY = 'do not train on this'\n" * 40
    repo = make_repo(
        [
            (
                "Add the service",
                {
                    ".repotuneignore": "internal/\n",
                    "internal/algo.py": secret_algo,
                    "vendor/lib/x.go": "package lib\n" * 200,
                    "package-lock.json": '{"lockfileVersion": 3}\n' * 300,
                    "web/app.min.js": "var a=1;" * 500 + "\n",
                    "src/service.py": "def serve():\n    return 'ok'\n",
                },
                "2024-01-01T10:00:00+00:00",
            )
        ]
    )
    manifest, records = ingest(repo, tmp_path / "out", max_diff_bytes=2_000)
    commit = next(r for r in records.values() if r.kind == "commit")
    assert "PROPRIETARY" not in commit.content and "lockfileVersion" not in commit.content
    assert "src/service.py" in commit.content and "[diff truncated]" not in commit.content
    assert commit.meta["files"] == ["src/service.py"] and commit.meta["files_left_out"] == 5
    skipped = manifest["skipped"]
    assert (skipped["diff_ignored"], skipped["diff_vendored"], skipped["diff_lockfile"]) == (2, 1, 1)
    assert skipped["diff_minified"] == 1
    assert not any("PROPRIETARY" in r.content for r in records.values())


def test_the_checkouts_ignore_files_rule_the_tree_read_at_a_cut(make_repo, tmp_path: Path) -> None:
    """In the temporal split the tree is read as it was at the cut, but with the project's ignore
    files as they are now: a rule added since (even uncommitted) keeps its files out of training."""
    commits = [("Add mod1", {"mod1.py": "def one():\n    return 1\n"}, "2024-01-01T10:00:00+00:00")]
    for day in range(2, 13):
        commits.append((f"Add s{day}", {f"s{day}.py": f"def f{day}():\n    return {day}\n"},
                        f"2024-01-{day:02d}T10:00:00+00:00"))  # fmt: skip
    repo = make_repo(commits)
    (repo / ".repotuneignore").write_text("mod1.py\n")
    manifest, records = ingest(repo, tmp_path / "out", cut="HEAD~3")
    assert manifest["split"]["mode"] == "temporal"
    assert "mod1.py" not in records and "s2.py" in records
    assert not any("def one" in r.content for r in records.values())


def test_a_folder_inside_a_repository_reads_only_what_git_tracks(make_repo, tmp_path: Path) -> None:
    """A service's folder in a monorepo: its tracked files, not the scratch files and secrets beside
    them that the repository's .gitignore keeps out; no history (that is read from the top). A folder
    git tracks nothing of (an unpacked dump inside a checkout) is read as a plain folder."""
    repo = make_repo([("Add the service", {".gitignore": "*.env\nsecrets/\n", "svc/app.py": "print('app')\n"},
                       "2024-01-01T10:00:00+00:00")])  # fmt: skip
    write_tree(
        repo, {"svc/prod.env": "DB_PASSWORD=x\n", "svc/secrets/key.py": "KEY = 1\n", "svc/scratch.py": "1\n"}
    )
    manifest, records = ingest(repo / "svc", tmp_path / "out")
    assert set(records) == {"app.py"} and manifest["skipped"]["untracked"] == 3, manifest["skipped"]
    assert manifest["split"]["mode"] == "files" and "inside the git repository" in manifest["split"]["reason"]
    assert manifest["repository"] == str(repo)
    with pytest.raises(RepotuneError, match="inside the git repository"):
        ingest(repo / "svc", tmp_path / "out2", cut="HEAD")
    write_tree(repo, {"dump/notes.md": "# Notes\n\nWritten by hand, never committed.\n"})
    manifest, records = ingest(repo / "dump", tmp_path / "out3")
    assert set(records) == {"notes.md"} and "repository" not in manifest


def test_uncommitted_changes_are_read_from_disk_without_a_revision(make_repo, tmp_path: Path) -> None:
    """A checkout with changes not committed (file split): the changed files are read as they are on
    disk and name no commit, since HEAD does not hold them; the split counts them."""
    repo = make_repo([("Add", {"a.py": "def a():\n    return 1\n", "b.py": "def b():\n    return 2\n"},
                       "2024-01-01T10:00:00+00:00")])  # fmt: skip
    head = git(repo, "rev-parse", "HEAD").strip()
    write_tree(repo, {"a.py": "def a():\n    return 'changed'\n", "c.py": "def c():\n    return 3\n"})
    git(repo, "add", "c.py")  # staged, never committed
    manifest, records = ingest(repo, tmp_path / "out")
    assert manifest["split"]["uncommitted_files"] == 2
    assert (records["a.py"].revision, records["a.py"].meta["uncommitted"]) == (None, True)
    assert "changed" in records["a.py"].content and records["c.py"].revision is None
    assert records["b.py"].revision == head and "uncommitted" not in records["b.py"].meta


def test_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip")
    with pytest.raises(RepotuneError, match=r"broken\.tar\.gz is corrupt or unreadable"):
        ingest_stage.run(IngestConfig(source=str(path), output=tmp_path / "out"))


def test_an_empty_archive_is_a_clear_error(tmp_path: Path) -> None:
    empty_zip = _zip(tmp_path / "empty.zip", {})
    only_folders = tmp_path / "folders.tar.gz"
    with tarfile.open(only_folders, "w:gz") as tf:
        folder = tarfile.TarInfo("proj/src")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
    for path in (empty_zip, only_folders):
        with pytest.raises(RepotuneError, match=rf"^archive {path.name} is empty: it holds no files$"):
            ingest_stage.run(IngestConfig(source=str(path), output=tmp_path / "out"))


def test_an_archive_of_another_format_says_what_it_looks_like(tmp_path: Path) -> None:
    a_zip = _zip(tmp_path / "proj.zip", {"proj/app.py": CODE})
    as_tar = tmp_path / "proj.tar.gz"
    as_tar.write_bytes(a_zip.read_bytes())
    a_tar = _tar(tmp_path / "real.tar.gz", {"proj/app.py": CODE}, "w:gz")
    as_zip = tmp_path / "real.zip"
    as_zip.write_bytes(a_tar.read_bytes())
    for path, message in (
        (as_tar, "could not be read as .tar.gz: it looks like a zip archive, rename it to .zip"),
        (as_zip, "could not be read as .zip: it looks like gzip-compressed data, rename it to .tar.gz"),
    ):
        with pytest.raises(RepotuneError) as failed:
            ingest_stage.run(IngestConfig(source=str(path), output=tmp_path / "out"))
        assert str(failed.value) == f"archive {path.name} {message}"


def test_missing_source_and_plain_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match="does not exist"):
        ingest_stage.run(IngestConfig(source=str(tmp_path / "nope"), output=tmp_path / "out"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(RepotuneError, match="not an archive"):
        ingest_stage.run(IngestConfig(source=str(tmp_path / "notes.txt"), output=tmp_path / "out"))


def test_an_interrupted_run_leaves_no_records_file(sample_tree: Path, tmp_path: Path, monkeypatch) -> None:
    import repotune.ingest.stage as ingest_module

    real = ingest_module.iter_source

    def dies_midway(*args, **kwargs):
        for count, record in enumerate(real(*args, **kwargs)):
            if count == 2:
                raise KeyboardInterrupt
            yield record

    monkeypatch.setattr(ingest_module, "iter_source", dies_midway)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ingest_stage.run(IngestConfig(source=str(sample_tree), output=out))
    assert list(out.iterdir()) == []


def test_memory_does_not_grow_with_the_repository(tmp_path: Path) -> None:
    root = tmp_path / "big"
    line = "value = compute(alpha, beta, gamma)  # a line of ordinary code\n"
    chunk = line * 3000  # about 190 kB a file
    write_tree(root, {f"pkg{i // 50}/mod{i}.py": chunk.replace("alpha", f"a{i}") for i in range(150)})
    tracemalloc.start()
    ingest_stage.run(IngestConfig(source=str(root), output=tmp_path / "out"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    total = sum(p.stat().st_size for p in root.rglob("*.py"))
    assert total > 25_000_000
    # A few files' worth at a time, never the tree: 28 MB in, under 4 MB held at the peak.
    assert peak < 4_000_000, peak


def test_output_inside_the_source_is_not_ingested(sample_tree: Path) -> None:
    out = sample_tree / "out"
    ingest_stage.run(IngestConfig(source=str(sample_tree), output=out))
    manifest, records = ingest(sample_tree, out)  # the second run sees the first run's output
    assert not any(path.startswith("out/") for path in records)
    assert manifest["records"] == 5


@pytest.mark.integration
def test_credentials_in_a_git_url_never_reach_the_output(sample_repo: Path, tmp_path: Path) -> None:
    from repotune.ingest.stage import _display_source

    assert _display_source("https://user:ghp_secret@github.com/o/r.git") == "https://github.com/o/r.git"
    assert _display_source("https://git.example.com/o/r.git?access_token=glpat-x1&ref=main") == (
        "https://git.example.com/o/r.git?access_token=***&ref=main"
    )
    with pytest.raises(RepotuneError) as failed:  # nor in the error of a clone that fails
        ingest_stage.run(IngestConfig(source=f"file://{tmp_path}/missing.git?private_token=glpat-y2",
                                      output=tmp_path / "failed"))  # fmt: skip
    assert "glpat-y2" not in str(failed.value) and "private_token=***" in str(failed.value)
    assert _display_source(".") == str(Path(".").resolve())
    manifest, records = ingest(f"file://{sample_repo}", tmp_path / "out")
    assert manifest["source"] == f"file://{sample_repo}"
    assert all(r.source == f"file://{sample_repo}" for r in records.values())


@pytest.fixture
def shared_tmp(tmp_path: Path):
    """A folder another user can enter: pytest's own tmp folders are private to the user running it."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="repotune-test-"))
    folder.chmod(0o777)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):  # chmod 000 folders must be opened up again to be removed
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(folder)


NOBODY = 65534


def as_unprivileged(work) -> str:
    """Runs ``work()`` where permission bits bind: in a forked child that drops to ``nobody`` (uid
    65534) when this process is root (tests often run as root in containers, and root reads any
    file whatever its mode), in this process otherwise. Returns "ok" or the child's traceback.

    The child cannot import anything new once it is ``nobody`` (the interpreter's files may be
    private to root), so the caller warms ``work``'s imports up first.
    """
    import traceback

    if os.geteuid() != 0:
        work()
        return "ok"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                work()
                outcome = "ok"
            except BaseException:
                outcome = traceback.format_exc()
            os.write(write, outcome.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    return outcome


@pytest.mark.integration
def test_unreadable_folders_and_ignore_files_are_counted_skips(shared_tmp: Path, sample_tree: Path) -> None:
    """Ingest over a tree with a folder, an ignore file and a file it may not read: each is a counted
    ``unreadable`` skip, and the rest is ingested."""
    tree = shared_tmp / "tree"
    write_tree(
        tree,
        {
            "src/app.py": "def main():\n    return 'readable'\n",
            "private/keys.py": "TOKEN = 'must never be read'\n",
            "docs/guide.md": "# Guide\n\nRead me.\n",
            "docs/.gitignore": "secrets.env\n",
            "docs/secrets.env": "PASSWORD=hunter2\n",
            "src/locked.py": "x = 1\n",
        },
    )
    ingest(sample_tree, shared_tmp / "warm-up")  # every import the walk needs, done before the fork
    for path in (tree / "private", tree / "docs" / ".gitignore", tree / "src" / "locked.py"):
        path.chmod(0)
    for path in (tree, tree / "src", tree / "docs"):
        path.chmod(0o755)
    out = shared_tmp / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    outcome = as_unprivileged(lambda: ingest_stage.run(IngestConfig(source=str(tree), output=out)))
    assert outcome == "ok", outcome
    manifest = json.loads((out / "manifest.json").read_text())
    records = {r.file_path: r for r in read_records(out / "records.jsonl")}
    assert set(records) == {"src/app.py"}
    # the private folder, the docs folder (its .gitignore unread, so walking it could take in what
    # that file keeps out) and the locked file
    assert manifest["skipped"]["unreadable"] == 3
