"""Which lines of a held-out record no training example holds: what a model may be scored on.

The clean stage writes two ``meta`` keys on held-out records: ``added_lines`` (temporal split: the
``[first, last]`` line ranges, 1-based and inclusive, that the repository added after the training
cut) and ``seen_lines`` (the lines its leak audit found in training data). A record without either is
held out whole. The evaluate stage draws its samples and counts perplexity from these lines; the
train stage takes its held-out loss on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from repotune.errors import RepotuneError
from repotune.records import Record

ADDED_LINES = "added_lines"
"""The ``meta`` key of a temporal eval record: line ranges added after the cut."""
SEEN_LINES = "seen_lines"
"""The ``meta`` key of line ranges whose text training holds: never scored."""


def added_ranges(record: Record) -> list[tuple[int, int]] | None:
    """The record's added line ranges, checked against its content; None when it has none (file split)."""
    return _ranges(record, ADDED_LINES)


def seen_ranges(record: Record) -> list[tuple[int, int]]:
    """The record's line ranges that training holds (the leak audit's ``seen_lines``), checked."""
    return _ranges(record, SEEN_LINES) or []


def _ranges(record: Record, key: str) -> list[tuple[int, int]] | None:
    if key not in record.meta:
        return None
    raw = record.meta[key]
    where = f"eval record {record.id} ({record.file_path}): meta.{key}"
    if not isinstance(raw, list):
        raise RepotuneError(f"{where} must be a list of [first, last] line ranges, got {raw!r}")
    count = len(line_spans(record.content))
    ranges = []
    for entry in raw:
        if (
            not isinstance(entry, list | tuple)
            or len(entry) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in entry)
            or not 1 <= entry[0] <= entry[1] <= count
        ):
            raise RepotuneError(
                f"{where} holds {entry!r}: each range must be [first, last], 1-based and inclusive, "
                f"within the file's {count} lines"
            )
        ranges.append((entry[0], entry[1]))
    return sorted(ranges)


def line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each line of ``text``, the end before its newline.

    Lines end at ``\n`` only, as git numbers them (``str.splitlines`` would also break at form feeds
    and other separators that git keeps inside a line); a final newline starts no new line.
    """
    spans = []
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        spans.append((start, end))
        start = end + 1
    return spans


def scored_lines(record: Record) -> set[int]:
    """1-based numbers of the lines that are scored: the added ones (every one in a file split), less
    the ones training holds."""
    ranges = added_ranges(record)
    numbers = (
        range(1, len(line_spans(record.content)) + 1)
        if ranges is None
        else (n for first, last in ranges for n in range(first, last + 1))
    )
    seen = {n for first, last in seen_ranges(record) for n in range(first, last + 1)}
    return {n for n in numbers if n not in seen}


def scored_spans(record: Record) -> tuple[tuple[int, int], ...] | None:
    """(start, end) character spans of ``scored_lines``, each run of consecutive lines one span, their
    newlines included (the tokens that write them); None when every line is scored."""
    if added_ranges(record) is None and not seen_ranges(record):
        return None
    spans = line_spans(record.content)
    size = len(record.content)
    runs: list[list[int]] = []
    for number in sorted(scored_lines(record)):
        if runs and runs[-1][1] + 1 == number:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return tuple((spans[first - 1][0], min(spans[last - 1][1] + 1, size)) for first, last in runs)


def held_out_records(records: Sequence[Record]) -> list[Record]:
    """The part of held-out ``records`` that no training example holds, as records: each run of lines a
    temporal record added after the cut (less the lines the leak audit found in training) as a record
    of its own, with the file's path; a held-out file less its ``seen_lines``; any other record (a
    later commit, an issue) whole.

    In the temporal split a file at the end revision is mostly what training saw at the cut: a loss on
    the whole file measures recall. The train stage's held-out loss is computed on these instead.
    """
    kept = []
    for record in records:
        spans = scored_spans(record)
        if spans is None:
            kept.append(record)
            continue
        for number, (start, end) in enumerate(spans):
            meta = {k: v for k, v in record.meta.items() if k not in (ADDED_LINES, SEEN_LINES)}
            kept.append(
                dataclasses.replace(
                    record, content=record.content[start:end], id=f"{record.id}:{number}", meta=meta
                )
            )
    return kept
