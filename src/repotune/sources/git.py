"""Git: clone a URL at a ref, resolve the commit SHA, stream commits as records, and read the history
that temporal evaluation needs: a revision's tree, its date, and the lines added between two revisions.

The ``git`` command line is the one dependency here: it speaks every transport (https, ssh, file)
with the user's own credential helpers, which no Python reimplementation matches. Nothing here writes
to the repository: a past tree is checked out through a temporary index into a folder of its own.
"""

from __future__ import annotations

import base64
import codecs
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, record_id
from repotune.sources.base import IngestStats

# Paths in diff headers as they are (UTF-8), not C-quoted octal escapes.
_NO_QUOTING = ["-c", "core.quotePath=false"]
# user@host:path: the user and host start with a letter, digit or "_", so "-uX@host:path" is no URL.
_URL = re.compile(r"^(?:https?|ssh|git|file)://|^\w[\w.-]*@\w[\w.-]*:")
# A marker no commit message contains, so one `git log` stream splits into commits reliably.
_MARK = "\x1e\x1erepotune-commit\x1e"
_FIELD = "\x1f"
# The ``user:token@`` of a URL, wherever it appears in a message.
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def is_git_url(spec: str) -> bool:
    return bool(_URL.match(spec))


def _git_env() -> dict[str, str]:
    # Never prompt for a password in a pipeline: fail at once and report it instead.
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "LC_ALL": "C", **_config_env()}


# Reading a repository runs nothing of its own: no hooks (a checkout's post-checkout) and no file
# system monitor, whatever its config says (the environment's config wins over the repository's).
_SAFE_CONFIG = {"core.hooksPath": "/dev/null", "core.fsmonitor": "false"}


def _config_env() -> dict[str, str]:
    """Git config as environment variables (nothing is written to disk or to the remote URL):
    ``_SAFE_CONFIG``, and with ``GITHUB_TOKEN`` set, what sends it to GitHub's git over HTTPS as
    actions/checkout does: an ``Authorization`` header for ``GITHUB_SERVER_URL`` (GitHub Enterprise;
    default https://github.com) only, never to another host. A private repository is then cloned by
    its plain URL."""
    config = dict(_SAFE_CONFIG)
    if token := os.environ.get("GITHUB_TOKEN"):
        server = os.environ.get("GITHUB_SERVER_URL") or "https://github.com"
        basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
        config[f"http.{server.rstrip('/')}/.extraheader"] = f"Authorization: basic {basic}"
    count = int(os.environ.get("GIT_CONFIG_COUNT") or 0)  # after any the environment already has
    env = {"GIT_CONFIG_COUNT": str(count + len(config))}
    for index, (key, value) in enumerate(config.items(), start=count):
        env[f"GIT_CONFIG_KEY_{index}"], env[f"GIT_CONFIG_VALUE_{index}"] = key, value
    return env


# A token in a URL's query string: `?access_token=...`, `&private_token=...` (GitLab), `&sig=...` (SAS).
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&](?:access_token|private_token|token|api_key|apikey|key|password|secret|sig)=)[^&\s'\"#]+",
    re.IGNORECASE,
)


def strip_credentials(text: str) -> str:
    """``text`` with the ``user:token@`` part of every URL in it removed, and the values of query
    parameters that carry tokens masked, so no message carries a secret."""
    return _QUERY_SECRET.sub(r"\g<name>***", _USERINFO.sub(r"\g<scheme>", text))


def _reason(stderr: str) -> str:
    """What git says went wrong: its ``fatal:`` and ``error:`` lines, joined (the hints after them only
    list the usual suspects), or its last line when it wrote neither."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.split(":", 1)[1].strip() for line in lines if line.startswith(("fatal:", "error:"))]
    return strip_credentials("; ".join(errors or lines[-1:]) or "no error output")


def _run(
    args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, stdin: str | None = None
) -> str:
    if shutil.which("git") is None:
        raise RepotuneError("git is not installed (needed for git sources and commit history)")
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**_git_env(), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RepotuneError(f"git {args[0]} failed: {_reason(proc.stderr)}")
    return proc.stdout


def clone(url: str, dest: Path, ref: str | None) -> str:
    """Clone ``url`` into ``dest``, check out ``ref`` (branch, tag or SHA), return the commit SHA."""
    try:
        # "--": a URL that looks like an option ("-u...", "--upload-pack=...") is still only a URL.
        _run(["clone", "--quiet", "--no-checkout", "--", url, str(dest)])
    except RepotuneError as exc:
        reason = str(exc).removeprefix("git clone failed: ")
        raise RepotuneError(f"cannot clone {strip_credentials(url)}: {reason}") from None
    if not _run(["for-each-ref", "--count=1"], cwd=dest).strip():
        raise RepotuneError(f"{strip_credentials(url)} has no commits (an empty repository)")
    sha = _clone_commit(dest, ref)
    if sha is None and ref is None:
        raise RepotuneError(f"{strip_credentials(url)} has no default branch (HEAD names none): give --ref")
    if sha is None:
        raise RepotuneError(f"--ref {ref!r} is not a branch, tag or commit of {strip_credentials(url)}")
    _run(["checkout", "--quiet", "--detach", sha], cwd=dest)
    return head_sha(dest)


def _clone_commit(clone: Path, ref: str | None) -> str | None:
    """The commit ``ref`` names in a fresh clone, where only the default branch is local: the others are
    ``origin/NAME``, so ``feature`` and ``refs/heads/feature`` are looked up there too; any other ref
    or SHA the remote serves is fetched."""
    if ref is None:
        return resolve_commit(clone, "HEAD")
    branch = ref.removeprefix("refs/heads/")
    for candidate in (ref, f"refs/remotes/origin/{branch}"):
        sha = resolve_commit(clone, candidate)
        if sha is not None:
            return sha
    if ref.startswith("-"):
        return None
    # A commit no branch or tag reaches (a pull request's `refs/pull/7/head`, or its SHA) is not in a
    # plain clone: fetched by name, as CI systems fetch a pull request's head.
    try:
        _run(["fetch", "--quiet", "origin", "--", ref], cwd=clone)
    except RepotuneError:
        return None
    return resolve_commit(clone, "FETCH_HEAD")


def head_sha(repo: Path) -> str:
    return _run(["rev-parse", "HEAD"], cwd=repo).strip()


# What of an untrusted repository's own config is kept: how its objects and refs are stored.
_KEPT_CONFIG = ("core.repositoryformatversion", "extensions.objectformat", "extensions.refstorage")


def distrust(root: Path) -> None:
    """Make the repository at ``root/.git`` (an uploaded archive's) safe to read: its config can name
    programs that git runs on reading (``core.fsmonitor``, a diff driver's ``textconv``, a filter's
    ``smudge``, ``core.sshCommand``...), so the config is replaced by one that keeps only the object
    and ref format; hooks go, and so do pointers out of the folder (``objects/info/alternates``, a
    worktree's ``commondir``, a ``.git`` file naming another git folder: then there is no history)."""
    dot_git = root / ".git"
    if dot_git.is_symlink() or dot_git.is_file():
        dot_git.unlink()
        return
    if not dot_git.is_dir():
        return
    config = dot_git / "config"
    sections: dict[str, list[str]] = {"core": ["\tbare = false"]}
    for key in _KEPT_CONFIG if config.is_file() and shutil.which("git") is not None else ():
        # --file reads the file as data: no repository is opened, nothing is run.
        proc = subprocess.run(
            ["git", "config", "--file", str(config), "--get", key],
            capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        value = proc.stdout.strip()
        if proc.returncode == 0 and re.fullmatch(r"[\w-]{1,32}", value):
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"\t{name} = {value}")
    config.unlink(missing_ok=True)
    config.write_text("".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items()))
    for path in ("hooks", "worktrees", "commondir", "config.worktree", "objects/info/alternates",
                 "objects/info/http-alternates"):  # fmt: skip
        target = dot_git / path
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def is_git_checkout(path: Path) -> bool:
    if not (path / ".git").exists() or shutil.which("git") is None:
        return False
    try:
        return _run(["rev-parse", "--show-toplevel"], cwd=path).strip() == str(path.resolve())
    except RepotuneError:
        return False  # a .git folder git cannot read, or no commit yet


def is_git_directory(path: Path) -> bool:
    """Whether ``path`` is a repository's own database (a bare repository, or a checkout's ``.git``),
    by the layout git itself looks for: a ``HEAD`` file beside ``objects/`` and ``refs/``. Its files are
    git's internals (config, hooks, packs), not the project's."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def has_commits(repo: Path) -> bool:
    try:
        head_sha(repo)
    except RepotuneError:
        return False
    return True


def iter_commits(
    repo: Path,
    *,
    source: str,
    stats: IngestStats,
    max_commits: int | None = 1000,
    max_diff_bytes: int = 20_000,
    since: str | None = None,
    revisions: tuple[str, ...] = (),
    meta: dict[str, object] | None = None,
    skip_path: Callable[[str], str | None] | None = None,
) -> Iterator[Record]:
    """Non-merge commits reachable from ``revisions`` (git log's revision arguments; none for HEAD,
    ``(END, "^CUT")`` for the commits after a cut), newest first: message, then the diff (size-capped).

    Content is the message, a blank line, and the unified diff, so later stages find the diff at the
    first line starting with ``diff --git``. Author e-mail addresses are left out on purpose. ``meta``
    is added to every record's meta. ``skip_path`` (the walk's rules: ``local.PathRules.reason``)
    leaves out the diff of each file the walk would skip (``.repotuneignore``d, vendored, lockfiles,
    minified...), before the size cap: counted as ``diff_<reason>`` and in ``meta.files_left_out``.
    """
    args = [
        "git", *_NO_QUOTING, "log", "--no-merges", "--no-color", "--no-ext-diff", "--no-textconv", "--patch",
        "--no-renames",
        f"--format={_MARK}%H{_FIELD}%an{_FIELD}%aI{_FIELD}%P{_FIELD}%B{_FIELD}",
    ]  # fmt: skip
    if max_commits is not None:
        args.append(f"--max-count={max_commits}")
    if since is not None:
        args.append(f"--since={since}")
    args += [*revisions, "--"]
    proc = subprocess.Popen(args, cwd=repo, env=_git_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    current: dict[str, object] | None = None
    try:
        header: list[str] = []
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(_MARK):
                if current is not None:
                    yield _commit_record(current, source, stats, meta, _table_headers(repo, current))
                current = None
                header = [line[len(_MARK) :]]
            elif current is None:
                header.append(line)
            else:
                _append_diff(current, line, max_diff_bytes, skip_path)
            if current is None and header and _FIELD in header[-1] and "".join(header).count(_FIELD) >= 5:
                sha, author, date, parents, message, _ = "".join(header).split(_FIELD, 5)
                current = {
                    "sha": sha,
                    "author": author,
                    "date": date,
                    "parents": parents.split(),
                    "message": message.strip(),
                    "diff": [],
                    "diff_bytes": 0,
                    "truncated": False,
                    "files": [],
                    "skipping": False,
                    "left_out": [],
                }
                header = []
        if current is not None:
            yield _commit_record(current, source, stats, meta, _table_headers(repo, current))
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        returncode = proc.wait()
    if returncode != 0 and "does not have any commits" not in stderr:
        raise RepotuneError(f"git log failed in {repo}: {stderr.strip().splitlines()[-1:]}")


def _append_diff(
    commit: dict, line: str, max_diff_bytes: int, skip_path: Callable[[str], str | None] | None = None
) -> None:
    if line.startswith("diff --git "):
        path = diff_header_path(line)
        reason = skip_path(path) if skip_path is not None and path is not None else None
        commit["skipping"] = reason is not None
        if reason is not None:
            commit["left_out"].append(reason)
        elif path is not None:
            commit["files"].append(path)
    if commit["truncated"] or commit["skipping"]:
        return
    size = len(line)
    if commit["diff_bytes"] + size > max_diff_bytes:
        commit["truncated"] = True
        commit["diff"].append("[diff truncated]\n")
        return
    commit["diff_bytes"] += size
    commit["diff"].append(line)


TABLE_SUFFIXES = frozenset({".csv", ".tsv"})
"""Tables: a header row names each column (``clean.secrets.tables`` reads secret columns by it)."""


def is_table_path(path: str | None) -> bool:
    return path is not None and PurePosixPath(path).suffix.lower() in TABLE_SUFFIXES


def _table_headers(repo: Path, commit: dict) -> dict[str, str]:
    """The header row of each table (``.csv``, ``.tsv``) this commit changes: the redaction of
    secret columns (``clean.secrets.tables``) needs a hunk's column names, and a hunk that does not
    start at the header row does not show them. Read from the file as the commit left it (as its
    parent had it, where the commit deleted it); none where neither has it. One short ``git
    cat-file`` per table, and commits that change no table cost nothing."""
    headers: dict[str, str] = {}
    for path in commit["files"]:
        if not is_table_path(path):
            continue
        for revision in (commit["sha"], *commit["parents"][:1]):
            header = _first_line(repo, f"{revision}:{path}")
            if header is not None:
                headers[path] = header
                break
    return headers


def _first_line(repo: Path, blob: str) -> str | None:
    """The first line of ``REV:PATH`` (at most 64 KiB of it), read without the rest of the file;
    ``None`` when there is no such file."""
    proc = subprocess.Popen(
        ["git", "cat-file", "-p", blob],
        cwd=repo,
        env=_git_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline(65536)
    finally:
        proc.stdout.close()
        proc.kill()
        returncode = proc.wait()
    if not line and returncode != 0:
        return None
    return line.decode("utf-8", errors="replace").rstrip("\r\n")


def _commit_record(
    commit: dict,
    source: str,
    stats: IngestStats,
    extra: dict[str, object] | None,
    table_headers: dict[str, str] | None = None,
) -> Record:
    diff = "".join(commit["diff"]).strip("\n")
    content = f"{commit['message']}\n\n{diff}" if diff else commit["message"]
    stats.kept[str(Kind.COMMIT)] += 1
    for reason in commit["left_out"]:
        stats.skip(f"diff_{reason}")
    return Record(
        content=content,
        kind=Kind.COMMIT,
        source=source,
        id=record_id(source, Kind.COMMIT, commit["sha"]),
        revision=commit["sha"],
        meta={
            "sha": commit["sha"],
            "author": commit["author"],
            "date": commit["date"],
            "parents": commit["parents"],
            "files": commit["files"],
            "diff_truncated": commit["truncated"],
            **({"files_left_out": len(commit["left_out"])} if commit["left_out"] else {}),
            **({"table_headers": table_headers} if table_headers else {}),
            **(extra or {}),
        },
    )


def diff_header_path(line: str) -> str | None:
    """The path of a ``diff --git a/P b/P`` header line (the new side's, for a rename); ``None`` when
    the line is not one. A path with spaces is found exactly, quoted paths are unquoted."""
    if not line.startswith("diff --git "):
        return None
    rest = line[len("diff --git ") :].rstrip("\n")
    if rest.endswith('"'):
        start = rest.rfind(' "b/')
        return _unquote(rest[start + 1 :])[2:] if start >= 0 else None
    half = (len(rest) - 5) // 2  # "a/P b/P" is 2 * len(P) + 5 characters when both sides are P
    path = rest[2 : 2 + half]
    if rest == f"a/{path} b/{path}":
        return path
    parts = rest.split(" b/", 1)
    return parts[1] if len(parts) == 2 else None


def _unquote(name: str) -> str:
    """A path as git C-quotes it (``"a/caf\\303\\251.py"``), unquoted; any other text as it is."""
    if len(name) < 2 or not (name.startswith('"') and name.endswith('"')):
        return name
    raw = codecs.escape_decode(name[1:-1].encode("utf-8"))[0]
    return raw.decode("utf-8", errors="replace")


def resolve_commit(repo: Path, revision: str) -> str | None:
    """The commit SHA ``revision`` (a SHA, tag, branch, ``HEAD~3``) names in ``repo``; ``None`` if none."""
    try:
        out = _run(
            ["rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"], cwd=repo
        )
    except RepotuneError:
        return None
    return out.strip() or None


def commit_date(repo: Path, revision: str) -> str:
    """The committer date of ``revision``, ISO 8601 with its offset: when it entered the branch."""
    return _run(["show", "--no-patch", "--format=%cI", revision, "--"], cwd=repo).strip()


def count_commits(repo: Path, *revisions: str) -> int:
    """Non-merge commits that ``revisions`` select (``END``, or ``END ^CUT`` for those after a cut)."""
    return int(_run(["rev-list", "--count", "--no-merges", *revisions, "--"], cwd=repo).strip())


def first_parents(repo: Path, end: str) -> list[str]:
    """``end`` and its first parents, newest first: the states the main line actually had."""
    return _run(["rev-list", "--first-parent", end, "--"], cwd=repo).split()


def newest_before(repo: Path, end: str, date: str) -> str | None:
    """The newest first-parent commit of ``end`` committed at or before ``date`` (ISO); ``None`` if none."""
    out = _run(["rev-list", "--first-parent", "--max-count=1", f"--before={date}", end, "--"], cwd=repo)
    return out.strip() or None


def root_commit(repo: Path, end: str = "HEAD") -> str | None:
    """The first commit of ``end``'s main line (first parents): the same in every full clone of a
    repository, whatever its folder or URL, so it names the project. ``None`` in a shallow clone, whose
    oldest commit is only where the clone stopped."""
    if is_shallow(repo):
        return None
    out = _run(["rev-list", "--first-parent", "--max-parents=0", end, "--"], cwd=repo).split()
    return out[-1] if out else None


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    proc = subprocess.run(
        ["git", "merge-base", "--is-ancestor", older, newer], cwd=repo, env=_git_env(), capture_output=True
    )
    return proc.returncode == 0


def enclosing_repository(path: Path) -> Path | None:
    """The top folder of the git work tree that ``path`` lies inside, below its top (a service's
    folder in a monorepo); ``None`` for a work tree's top, or a folder no work tree holds."""
    if shutil.which("git") is None:
        return None
    try:
        top = Path(_run(["rev-parse", "--show-toplevel"], cwd=path).strip())
    except RepotuneError:
        return None
    return top if top.resolve() != path.resolve() else None


def uncommitted_files(repo: Path) -> frozenset[str]:
    """Tracked paths (relative to ``repo``'s top, with ``/``) whose working-tree or staged content
    differs from HEAD's."""
    out = _run(["diff", "HEAD", "--name-only", "-z", "--no-renames", "--ignore-submodules", "--"], cwd=repo)
    return frozenset(path for path in out.split("\0") if path)


def tracked_files(repo: Path) -> frozenset[str]:
    """The paths git tracks in ``repo``'s index (committed or staged), relative to ``repo`` (a work
    tree's top, or a folder inside one), with ``/``."""
    return frozenset(path for path in _run(["ls-files", "-z"], cwd=repo).split("\0") if path)


def is_shallow(repo: Path) -> bool:
    return _run(["rev-parse", "--is-shallow-repository"], cwd=repo).strip() == "true"


def checkout_tree(repo: Path, revision: str, dest: Path, keep: Callable[[str], bool] | None = None) -> None:
    """Write the files of ``revision`` under ``dest``: all of them, or those whose path ``keep`` keeps.

    Goes through a temporary index beside ``dest``: the repository's own index and working tree are
    left as they are, and unlike ``git archive`` no ``export-ignore`` attribute hides a file.
    """
    dest.mkdir(parents=True, exist_ok=True)
    index = dest.parent / f".{dest.name}.index"
    env = {"GIT_INDEX_FILE": str(index.resolve())}
    prefix = f"--prefix={dest.resolve()}/"
    try:
        _run(["read-tree", revision], cwd=repo, env=env)
        if keep is None:
            _run(["checkout-index", "--all", prefix], cwd=repo, env=env)
            return
        present = [p for p in _run(["ls-files", "-z"], cwd=repo, env=env).split("\0") if p and keep(p)]
        if present:
            _run(
                ["checkout-index", "--stdin", "-z", prefix],
                cwd=repo,
                env=env,
                stdin="\0".join(present) + "\0",
            )
    finally:
        index.unlink(missing_ok=True)


_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def added_lines(repo: Path, cut: str, end: str) -> Iterator[tuple[str, list[list[int]]]]:
    """Each file of ``end`` that gained lines since ``cut``, with those lines' ``[first, last]`` ranges
    (1-based, inclusive, in ``end``'s version), from ``git diff -M cut end``: the net change, so a line
    added and removed again in between does not count, and a renamed file counts only what changed.

    Streams the diff with no context lines; a file's ranges are yielded once its section ends.
    """
    args = [
        "git", *_NO_QUOTING, "diff", "--find-renames", "--unified=0", "--no-color", "--no-ext-diff",
        "--no-textconv", "--ignore-submodules", "--src-prefix=a/", "--dst-prefix=b/", cut, end, "--",
    ]  # fmt: skip
    proc = subprocess.Popen(args, cwd=repo, env=_git_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    path: str | None = None
    ranges: list[list[int]] = []
    old_left = new_left = 0
    try:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            if old_left or new_left:
                # Inside a hunk the counts say which lines are its body: a body line may itself start
                # with "+++ " or "diff --git ".
                if line.startswith("-"):
                    old_left -= 1
                elif line.startswith("+"):
                    new_left -= 1
                continue
            if line.startswith("diff --git "):
                if path is not None and ranges:
                    yield path, ranges
                path, ranges = None, []
            elif line.startswith("+++ "):
                target = _unquote(line[4:].rstrip("\n").removesuffix("\t"))
                path = target[2:] if target.startswith("b/") else None  # /dev/null: deleted
            elif (hunk := _HUNK.match(line)) is not None:
                old_left = int(hunk[1]) if hunk[1] is not None else 1
                first = int(hunk[2])
                new_left = int(hunk[3]) if hunk[3] is not None else 1
                if new_left:
                    last = first + new_left - 1
                    if ranges and ranges[-1][1] + 1 >= first:
                        ranges[-1][1] = max(ranges[-1][1], last)
                    else:
                        ranges.append([first, last])
        if path is not None and ranges:
            yield path, ranges
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        returncode = proc.wait()
    if returncode != 0:
        raise RepotuneError(f"git diff failed in {repo}: {stderr.strip().splitlines()[-1:]}")


def added_line_counts(repo: Path, cut: str, end: str) -> Iterator[tuple[str, int]]:
    """(path, lines added) for each file of ``end`` changed since ``cut`` (``git diff --numstat``, the
    same net change as :func:`added_lines`, without reading the lines); binary files count 0."""
    out = _run(
        ["diff", "--find-renames", "--numstat", "-z", "--no-ext-diff", "--ignore-submodules", cut, end, "--"],
        cwd=repo,
    )
    tokens = iter(out.split("\0"))
    for token in tokens:
        if not token:
            continue
        added, _, rest = token.split("\t", 2)
        if not rest:  # a rename: the old and the new path follow as tokens of their own
            next(tokens, None)
            rest = next(tokens, "")
        yield rest, int(added) if added.isdigit() else 0
