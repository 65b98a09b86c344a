"""Git: clone a URL at a ref, resolve the commit SHA, and stream commits as records.

The ``git`` command line is the one dependency here: it speaks every transport (https, ssh, file)
with the user's own credential helpers, which no Python reimplementation matches.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, record_id
from repotune.sources.base import IngestStats

# user@host:path: the user and host start with a letter, digit or "_", so "-uX@host:path" is no URL.
_URL = re.compile(r"^(?:https?|ssh|git|file)://|^\w[\w.-]*@\w[\w.-]*:")
# A marker no commit message contains, so one `git log` stream splits into commits reliably.
_MARK = "\x1e\x1erepotune-commit\x1e"
_FIELD = "\x1f"


def is_git_url(spec: str) -> bool:
    return bool(_URL.match(spec))


def _git_env() -> dict[str, str]:
    # Never prompt for a password in a pipeline: fail at once and report it instead.
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "LC_ALL": "C"}


def _run(args: list[str], cwd: Path | None = None) -> str:
    if shutil.which("git") is None:
        raise RepotuneError("git is not installed (needed for git sources and commit history)")
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=_git_env(), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no error output"])[-1]
        raise RepotuneError(f"git {args[0]} failed: {detail}")
    return proc.stdout


def clone(url: str, dest: Path, ref: str | None) -> str:
    """Clone ``url`` into ``dest``, check out ``ref`` (branch, tag or SHA), return the commit SHA."""
    try:
        # "--": a URL that looks like an option ("-u...", "--upload-pack=...") is still only a URL.
        _run(["clone", "--quiet", "--no-checkout", "--", url, str(dest)])
    except RepotuneError as exc:
        raise RepotuneError(f"cannot clone {url}: {exc}".replace(": git clone failed", "")) from None
    try:
        _run(["checkout", "--quiet", "--detach", ref or "HEAD"], cwd=dest)
    except RepotuneError:
        raise RepotuneError(f"--ref {ref!r} is not a branch, tag or commit of {url}") from None
    return head_sha(dest)


def head_sha(repo: Path) -> str:
    return _run(["rev-parse", "HEAD"], cwd=repo).strip()


def is_git_checkout(path: Path) -> bool:
    if not (path / ".git").exists() or shutil.which("git") is None:
        return False
    try:
        return _run(["rev-parse", "--show-toplevel"], cwd=path).strip() == str(path.resolve())
    except RepotuneError:
        return False  # a .git folder git cannot read, or no commit yet


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
) -> Iterator[Record]:
    """Non-merge commits reachable from HEAD, newest first: message, then the diff (size-capped).

    Content is the message, a blank line, and the unified diff, so later stages find the diff at the
    first line starting with ``diff --git``. Author e-mail addresses are left out on purpose.
    """
    args = [
        "git", "log", "--no-merges", "--no-color", "--no-ext-diff", "--patch", "--no-renames",
        f"--format={_MARK}%H{_FIELD}%an{_FIELD}%aI{_FIELD}%P{_FIELD}%B{_FIELD}",
    ]  # fmt: skip
    if max_commits is not None:
        args.append(f"--max-count={max_commits}")
    if since is not None:
        args.append(f"--since={since}")
    proc = subprocess.Popen(args, cwd=repo, env=_git_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    current: dict[str, object] | None = None
    try:
        header: list[str] = []
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            if line.startswith(_MARK):
                if current is not None:
                    yield _commit_record(current, source, stats)
                current = None
                header = [line[len(_MARK) :]]
            elif current is None:
                header.append(line)
            else:
                _append_diff(current, line, max_diff_bytes)
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
                }
                header = []
        if current is not None:
            yield _commit_record(current, source, stats)
    finally:
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        returncode = proc.wait()
    if returncode != 0 and "does not have any commits" not in stderr:
        raise RepotuneError(f"git log failed in {repo}: {stderr.strip().splitlines()[-1:]}")


def _append_diff(commit: dict, line: str, max_diff_bytes: int) -> None:
    if line.startswith("diff --git "):
        parts = line.split(" b/", 1)
        if len(parts) == 2:
            commit["files"].append(parts[1].rstrip("\n"))
    if commit["truncated"]:
        return
    size = len(line)
    if commit["diff_bytes"] + size > max_diff_bytes:
        commit["truncated"] = True
        commit["diff"].append("[diff truncated]\n")
        return
    commit["diff_bytes"] += size
    commit["diff"].append(line)


def _commit_record(commit: dict, source: str, stats: IngestStats) -> Record:
    diff = "".join(commit["diff"]).strip("\n")
    content = f"{commit['message']}\n\n{diff}" if diff else commit["message"]
    stats.kept[str(Kind.COMMIT)] += 1
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
        },
    )
