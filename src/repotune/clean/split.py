"""Train/eval split that cannot leak, in one of two modes.

**Temporal** (where ingest found history and cut it, :mod:`repotune.sources.cut`): what ingest read
up to the cut C trains (the tree at C, the commits up to C); what came after it is held out (each file
that gained lines after C, as it stands at the end, with the added ranges in ``meta["added_lines"]``;
the commits after C). Issues, pull requests and pages go by their creation date against C's date.
Nothing after C is read into training, so nothing from the future can leak; the two sides are
deduplicated each on its own, since the file at C is expected to be a near copy of its future version.

**Files** (no history): files go by a deterministic hash of their path, so a file is held out in
every run and every later commit of the repository; commits, issues and pull requests go by date (the
newest share is held out). A training commit's diff of a held-out file would carry that file's lines
into training: those ``diff --git`` sections are removed (:func:`drop_sections`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, utc_moment
from repotune.sources.git import diff_header_path
from repotune.wording import counted

TRAIN = "train"
EVAL = "eval"
# Wiki pages go by their creation date (``meta["created_at"]``), which no later edit moves.
DATED_KINDS = frozenset({Kind.COMMIT, Kind.ISSUE, Kind.PULL_REQUEST, Kind.WIKI_PAGE})


@dataclass(frozen=True)
class SplitConfig:
    eval_fraction: float = 0.1
    """Share of files (by path hash) and of the newest commits and issues held out for evaluation, in
    the file split (a source without history); a temporal split holds out what came after its cut."""
    seed: str = "repotune"
    """Salt of the path hash; change it to draw a different held-out set."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise RepotuneError("--eval-fraction must be at least 0 and below 1 (e.g. 0.1)")


def path_score(path: str, seed: str) -> float:
    """A number in [0, 1) fixed by the path and the seed."""
    digest = hashlib.sha256(f"{seed}\x00{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def record_date(record: Record) -> str | None:
    """The ISO date that orders dated records: a commit's author date, an issue's creation."""
    meta = record.meta
    value = meta.get("date") or meta.get("created_at")
    return str(value) if value else None


def date_cutoff(dates: list[str], eval_fraction: float) -> str | None:
    """The earliest date of the held-out newest share; ``None`` when nothing is held out."""
    if not dates or eval_fraction == 0:
        return None
    ordered = sorted(dates)
    held_out = max(1, round(len(ordered) * eval_fraction)) if len(ordered) > 1 else 0
    return ordered[-held_out] if held_out else None


def assign(
    kind: Kind, path: str | None, date: str | None, key: str, cutoff: str | None, config: SplitConfig
) -> str:
    """``train`` or ``eval`` for one record, from facts known before any record is written."""
    if kind in DATED_KINDS and date is not None:
        return EVAL if cutoff is not None and date >= cutoff else TRAIN
    return EVAL if path_score(path or key, config.seed) < config.eval_fraction else TRAIN


TEMPORAL = "temporal"
FILES = "files"


@dataclass(frozen=True)
class TimeCut:
    """The cut of a temporal split, as ingest's manifest states it."""

    commit: str
    date: str
    """C's committer date, ISO 8601."""


def cut_of(manifest: dict) -> tuple[TimeCut | None, str | None]:
    """The manifest's cut, or ``None`` and the reason the file split applies; a cut without its commit
    or an ISO date raises ``RepotuneError`` (splitting by another rule would not be what ingest cut)."""
    split = manifest.get("split")
    if not split:
        return None, "the ingest recorded no cut (an ingest older than the temporal split)"
    if not isinstance(split, dict):
        raise RepotuneError(f"its split is {type(split).__name__}, not an object")
    if split.get("mode") != TEMPORAL or not split.get("cut"):
        return None, split.get("reason") or "the ingest chose the file split"
    cut = split["cut"]
    for key in ("commit", "date"):
        if not isinstance(cut, dict) or not isinstance(cut.get(key), str):
            raise RepotuneError(f"its temporal split's cut has no {key} (split.cut.{key})")
    try:
        datetime.fromisoformat(cut["date"])
    except ValueError:
        raise RepotuneError(f"its split.cut.date {cut['date']!r} is not an ISO date") from None
    return TimeCut(commit=cut["commit"], date=cut["date"]), None


def assign_temporal(kind: Kind, date: str | None, held_out: bool | None, cut_date: str) -> str:
    """``train`` or ``eval`` in a temporal split: ingest's verdict where it gave one (a file's future
    version, a commit after the cut), else the creation date against the cut's (both UTC ISO)."""
    if held_out is not None:
        return EVAL if held_out else TRAIN
    if kind in DATED_KINDS and date is not None:
        return EVAL if date > cut_date else TRAIN
    return TRAIN


# A comment's heading in ``sources.threads.thread_markdown``'s layout (GitHub and Jira threads alike,
# read back by ``data.transforms.issue_messages``): ``### @AUTHOR on YYYY-MM-DD[ · NOTE]``.
_COMMENT_HEADING = re.compile(
    r"(?<=\n\n)### @\S+ on (?P<day>\d{4}-\d{2}-\d{2}|unknown date)(?: · [^\n]*)?$", re.MULTILINE
)
# A heading gives a comment's day in its tracker's offset (UTC on GitHub, the server's on Jira), so
# that day's last moment may be up to 36 hours after its midnight in UTC (UTC-12). Only threads
# ingested without each comment's time (``meta["comment_times"]``) are cut by day.
_DAY_SPAN = timedelta(hours=36)


def comments_up_to(
    content: str, updated_at: object, cut_date: str, comment_times: object = None
) -> tuple[str, int]:
    """A training thread (opened before the cut) without the comments posted after it, and how many
    went: a comment after the cut, a review comment's diff line of code added after it, would train
    on the future. A thread not updated since the cut (``meta["updated_at"]``) keeps every comment.
    In one that was, a comment trains when its time (``meta["comment_times"]``, one per comment in
    the thread's order, as the sources record it) is not after the cut; a thread without those times
    (an ingest older than them) falls back to the headings' days: a comment trains only when its whole
    day came before the cut in any offset. A comment of an unknown time or date does not train."""
    cut = utc_moment(cut_date)
    updated = utc_moment(updated_at)
    if cut is None or (updated is not None and updated <= cut):
        return content, 0
    headings = list(_COMMENT_HEADING.finditer(content))
    if not headings:
        return content, 0
    times = comment_times if isinstance(comment_times, list) and len(comment_times) == len(headings) else None
    kept = [content[: headings[0].start()]]
    dropped = 0
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(content)
        if times is not None:
            moment = utc_moment(times[index])
            before = moment is not None and moment <= cut
        else:
            day = utc_moment(heading["day"])
            before = day is not None and day + _DAY_SPAN <= cut
        if before:
            kept.append(content[heading.start() : end])
        else:
            dropped += 1
    if not dropped:
        return content, 0
    return "".join(kept).rstrip("\n") + "\n", dropped


def held_out_by_ingest(record: Record) -> bool | None:
    """Ingest's verdict on a record of a temporal split: a file's future version (it carries its added
    lines) and a commit after the cut are held out, a commit up to it trains; ``None`` otherwise."""
    if "added_lines" in record.meta:
        return True
    after = record.meta.get("after_cut")
    return bool(after) if after is not None else None


def drop_sections(content: str, paths: frozenset[str] | set[str]) -> tuple[str, int]:
    """A commit's content without the ``diff --git`` sections of ``paths``, and how many went."""
    kept: list[str] = []
    dropped = 0
    skipping = False
    for line in content.splitlines(keepends=True):
        if line.startswith("diff --git "):
            skipping = diff_header_path(line) in paths
            dropped += skipping
        if not skipping:
            kept.append(line)
    if not dropped:
        return content, 0
    return "".join(kept).rstrip("\n"), dropped


def renames(content: str) -> list[tuple[str, str]]:
    """The (old path, new path) pairs a commit's diff renames, so that a held-out file's earlier path
    can leave training commits too (its sections hold the held-out file's lines under another name).

    Git says ``rename from``/``rename to`` in a section where it detects renames; history as ingest
    reads it (``git log --no-renames``) has a deleted file and an added one instead, taken for a rename
    here as git would: when at least half of the lines (as a set) are the same on both sides.
    """
    pairs: list[tuple[str, str]] = []
    deleted: dict[str, set[str]] = {}
    added: dict[str, set[str]] = {}
    path: str | None = None
    lines: set[str] = set()
    sign: str | None = None  # "-" in a deleted file's section, "+" in an added one's
    for line in [*content.splitlines(), "diff --git "]:  # the sentinel closes the last section
        if line.startswith("diff --git "):
            lines.discard("")  # blank lines say nothing of where a file came from
            if path is not None and sign is not None and lines:
                (deleted if sign == "-" else added)[path] = lines
            path, lines, sign = diff_header_path(line), set(), None
        elif path is None:
            continue
        elif line.startswith("rename from "):
            pairs.append((line[len("rename from ") :], path))
        elif line.startswith(("deleted file mode ", "new file mode ")):
            sign = "-" if line.startswith("deleted") else "+"
        elif sign is not None and line.startswith(sign) and not line.startswith(sign * 3 + " "):
            lines.add(line[1:].strip())
    for new, new_lines in added.items():
        best, score = None, 0.5
        for old, old_lines in deleted.items():
            shared = len(new_lines & old_lines) / max(len(new_lines), len(old_lines))
            if shared >= score:
                best, score = old, shared
        if best is not None:
            pairs.append((best, new))
    return pairs


def earlier_names(paths: set[str], pairs: list[tuple[str, str]]) -> set[str]:
    """``paths`` and every path one of them had before a rename (or a chain of them) in ``pairs``."""
    names = set(paths)
    grown = True
    while grown:
        grown = False
        for old, new in pairs:
            if new in names and old not in names:
                names.add(old)
                grown = True
    return names


def has_diff(content: str) -> bool:
    return content.startswith("diff --git ") or "\ndiff --git " in content


def remap_ranges(before: str, after: str, ranges: list[list[int]]) -> list[list[int]]:
    """``ranges`` (1-based, inclusive) of ``before``'s lines, moved onto ``after``, an edit of it (a
    redaction that folded a multi-line secret into one placeholder): an unchanged line keeps its mark,
    a replaced block is marked where any line of it was."""
    import difflib

    old, new = before.split("\n"), after.split("\n")
    marked = {i for first, last in ranges for i in range(first - 1, last)}
    hits: set[int] = set()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if tag == "equal":
            hits.update(j1 + k for k in range(i2 - i1) if i1 + k in marked)
        elif marked.intersection(range(i1, i2)):
            hits.update(range(j1, j2))
    spans: list[list[int]] = []
    for line in sorted(hits):
        if spans and spans[-1][1] == line:
            spans[-1][1] = line + 1
        else:
            spans.append([line + 1, line + 1])
    return spans


@dataclass(frozen=True)
class SplitSummary:
    """What the model was trained on and what it is scored on, in one line each (``stats.json``'s
    ``split``, the report's first lines)."""

    mode: str
    """``temporal`` or ``files``."""
    cut: dict[str, str] | None
    """``commit`` and ``date`` of the cut; ``None`` in the file split."""
    trained_on: str
    scored_on: str
    reason: str | None
    """Why the file split applies; ``None`` in the temporal split."""
    rule: str | None = None
    """How the cut was chosen (``the newest 10% of commits (the default)``, ``revision v1.2``)."""
    scored_files: int = 0
    """Held-out file versions with lines added after the cut."""
    scored_lines: int = 0
    """Lines added after the cut in those files."""
    dropped_hunks: int = 0
    """Diff sections of held-out files taken out of training commits (file split)."""
    dropped_comments: int = 0
    """Comments posted after the cut taken out of training threads opened before it (temporal split)."""

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


_FILE_KIND_NAMES = (str(Kind.CODE), str(Kind.DOC))
_DATED_OTHER = tuple(str(k) for k in (Kind.ISSUE, Kind.PULL_REQUEST, Kind.WIKI_PAGE))


def describe(
    counts: dict[tuple[str, str], int],
    manifest_split: dict | None,
    *,
    cut: TimeCut | None,
    reason: str | None,
    commit: str | None,
    eval_fraction: float,
    scored_files: int,
    scored_lines: int,
    dropped_hunks: int,
    dropped_comments: int = 0,
) -> SplitSummary:
    """The split in words, from the records kept per (split, kind) and ingest's manifest."""

    def kept(split: str, kinds: tuple[str, ...]) -> int:
        return sum(counts.get((split, kind), 0) for kind in kinds)

    commits = {side: kept(side, (str(Kind.COMMIT),)) for side in (TRAIN, EVAL)}
    dated = {side: kept(side, _DATED_OTHER) for side in (TRAIN, EVAL)}
    if cut is not None:
        facts = manifest_split or {}
        where = f"{cut.commit[:7]} ({cut.date[:10]})"
        trained = [f"files at {where}"] if kept(TRAIN, _FILE_KIND_NAMES) else []
        if commits[TRAIN]:
            trained.append(f"{counted(commits[TRAIN], 'commit')} up to {'it' if trained else where}")
        if dated[TRAIN]:
            before = "it" if trained else where
            later = f" ({counted(dropped_comments, 'later comment')} removed)" if dropped_comments else ""
            trained.append(
                f"{counted(dated[TRAIN], 'issue or page', 'issues and pages')} created before {before}{later}"
            )
        trained = trained or [f"nothing up to {where}"]
        after = facts.get("commits_after_cut")
        scored = []
        if scored_files:
            by = f" by {counted(after, 'commit')} after it" if after else " after it"
            scored.append(f"{counted(scored_lines, 'line')} added to {counted(scored_files, 'file')}{by}")
        if commits[EVAL]:
            scored.append(counted(commits[EVAL], "held-out commit") + ("" if scored else " after it"))
        if dated[EVAL]:
            scored.append(f"{counted(dated[EVAL], 'issue or page', 'issues and pages')} created after it")
        scored = scored or ["nothing after it"]
        return SplitSummary(
            mode=TEMPORAL,
            cut={"commit": cut.commit, "date": cut.date},
            trained_on=_join(trained),
            scored_on=_join(scored),
            reason=None,
            rule=facts.get("rule"),
            scored_files=scored_files,
            scored_lines=scored_lines,
            dropped_comments=dropped_comments,
        )
    files = {side: kept(side, _FILE_KIND_NAMES) for side in (TRAIN, EVAL)}
    trained = [f"{counted(files[TRAIN], 'file')}" + (f" at {commit[:7]}" if commit else "")]
    if commits[TRAIN]:
        scrubbed = (
            f" ({counted(dropped_hunks, 'diff section')} of held-out files removed)" if dropped_hunks else ""
        )
        trained.append(f"{counted(commits[TRAIN], 'older commit')}{scrubbed}")
    if dated[TRAIN]:
        trained.append(f"{counted(dated[TRAIN], 'older issue or page', 'older issues and pages')}")
    scored = [f"{counted(files[EVAL], 'held-out file')} (about {eval_fraction:.0%} of paths, by path hash)"]
    if commits[EVAL]:
        scored.append(f"the {counted(commits[EVAL], 'newest commit')}")
    if dated[EVAL]:
        scored.append(f"the {counted(dated[EVAL], 'newest issue or page', 'newest issues and pages')}")
    return SplitSummary(
        mode=FILES,
        cut=None,
        trained_on=_join(trained),
        scored_on=_join(scored),
        reason=reason,
        dropped_hunks=dropped_hunks,
    )


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
