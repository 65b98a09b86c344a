"""The split on real git histories: evaluation on the future in time, and no leak in either mode.

Every repository here is a real one made by ``git`` in a temporary folder; the expected line ranges are
written out by hand from the edits each test makes, not computed by the code under test.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import git, write_tree

from repotune import clean, ingest
from repotune.clean import CleanConfig
from repotune.clean.split import path_score, remap_ranges
from repotune.clean.split import renames as split_renames
from repotune.errors import RepotuneError
from repotune.ingest import IngestConfig
from repotune.records import Kind, Record, read_records
from repotune.sources import cut as cuts
from repotune.sources import git as gitsrc


def body(name: str, n: int, start: int = 0) -> str:
    """``n`` distinct lines of code, each long enough for the leak audit (40 characters or more)."""
    return "".join(
        f"    result_{name}_{i} = compute_the_{name}_value(alpha={i}, beta='{name}-{i}')\n"
        for i in range(start, start + n)
    )


def module(name: str, n: int) -> str:
    return f"def {name}():\n" + body(name, n) + "    return None\n"


def commit(repo: Path, message: str, day: int, files: dict[str, str] | None = None, remove=()) -> str:
    if files:
        write_tree(repo, files)
    for path in remove:
        (repo / path).unlink()
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", message, date=f"2024-01-{day:02d}T00:00:00+00:00")
    return git(repo, "rev-parse", "HEAD").strip()


CORE_AT_CUT = module("core", 20)
UTIL = module("util", 12)
MOVED = module("moved", 30)


@pytest.fixture
def history(make_repo: Callable[..., Path]) -> dict:
    """Twelve commits: nine before the cut, the cut (tagged ``v1``), two after it."""
    repo = make_repo([])
    commit(
        repo,
        "Add the core",
        1,
        {"src/app/core.py": module("core", 18), "README.md": "# App\n\nIt computes.\n"},
    )
    commit(repo, "Add util", 2, {"src/app/util.py": UTIL})
    for day in range(3, 10):
        commit(repo, f"Add mod{day}", day, {f"src/app/mod{day}.py": module(f"mod{day}", 8)})
    cut = commit(repo, "Grow the core", 10, {"src/app/core.py": CORE_AT_CUT, "src/app/moved.py": MOVED})
    git(repo, "tag", "v1")
    util_lines = UTIL.splitlines(keepends=True)
    util_lines[5] = "    result_util_4 = compute_the_util_value(alpha=4, beta='changed after the cut')\n"
    commit(
        repo,
        "Extend the core, change util, add new and a scratch line",
        11,
        {
            "src/app/core.py": CORE_AT_CUT.replace(
                "    return None\n", body("future", 5) + "    return None\n"
            ),
            "src/app/util.py": "".join(util_lines),
            "src/app/new.py": module("fresh", 3),
            "src/app/mod3.py": module("mod3", 8) + "# scratch line that a later commit takes back again\n",
        },
    )
    (repo / "src/app/renamed.py").write_text(MOVED.replace("alpha=7,", "alpha=70,"))
    commit(
        repo,
        "Move a module, drop mod4, take the scratch line back, add notes",
        12,
        {"src/app/mod3.py": module("mod3", 8), "docs/notes.md": "# Notes\n\nThe core grew after v1.\n"},
        remove=("src/app/moved.py", "src/app/mod4.py"),
    )
    return {"repo": repo, "cut": cut, "end": git(repo, "rev-parse", "HEAD").strip()}


# What commits 11 and 12 added, line for line (1-based, inclusive): the core's five lines before its
# closing `return` (lines 22-26: `def` is line 1, the 20 body lines 2-21), util's changed sixth line,
# the new files whole, and of the renamed module only its changed line (`alpha=7` is body line 8).
EXPECTED_ADDED = {
    "src/app/core.py": [[22, 26]],
    "src/app/util.py": [[6, 6]],
    "src/app/new.py": [[1, 5]],
    "src/app/renamed.py": [[9, 9]],
    "docs/notes.md": [[1, 3]],
}


def _ingest(source: Path | str, out: Path, **settings) -> tuple[dict, list[Record]]:
    result = ingest.run(IngestConfig(source=str(source), output=out, **settings))
    manifest = json.loads(result.output.manifest.read_text())
    assert manifest["split"] == result.split
    return manifest, list(read_records(result.output.records))


def _files_at(repo: Path, revision: str) -> dict[str, str]:
    paths = git(repo, "ls-tree", "-r", "--name-only", revision).split()
    return {path: git(repo, "show", f"{revision}:{path}") for path in paths}


@pytest.mark.parametrize("cut", ["v1", "10%", "2024-01-10", "2024-01-10T12:00:00+00:00"])
def test_the_cut_by_revision_share_or_date_finds_the_same_commit(
    history: dict, tmp_path: Path, cut: str
) -> None:
    manifest, _ = _ingest(history["repo"], tmp_path / "in", cut=cut, kinds=frozenset({Kind.COMMIT}))
    split = manifest["split"]
    assert split["mode"] == "temporal" and split["reason"] is None
    assert split["cut"] == {"commit": history["cut"], "date": "2024-01-10T00:00:00+00:00"}
    assert split["end"]["commit"] == history["end"] == manifest["commit"]
    assert (split["commits_before_cut"], split["commits_after_cut"]) == (10, 2)


def test_training_gets_the_tree_and_commits_up_to_the_cut_and_eval_what_came_after(
    history: dict, tmp_path: Path
) -> None:
    repo, cut, end = history["repo"], history["cut"], history["end"]
    manifest, records = _ingest(repo, tmp_path / "in", cut="v1")
    at_cut = {path: text for path, text in _files_at(repo, cut).items()}
    train_files = {r.file_path: r for r in records if r.file_path and "added_lines" not in r.meta}
    assert {path: r.content for path, r in train_files.items()} == at_cut  # the tree at C, as it was
    assert all(r.revision == cut for r in train_files.values())

    future = {r.file_path: r for r in records if "added_lines" in r.meta}
    assert {path: r.meta["added_lines"] for path, r in future.items()} == EXPECTED_ADDED
    at_end = _files_at(repo, end)
    for path, record in future.items():
        assert record.content == at_end[path]  # the file as it stands at the end revision
        assert record.meta["cut"] == cut and record.revision == end
    assert len({r.id for r in records}) == len(records)  # a file's two versions are two records
    lines = at_end["src/app/core.py"].splitlines()
    assert [lines[i - 1] for i in range(22, 27)] == body("future", 5).splitlines()
    # Deleted after the cut (mod4, moved.py): no record; a line added and taken back (mod3): none either.
    assert not {"src/app/mod4.py", "src/app/moved.py", "src/app/mod3.py"} & set(future)
    assert manifest["split"]["future_files"] == 5 and manifest["split"]["future_lines"] == 15

    commits = [r for r in records if r.kind is Kind.COMMIT]
    after = {r.meta["sha"] for r in commits if r.meta["after_cut"]}
    assert after == set(git(repo, "rev-list", f"{cut}..{end}").split())
    assert len(commits) == 12 and len(after) == 2

    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    train = list(read_records(result.output.train))
    held = list(read_records(result.output.eval))
    assert {r.meta["sha"] for r in held if r.kind is Kind.COMMIT} == after
    assert {r.meta["sha"] for r in train if r.kind is Kind.COMMIT} == {r.meta["sha"] for r in commits} - after
    assert {r.file_path for r in held if r.file_path} == set(EXPECTED_ADDED)
    assert all("added_lines" not in r.meta for r in train)
    # The file at the cut is a near copy of its future version; it still trains (no eval_overlap).
    assert "src/app/core.py" in {r.file_path for r in train} and "eval_overlap" not in result.dropped
    split = json.loads(result.output.stats.read_text())["split"]
    assert split["mode"] == "temporal" and split["cut"]["commit"] == cut
    assert split["trained_on"] == f"files at {cut[:7]} (2024-01-10) and 10 commits up to it"
    assert split["scored_on"] == "15 lines added to 5 files by 2 commits after it and 2 held-out commits"
    assert result.split.scored_lines == 15 and result.leaks.scored_in_training == 0


def test_nothing_added_after_the_default_cut_reaches_training(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """The temporal leak test: with no setting at all, the lines a history added after its cut (unique
    marker lines, more than the default cut wants to score) never reach train.jsonl. On a file split
    (main before the temporal split) they did: the newest version of every training file trains."""
    repo = make_repo([])
    for day in range(1, 11):
        commit(repo, f"Add part {day}", day, {f"pkg/part{day}.py": module(f"part{day}", 60)})
    marker = "FUTURE-ONLY-{}"
    future = {
        f"pkg/part{day}.py": module(f"part{day}", 60) + f"# {marker.format(day)}\n" + body(f"late{day}", 50)
        for day in (1, 2, 3, 4, 5, 6, 7, 8, 9)
    }
    commit(repo, "Extend every part", 11, future)
    ingest.run(IngestConfig(source=str(repo), output=tmp_path / "in"))  # no setting: the default cut
    out = tmp_path / "out"
    result = clean.run(CleanConfig(input=tmp_path / "in", output=out, workers=1))
    train_text = (out / "train.jsonl").read_text()
    assert "FUTURE-ONLY" not in train_text and "result_late" not in train_text
    assert result.split.mode == "temporal"
    assert result.split.scored_lines == 9 * 51
    held_text = result.output.eval.read_text()
    assert all(marker.format(day) in held_text for day in range(1, 10))
    assert result.leaks.target_lines == 9 * 50 and result.leaks.found == 0  # the marker lines are short


def test_the_file_split_drops_held_out_files_sections_from_training_commits(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """The file-split leak test: a held-out file (chosen by path hash) gained its lines in commits that
    train; their diffs of it must not carry those lines into train.jsonl (on main they did)."""
    names = [f"lib/unit{i}.py" for i in range(40)]
    held = next(p for p in names if path_score(p, "repotune") < 0.1)
    kept = next(p for p in names if path_score(p, "repotune") >= 0.1)
    repo = make_repo([])
    commit(repo, "Start", 1, {p: module(Path(p).stem, 4) for p in names})
    commit(repo, "Grow two units", 2, {held: module("held_grown", 12), kept: module("kept_grown", 12)})
    commit(repo, "Grow one unit", 3, {held: module("held_grown", 12) + module("held_only", 6)})
    commit(repo, "Touch the other unit", 4, {kept: module("kept_grown", 13)})
    # Four commits: too short a history to cut, so the file split applies by default.
    ingest.run(IngestConfig(source=str(repo), output=tmp_path / "in", max_diff_bytes=200_000))
    out = tmp_path / "out"
    result = clean.run(CleanConfig(input=tmp_path / "in", output=out, workers=1))
    train_text = (out / "train.jsonl").read_text()
    assert "held_grown" not in train_text and "held_only" not in train_text
    assert result.split.mode == "files" and "4 commits of history" in (result.split.reason or "")
    records = list(read_records(tmp_path / "in" / "records.jsonl"))
    train = list(read_records(result.output.train))
    held_out = {r.file_path for r in read_records(result.output.eval) if r.file_path}
    assert held in held_out and kept not in held_out
    train_commits = {r.content.split("\n", 1)[0]: r for r in train if r.kind is Kind.COMMIT}
    # "Grow one unit" touched only the held-out file: nothing of its diff is left, so it goes.
    assert "Grow one unit" not in train_commits and result.dropped["held_out_diff"] == 1
    grown = train_commits["Grow two units"]
    assert f"diff --git a/{kept} b/{kept}" in grown.content and "kept_grown" in grown.content
    assert held not in grown.meta["files"]
    stats = json.loads(result.output.stats.read_text())
    # "Start" loses the section of every held-out unit, "Grow two units" one, "Grow one unit" its only
    # one; the newest commit is held out by date, so it keeps its diff.
    newest = max((r for r in records if r.kind is Kind.COMMIT), key=lambda r: r.meta["date"])
    assert newest.content.startswith("Touch the other unit")
    held_units = sum(path_score(p, "repotune") < 0.1 for p in names)
    assert stats["split"]["dropped_hunks"] == held_units + 2
    assert result.leaks.found == 0 and stats["leak_audit"]["scored_in_training"] == 0
    assert "## Leak audit" in result.output.report.read_text()


def test_the_leak_audit_counts_and_sets_aside_copied_lines(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    names = [f"lib/unit{i}.py" for i in range(40)]
    held = next(p for p in names if path_score(p, "repotune") < 0.1)
    shared = body("shared", 3)  # three long lines that a training file (lib/helpers.py) also has
    repo = make_repo([])
    files = {p: module(Path(p).stem, 4) for p in names}
    files[held] = "def held():\n" + shared + body("own", 2) + "    return None\n"
    files["lib/helpers.py"] = "def copy():\n" + shared + body("copy", 9) + "    return None\n"
    assert path_score("lib/helpers.py", "repotune") >= 0.1  # it trains
    commit(repo, "Start", 1, files)
    _ingest(repo, tmp_path / "in")
    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    leaks = json.loads(result.output.stats.read_text())["leak_audit"]
    held_lines = 5  # shared and own body lines; `def held():` and `return None` are short
    assert leaks["found_in_training"] == 3 and leaks["found_by_kind"] == {"code": 3}
    assert leaks["files"] == [{"file_path": held, "target_lines": held_lines, "found": 3}]
    assert leaks["set_aside"] == 3 and leaks["scored_in_training"] == 0
    record = next(r for r in read_records(result.output.eval) if r.file_path == held)
    assert record.meta["seen_lines"] == [[2, 4]] and "added_lines" not in record.meta
    report = result.output.report.read_text()
    assert "**3** of" in report and "3 are set aside in `seen_lines`" in report


def test_moved_code_after_the_cut_is_set_aside_not_scored(history: dict, tmp_path: Path) -> None:
    """core.py's future lines are new; a module moved to another path after the cut, with no rename
    git can see, brings lines that training has at their old path: those are not scored."""
    repo = history["repo"]
    commit(repo, "Split util", 13, {"src/app/split.py": "def split():\n" + body("util", 8) + "    pass\n"})
    _ingest(repo, tmp_path / "in", cut="v1")
    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    record = next(r for r in read_records(result.output.eval) if r.file_path == "src/app/split.py")
    # body("util", 8) is util.py's lines 2-9 at the cut; line 6 of util changed after it, but the
    # copy keeps the old text, which training has.
    assert record.meta["seen_lines"] == [[2, 9]] and record.meta["added_lines"] == [[1, 1], [10, 10]]
    assert result.leaks.set_aside == 8 and result.leaks.scored_in_training == 0


def test_sources_without_history_fall_back_to_the_file_split(
    sample_tree: Path, sample_repo: Path, tmp_path: Path
) -> None:
    manifest, records = _ingest(sample_tree, tmp_path / "folder")
    assert manifest["split"] == {
        "mode": "files",
        "cut": None,
        "reason": "the source has no git history (a plain folder or archive)",
    }
    assert not any("added_lines" in r.meta for r in records)
    result = clean.run(CleanConfig(input=tmp_path / "folder", output=tmp_path / "out", workers=1))
    stats = json.loads(result.output.stats.read_text())
    assert stats["split"]["mode"] == "files" and stats["split"]["cut"] is None
    assert stats["split"]["reason"] == manifest["split"]["reason"]
    assert "held-out file" in stats["split"]["scored_on"]
    assert all("added_lines" not in r.meta for r in read_records(result.output.eval))
    assert "**File split**: the source has no git history" in result.output.report.read_text()

    manifest, _ = _ingest(sample_repo, tmp_path / "short")  # three commits
    assert manifest["split"]["mode"] == "files"
    assert manifest["split"]["reason"] == "3 commits of history: temporal evaluation needs at least 10"
    with pytest.raises(RepotuneError, match="--cut needs git history"):
        _ingest(sample_tree, tmp_path / "bad", cut="10%")


@pytest.mark.parametrize(
    "value,match",
    [("0%", "above 0%"), ("100%", "below 100%"), ("ten%", "share of commits"), ("2024-13-01", "ISO date")],
)
def test_bad_cuts_are_named(value: str, match: str) -> None:
    with pytest.raises(RepotuneError, match=match):
        IngestConfig(source=".", output=Path("out"), cut=value)
    with pytest.raises(RepotuneError, match="--cut applies only"):
        IngestConfig(source="github:o/r", output=Path("out"), cut="v1")


def test_cuts_the_history_cannot_give_are_named(history: dict, tmp_path: Path) -> None:
    repo = history["repo"]
    with pytest.raises(RepotuneError, match="--cut 'no-such-tag' is not a commit"):
        _ingest(repo, tmp_path / "a", cut="no-such-tag")
    with pytest.raises(RepotuneError, match="no commit at or before"):
        _ingest(repo, tmp_path / "b", cut="2023-01-01")
    git(repo, "checkout", "--quiet", "-b", "side", "v1")
    commit(repo, "On a side branch", 20, {"side.py": module("side", 3)})
    git(repo, "checkout", "--quiet", "main")
    with pytest.raises(RepotuneError, match="not in the history of"):
        _ingest(repo, tmp_path / "c", cut="side")


def test_the_default_cut_moves_older_until_enough_lines_are_left_to_score(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo([])
    shas = [
        commit(repo, f"c{day}", day, {f"m{day}.py": module(f"m{day}", 300 if day <= 18 else 100)})
        for day in range(1, 21)
    ]
    # 10% of 20 commits is 2, which add 2 * 102 lines: fewer than 400. Doubled, 4 add 2 * 102 + 2 * 302.
    found = cuts.choose(repo, shas[-1], None)
    assert isinstance(found, cuts.Cut)
    assert found.commit == shas[15] and found.commits_after == 4
    assert "moved older" in found.rule
    assert cuts.future_lines(repo, shas[15], shas[-1]) == 2 * 102 + 2 * 302


def test_the_default_cut_gives_way_to_the_file_split_when_little_was_added(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo([])
    shas = [commit(repo, f"c{day}", day, {f"m{day}.py": module(f"m{day}", 5)}) for day in range(1, 13)]
    found = cuts.choose(repo, shas[-1], None)
    assert isinstance(found, cuts.NoCut)
    assert found.reason == (
        "the newest half of the history (6 of 12 commits) adds 42 lines of code and docs; "
        "temporal evaluation needs at least 400"
    )


def test_the_default_cut_counts_only_what_would_be_read(make_repo: Callable[..., Path]) -> None:
    assert cuts.countable("src/app.py") and cuts.countable("docs/guide.md") and cuts.countable("Makefile")
    assert not cuts.countable("node_modules/x/index.js") and not cuts.countable("web/package-lock.json")
    assert not cuts.countable("assets/logo.png") and not cuts.countable("build/out.py")


def test_added_lines_follow_git_on_awkward_diffs(make_repo: Callable[..., Path]) -> None:
    repo = make_repo([])
    first = commit(repo, "Start", 1, {"plain.txt": "a\nb\nc\n", "sp ace.py": "x = 1\n", "café.py": "y = 1\n"})
    # An added line that itself starts with "++ " shows in the diff as "+++ ...": not a file header.
    end = commit(
        repo,
        "Edit",
        2,
        {
            "plain.txt": "a\n++ b/not-a-header\nc\ndiff --git a/x b/x\n",
            "sp ace.py": "x = 2\n",
            "café.py": "y = 1\nz = 2\n",
        },
    )
    assert dict(gitsrc.added_lines(repo, first, end)) == {
        "café.py": [[2, 2]],
        "plain.txt": [[2, 2], [4, 4]],
        "sp ace.py": [[1, 1]],
    }
    assert gitsrc.diff_header_path("diff --git a/sp ace.py b/sp ace.py\n") == "sp ace.py"
    assert gitsrc.diff_header_path('diff --git "a/caf\\303\\251.py" "b/caf\\303\\251.py"\n') == "café.py"


def test_reading_the_past_writes_nothing_into_the_repository(history: dict, tmp_path: Path) -> None:
    repo = history["repo"]

    def snapshot() -> dict[str, str]:
        return {
            str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(repo.rglob("*"))
            if p.is_file()
        }

    before = snapshot()
    _ingest(repo, tmp_path / "in", cut="v1")
    assert snapshot() == before
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.integration
def test_a_git_url_is_cut_like_a_checkout(history: dict, tmp_path: Path) -> None:
    manifest, records = _ingest(f"file://{history['repo']}", tmp_path / "in", cut="v1")
    assert manifest["split"]["cut"]["commit"] == history["cut"]
    assert {r.file_path: r.meta["added_lines"] for r in records if "added_lines" in r.meta} == EXPECTED_ADDED


def test_a_redaction_that_folds_lines_moves_the_added_ranges_with_them() -> None:
    before = "a\nkey = '''\nLINE1\nLINE2\n'''\nb\nc\n"
    after = "a\nkey = <SECRET>\nb\nc\n"
    # Lines 2-5 (the secret) and 7 (c) were added; after the fold the placeholder is line 2, c line 4.
    assert remap_ranges(before, after, [[2, 5], [7, 7]]) == [[2, 2], [4, 4]]
    assert remap_ranges(before, after, [[1, 1]]) == [[1, 1]]


@pytest.mark.integration
def test_the_command_line_says_where_it_cut_and_what_trains(history: dict, tmp_path: Path) -> None:
    import subprocess
    import sys

    def repotune(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "repotune.cli", *args], capture_output=True, text=True)

    done = repotune("ingest", str(history["repo"]), "-o", str(tmp_path / "in"), "--cut", "v1")
    assert done.returncode == 0, done.stderr
    assert f"cut at {history['cut'][:12]}" in done.stderr and "15 lines in 5 files" in done.stderr
    done = repotune("clean", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert f"trained on: files at {history['cut'][:7]} (2024-01-10) and 10 commits up to it" in done.stderr
    assert "leak audit: 0 of " in done.stderr
    done = repotune("ingest", str(history["repo"]), "-o", str(tmp_path / "bad"), "--cut", "0%")
    assert done.returncode == 2 and "--cut '0%'" in done.stderr and "Traceback" not in done.stderr


def test_commits_only_say_so(history: dict, tmp_path: Path) -> None:
    _ingest(history["repo"], tmp_path / "in", cut="v1", kinds=frozenset({Kind.COMMIT}))
    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    assert result.split.trained_on == f"10 commits up to {history['cut'][:7]} (2024-01-10)"
    assert result.split.scored_on == "2 held-out commits after it"


def test_memory_stays_flat_on_both_sides_of_the_cut(make_repo: Callable[..., Path], tmp_path: Path) -> None:
    import tracemalloc

    line = "value = compute(alpha, beta, gamma)  # a line of ordinary code\n"
    chunk = line * 3000  # about 190 kB a file
    repo = make_repo([])
    commit(repo, "Start", 1, {f"pkg{i // 50}/mod{i}.py": chunk.replace("alpha", f"a{i}") for i in range(100)})
    grown = {
        f"pkg0/mod{i}.py": chunk.replace("alpha", f"a{i}") + chunk.replace("alpha", f"late{i}")
        for i in range(10)
    }
    commit(repo, "Grow ten modules", 2, grown)
    tracemalloc.start()
    result = ingest.run(IngestConfig(source=str(repo), output=tmp_path / "in", cut="HEAD~1"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.split["future_files"] == 10 and result.split["future_lines"] == 10 * 3000
    # 19 MB at the cut and 3.8 MB of future versions: a few files' worth at a time, never the tree.
    assert peak < 4_000_000, peak


def test_issues_and_pages_go_by_their_creation_against_the_cut() -> None:
    from repotune.clean.split import EVAL, TRAIN, assign_temporal

    cut = "2024-01-10T00:00:00+00:00"
    assert assign_temporal(Kind.ISSUE, "2024-01-09T23:59:00+00:00", None, cut) == TRAIN
    assert assign_temporal(Kind.WIKI_PAGE, cut, None, cut) == TRAIN  # created at the cut: it stood there
    assert assign_temporal(Kind.PULL_REQUEST, "2024-01-10T00:00:01+00:00", None, cut) == EVAL
    assert assign_temporal(Kind.COMMIT, "2030-01-01T00:00:00+00:00", False, cut) == TRAIN  # ingest's verdict
    assert (
        assign_temporal(Kind.CODE, None, True, cut) == EVAL
        and assign_temporal(Kind.CODE, None, None, cut) == TRAIN
    )


def _thread(
    number: int,
    opened: int,
    updated: int,
    comments: list[tuple[int | str, str, dict]],
    comment_times: bool = False,
) -> Record:
    """A GitHub pull request as the source renders it, opened and last updated on those January days;
    each comment is (day or time, body, review fields such as path and diff_hunk). The source records
    each comment's time in ``meta["comment_times"]``; without ``comment_times`` the record is one of an
    ingest that did not, whose comments carry only their day."""
    from repotune.sources.github import thread_text

    def at(day: int | str) -> str:
        return day if isinstance(day, str) else f"2024-01-{day:02d}T09:00:00Z"

    item = {
        "number": number,
        "title": f"Thread {number}",
        "state": "open",
        "user": {"login": "asker"},
        "created_at": at(opened),
        "body": "What should the core compute next?",
        "pull_request": {"merged_at": None},
    }
    rendered = [
        {"user": {"login": "maintainer"}, "created_at": at(day), "body": text, **review}
        for day, text, review in comments
    ]
    meta: dict = {"number": number, "author": "asker", "created_at": at(opened), "updated_at": at(updated)}
    if comment_times:
        meta["comment_times"] = [c["created_at"] for c in rendered]
    return Record(
        content=thread_text(item, rendered, is_pr=True),
        kind=Kind.PULL_REQUEST,
        source="github:o/r",
        id=f"pr{number}",
        language="markdown",
        meta=meta,
    )


def test_a_thread_opened_before_the_cut_trains_without_its_later_comments(
    history: dict, tmp_path: Path
) -> None:
    """Temporal leak through threads: a thread opened before the cut trained with every comment, also
    those after it (pasting code added after the cut, a review comment whose hunk holds it)."""
    _ingest(history["repo"], tmp_path / "in", cut="v1")  # the cut: 2024-01-10T00:00:00+00:00
    future = body("future", 5).splitlines()
    review = {"path": "src/app/core.py", "line": 23, "diff_hunk": f"@@ -1 +1 @@\n+{future[1]}"}
    threads = [
        _thread(
            1,
            opened=5,
            updated=12,
            comments=[
                (6, "An early answer, kept.", {}),
                (8, "Another early answer, kept.", {}),
                (9, "An answer on the eve of the cut: its day may end after it.", {}),
                (11, f"I added this after the cut:\n\n```python\n{future[0]}\n```", {}),
                (12, "Looks right.", review),
            ],
        ),
        _thread(2, opened=3, updated=9, comments=[(9, "Not updated since the cut: all of it trains.", {})]),
        _thread(3, opened=11, updated=11, comments=[(11, f"Opened after the cut: {future[2]}", {})]),
    ]
    with (tmp_path / "in" / "records.jsonl").open("a", encoding="utf-8") as handle:
        handle.writelines(thread.to_json() + "\n" for thread in threads)

    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    train_text = result.output.train.read_text()
    assert not any(line.strip() in train_text for line in future)
    trained = {r.id: r.content for r in read_records(result.output.train) if r.kind is Kind.PULL_REQUEST}
    assert set(trained) == {"pr1", "pr2"} and "pr3" in result.output.eval.read_text()
    assert "An early answer, kept." in trained["pr1"] and "Another early answer, kept." in trained["pr1"]
    assert "on the eve of the cut" not in trained["pr1"] and "Looks right" not in trained["pr1"]
    assert trained["pr1"].endswith("Another early answer, kept.\n")
    assert "all of it trains" in trained["pr2"]
    split = json.loads(result.output.stats.read_text())["split"]
    assert result.split.dropped_comments == split["dropped_comments"] == 3
    assert split["trained_on"].endswith("2 issues and pages created before it (3 later comments removed)")
    assert "- 3 comments posted after the cut were taken out" in result.output.report.read_text()


def test_a_thread_is_cut_at_the_moment_of_the_cut_where_its_comments_carry_their_time(
    history: dict, tmp_path: Path
) -> None:
    """With each comment's time recorded (``meta["comment_times"]``), a comment minutes before the cut
    trains and one a second after it does not; the day alone would have dropped both."""
    _ingest(history["repo"], tmp_path / "in", cut="v1")  # the cut: 2024-01-10T00:00:00+00:00
    future = body("future", 5).splitlines()
    thread = _thread(
        1,
        opened=5,
        updated=12,
        comments=[
            (6, "An early answer, kept.", {}),
            ("2024-01-09T23:50:00-00:00", "Ten minutes before the cut, kept.", {}),
            ("2024-01-10T01:00:00+02:00", "An hour before the cut in UTC+2, kept.", {}),
            ("2024-01-10T00:00:01Z", f"A second after the cut:\n\n```python\n{future[0]}\n```", {}),
            ("2024-01-09T20:00:00-05:00", f"After the cut in UTC-5: {future[1]}", {}),
        ],
        comment_times=True,
    )
    with (tmp_path / "in" / "records.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(thread.to_json() + "\n")

    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    assert not any(line.strip() in result.output.train.read_text() for line in future)
    (trained,) = [r.content for r in read_records(result.output.train) if r.kind is Kind.PULL_REQUEST]
    assert trained.endswith("An hour before the cut in UTC+2, kept.\n")
    assert "Ten minutes before the cut, kept." in trained and "An early answer, kept." in trained
    assert result.split.dropped_comments == 2


def test_the_file_split_drops_a_held_out_files_sections_under_its_earlier_name(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """A held-out file renamed from a training path: its lines reached training through the sections of
    the old path (the rename's deletion, and the older commits that grew it there)."""
    names = [f"lib/unit{i}.py" for i in range(40)]
    held = next(p for p in names if path_score(p, "repotune") < 0.1)
    other = next(p for p in names if path_score(p, "repotune") >= 0.1)
    old, older = (next(p for p in paths if path_score(p, "repotune") >= 0.1) for paths in (
        [f"lib/old{i}.py" for i in range(100)], [f"lib/older{i}.py" for i in range(100)]
    ))  # fmt: skip
    first, grown = module("first", 8), module("grown", 6)
    repo = make_repo([])
    commit(repo, "Start", 1, {**{p: module(Path(p).stem, 4) for p in names if p != held}, older: first})
    git(repo, "mv", older, old)
    commit(repo, "Rename it once", 2)
    commit(repo, "Grow it", 3, {old: first + grown})
    git(repo, "mv", old, held)
    commit(repo, "Rename it again and edit it", 4, {held: first + grown + "# edited\n"})
    commit(repo, "Touch another unit", 5, {other: module("touched", 5)})
    ingest.run(IngestConfig(source=str(repo), output=tmp_path / "in", max_diff_bytes=200_000))
    result = clean.run(CleanConfig(input=tmp_path / "in", output=tmp_path / "out", workers=1))
    assert result.split.mode == "files" and held in result.output.eval.read_text()
    train_text = result.output.train.read_text()
    assert "result_first_" not in train_text and "result_grown_" not in train_text
    train = [r for r in read_records(result.output.train) if r.kind is Kind.COMMIT]
    start = next(r for r in train if r.content.startswith("Start"))
    assert older not in start.meta["files"] and other in start.meta["files"]
    # The renames and the growth touched nothing else: no diff is left of them.
    assert {r.content.split("\n", 1)[0] for r in train} == {"Start"}
    assert result.dropped["held_out_diff"] == 3 and result.leaks.found == 0

    # Git's own rename sections (`git show -M`) name both paths; with --no-renames, by the lines.
    assert split_renames(git(repo, "show", "--find-renames", "--format=%s", "HEAD~1")) == [(old, held)]
    assert split_renames(git(repo, "show", "--no-renames", "--format=%s", "HEAD~1")) == [(old, held)]
    assert split_renames(git(repo, "show", "--no-renames", "--format=%s", "HEAD")) == []
