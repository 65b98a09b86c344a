"""Where evaluation's future begins: the cut C of a git history.

A model trained on the repository as it stood at commit C is scored on what the repository added after
C, as a model in use always meets code written after its training data. The cut is a revision, a date
(the newest commit at or before it) or the newest share of commits; unset, it is chosen here:

- the newest 10% of the non-merge commits, at most :data:`MAX_DEFAULT_AFTER` of them, so that a
  large history is cut weeks, not years, before its head and the model that ships is not stale;
- moved older (the count doubled) until the files changed since the cut gained at least
  :data:`MIN_FUTURE_LINES` lines of code and docs (enough to score a few hundred lines once blank and
  trivial lines are left out), but never past the newest half of the history, which stays to train on;
- no cut at all (the file split) for a history of fewer than :data:`MIN_COMMITS` commits, or one whose
  newest half adds fewer lines than that: a score on a handful of lines says nothing.

The cut is always a commit of the first-parent line (a state the main branch actually had), so that
"after C" is exactly the commits a merge brought in since.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from repotune.errors import RepotuneError
from repotune.sources import git
from repotune.sources.languages import BINARY_EXTENSIONS
from repotune.sources.local import BUILD_DIRS, CACHE_DIRS, LOCKFILES, VENDORED_DIRS
from repotune.wording import counted

DEFAULT_SHARE = 10.0
"""Percent of the non-merge commits after the default cut."""
MAX_DEFAULT_AFTER = 200
"""Commits after the default cut at most (before the lines rule moves it older)."""
MIN_FUTURE_LINES = 400
"""Lines of code and docs the default cut leaves to score, at least."""
MIN_COMMITS = 10
"""Non-merge commits a history needs for the default cut; fewer get the file split."""

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][\d:.]+)?([+-]\d{2}:?\d{2}|Z)?$")
_SKIPPED_DIRS = VENDORED_DIRS | BUILD_DIRS | CACHE_DIRS


@dataclass(frozen=True)
class CommitShare:
    """The newest ``percent`` of the non-merge commits come after the cut."""

    percent: float


@dataclass(frozen=True)
class AtDate:
    """The cut is the newest first-parent commit committed at or before ``date``."""

    date: datetime


@dataclass(frozen=True)
class AtRevision:
    """The cut is the commit ``revision`` names (a SHA, tag or branch)."""

    revision: str


CutSpec = CommitShare | AtDate | AtRevision


def parse_cut(text: str) -> CutSpec:
    """``10%`` (the newest share of commits), ``2025-06-01`` (an ISO date) or a revision."""
    text = text.strip()
    if not text:
        raise RepotuneError("--cut is empty: give a revision, an ISO date or a share such as 10%")
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise RepotuneError(f"--cut {text!r}: expected a share of commits such as 10%") from None
        if not 0 < percent < 100:
            raise RepotuneError(f"--cut {text!r}: the share of commits must be above 0% and below 100%")
        return CommitShare(percent)
    if _DATE.match(text):
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise RepotuneError(f"--cut {text!r}: not a valid ISO date") from None
        return AtDate(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    return AtRevision(text)


@dataclass(frozen=True)
class Cut:
    """A cut that was found: train up to and including ``commit``, score what came after it."""

    commit: str
    date: str
    """``commit``'s committer date (ISO 8601): issues and pages created before it train."""
    end: str
    """The newest commit read (the source's resolved revision)."""
    end_date: str
    rule: str
    """How the cut was chosen, in words: ``the newest 10% of commits``, ``revision v1.2``, ..."""
    commits_before: int
    """Non-merge commits up to and including the cut."""
    commits_after: int
    """Non-merge commits after the cut, up to ``end``."""


@dataclass(frozen=True)
class NoCut:
    """No temporal split: the file split applies, for ``reason``."""

    reason: str


def choose(repo: Path, end: str, spec: CutSpec | None) -> Cut | NoCut:
    """The cut of ``repo``'s history up to ``end`` that ``spec`` asks for, or the default one."""
    total = git.count_commits(repo, end)
    if spec is None:
        if total < MIN_COMMITS:
            shallow = " (a shallow clone)" if git.is_shallow(repo) else ""
            return NoCut(
                f"{counted(total, 'commit')} of history{shallow}: temporal evaluation needs at "
                f"least {MIN_COMMITS}"
            )
        return _default(repo, end, total)
    if isinstance(spec, AtRevision):
        commit = git.resolve_commit(repo, spec.revision)
        if commit is None:
            raise RepotuneError(f"--cut {spec.revision!r} is not a commit, tag or branch of the repository")
        if not git.is_ancestor(repo, commit, end):
            raise RepotuneError(f"--cut {spec.revision!r} is not in the history of {end[:12]}")
        rule = f"revision {spec.revision}"
    elif isinstance(spec, AtDate):
        day = spec.date.isoformat()
        commit = git.newest_before(repo, end, day)
        if commit is None:
            raise RepotuneError(f"--cut {day}: the history has no commit at or before that date")
        rule = f"the newest commit at or before {day}"
    else:
        need = max(1, math.ceil(total * spec.percent / 100))
        commit = _commit_with_after(repo, git.first_parents(repo, end), need)
        if commit is None:
            raise RepotuneError(f"--cut {spec.percent:g}%: the history has too few commits for that share")
        rule = f"the newest {spec.percent:g}% of commits"
    return _cut(repo, commit, end, total, rule)


def _cut(repo: Path, commit: str, end: str, total: int, rule: str) -> Cut | NoCut:
    after = git.count_commits(repo, end, f"^{commit}")
    if commit == end or after == 0:
        return NoCut(f"the cut ({rule}) is the newest commit {end[:12]}: nothing after it to score")
    return Cut(
        commit=commit,
        date=git.commit_date(repo, commit),
        end=end,
        end_date=git.commit_date(repo, end),
        rule=rule,
        commits_before=total - after,
        commits_after=after,
    )


def _default(repo: Path, end: str, total: int) -> Cut | NoCut:
    chain = git.first_parents(repo, end)
    half = total // 2
    need = min(max(1, round(total * DEFAULT_SHARE / 100)), MAX_DEFAULT_AFTER, half)
    lines = 0
    while True:
        commit = _commit_with_after(repo, chain, need)
        if commit is None:
            break
        lines = future_lines(repo, commit, end)
        if lines >= MIN_FUTURE_LINES:
            return _cut(repo, commit, end, total, _default_rule(need, total))
        if need >= half:
            break
        need = min(2 * need, half)
    return NoCut(
        f"the newest half of the history ({half} of {total} commits) adds {lines} lines of code and docs; "
        f"temporal evaluation needs at least {MIN_FUTURE_LINES}"
    )


def _default_rule(need: int, total: int) -> str:
    if need == max(1, round(total * DEFAULT_SHARE / 100)):
        return f"the newest {DEFAULT_SHARE:g}% of commits (the default)"
    if need == MAX_DEFAULT_AFTER:
        return f"the newest {need} commits (the default: {DEFAULT_SHARE:g}%, at most {MAX_DEFAULT_AFTER})"
    return (
        f"the newest {need} commits (the default, moved older until at least {MIN_FUTURE_LINES} lines "
        "were added after it)"
    )


def _commit_with_after(repo: Path, chain: list[str], need: int) -> str | None:
    """The newest commit of the first-parent ``chain`` with at least ``need`` non-merge commits after it.

    The count grows along the chain, so a binary search finds it in a few ``git rev-list --count``.
    """
    end = chain[0]
    low, high = 1, len(chain) - 1
    if high < low or git.count_commits(repo, end, f"^{chain[high]}") < need:
        return None
    while low < high:
        middle = (low + high) // 2
        if git.count_commits(repo, end, f"^{chain[middle]}") >= need:
            high = middle
        else:
            low = middle + 1
    return chain[low]


def countable(path: str) -> bool:
    """Whether a changed file would plausibly be read as code or docs (judged by its path alone)."""
    *folders, name = path.split("/")
    if any(folder in _SKIPPED_DIRS for folder in folders) or name in LOCKFILES:
        return False
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return f".{suffix}" not in BINARY_EXTENSIONS


def future_lines(repo: Path, cut: str, end: str) -> int:
    """Lines added since ``cut`` to files that count as code or docs (by path): what is left to score."""
    return sum(added for path, added in git.added_line_counts(repo, cut, end) if countable(path))
