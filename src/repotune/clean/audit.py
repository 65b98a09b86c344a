"""The leak audit: how many lines that evaluation scores can also be found in what trains.

The targets are the held-out files' lines in the file split, and the lines added after the cut in the
temporal split; a target counts when its text (stripped, at least :data:`MIN_CHARS` characters, so
that ``return None`` and closing braces do not count) is a line of a training record, a diff line
counting without its ``+``/``-``/`` `` marker. In the file split a found line is a leak: the model saw
the text it is scored on (through a commit's diff of the file's old path, or a copy in another
file). In the temporal split nothing after the cut is read into training, so a found line stood in
the repository at the cut already (code moved to another file, copied or restored): completing it is
recall, not writing new code. Either way a found line is set aside (:func:`set_aside`): listed in
the record's ``meta["seen_lines"]``, and in the temporal split taken out of ``meta["added_lines"]``.

Memory: one hash per target line, and per hash the files it comes from; training is streamed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from repotune.clean.filters import FILE_KINDS
from repotune.records import Kind, Record, read_records

MIN_CHARS = 40
"""A line shorter than this (stripped) is too common to say anything about a leak."""
_DIFF_MARKERS = ("+", "-", " ")
TOP_FILES = 10


@dataclass(frozen=True)
class LeakAudit:
    target_lines: int
    """Target lines of at least ``MIN_CHARS`` characters (each occurrence in each held-out file)."""
    found: int
    """Of those, the ones whose text is a line of some training record."""
    found_by_kind: dict[str, int] = field(default_factory=dict)
    """Found lines by the kind of the first training record they were found in."""
    files: list[dict[str, object]] = field(default_factory=list)
    """The held-out files with the most found lines: ``file_path``, ``target_lines``, ``found``."""
    set_aside: int = 0
    """Found lines listed in their record's ``seen_lines`` (and out of its ``added_lines``)."""

    @property
    def scored_in_training(self) -> int:
        """Found lines not set aside: scored although training has them. The audit's aim is 0."""
        return self.found - self.set_aside

    def as_dict(self) -> dict[str, object]:
        return {
            "min_chars": MIN_CHARS,
            "target_lines": self.target_lines,
            "found_in_training": self.found,
            "found_by_kind": self.found_by_kind,
            "set_aside": self.set_aside,
            "scored_in_training": self.scored_in_training,
            "files": self.files,
        }


def target_lines(record: Record) -> Iterator[str]:
    """What evaluation scores of a held-out record: the added lines of a file's future version, every
    line of a held-out file, nothing of other kinds; stripped, the short ones left out."""
    if record.kind not in FILE_KINDS:
        return
    lines = record.content.split("\n")
    spans = record.meta.get("added_lines")
    if spans is None:
        chosen: Iterator[str] = iter(lines)
    else:
        chosen = (lines[i - 1] for first, last in spans for i in range(first, last + 1) if i <= len(lines))
    for line in chosen:
        text = line.strip()
        if len(text) >= MIN_CHARS:
            yield text


def _training_lines(record: Record) -> Iterator[str]:
    for line in record.content.split("\n"):
        yield line.strip()
        if record.kind is Kind.COMMIT and line.startswith(_DIFF_MARKERS):
            yield line[1:].strip()


def audit(train: Path, held_out: Path) -> tuple[LeakAudit, frozenset[int]]:
    """Count the held-out targets of ``held_out`` that appear as lines of ``train`` (both JSONL); also
    returns the found lines' hashes, for :func:`set_aside`."""
    # Python's string hash is fixed within one process, which is all the audit needs.
    targets: dict[int, Counter[str]] = {}
    for record in read_records(held_out):
        for text in target_lines(record):
            targets.setdefault(hash(text), Counter())[record.file_path or record.id] += 1
    if not targets:
        return LeakAudit(target_lines=0, found=0), frozenset()
    found: dict[int, str] = {}
    for record in read_records(train):
        for text in _training_lines(record):
            if len(text) >= MIN_CHARS:
                key = hash(text)
                if key in targets and key not in found:
                    found[key] = str(record.kind)
    per_file: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    for key, kind in found.items():
        per_file.update(targets[key])
        by_kind[kind] += sum(targets[key].values())
    totals: Counter[str] = Counter()
    for counts in targets.values():
        totals.update(counts)
    return LeakAudit(
        target_lines=sum(totals.values()),
        found=sum(per_file.values()),
        found_by_kind=dict(by_kind.most_common()),
        files=[
            {"file_path": path, "target_lines": totals[path], "found": n}
            for path, n in per_file.most_common(TOP_FILES)
        ],
    ), frozenset(found)


def set_aside(record: Record, found: frozenset[int]) -> int:
    """List the target lines of ``record`` (a held-out file) whose text ``found`` holds in
    ``meta["seen_lines"]``, and take them out of ``meta["added_lines"]`` where it has them; returns
    how many there were. Line numbers are 1-based, as ranges ``[first, last]``."""
    lines = record.content.split("\n")
    spans = record.meta.get("added_lines")
    targets = ((first, last) for first, last in spans) if spans is not None else [(1, len(lines))]
    kept: list[int] = []
    seen: list[int] = []
    for first, last in targets:
        for number in range(first, min(last, len(lines)) + 1):
            text = lines[number - 1].strip()
            (seen if len(text) >= MIN_CHARS and hash(text) in found else kept).append(number)
    if seen:
        record.meta["seen_lines"] = _ranges(seen)
        if spans is not None:
            record.meta["added_lines"] = _ranges(kept)
    return len(seen)


def _ranges(numbers: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for number in numbers:
        if spans and spans[-1][1] + 1 == number:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return spans
