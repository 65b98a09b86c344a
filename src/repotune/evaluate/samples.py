"""The questions every arm answers, drawn once from the held-out records and nothing else.

Two kinds of held-out code records come from the clean stage:

- temporal split: a file as it stands at the end revision, with ``meta["added_lines"]``, the
  ``[first, last]`` line ranges (1-based, inclusive) that the repository added after the training cut.
  Line and FIM samples are drawn from those lines only, with the file's own text before (and, for
  FIM, after) as context, and perplexity counts their tokens only. The text after a FIM sample's line
  leaves out the other added lines: someone writing down the file has not written the lines below
  yet, and given them a model answers better than it would in an editor (``existing_after``);
- file split: a whole file the model never saw; any line of it may be a sample, and perplexity counts
  all its tokens.

Either kind may carry ``meta["seen_lines"]``: lines the clean stage's leak audit found in the training
data (``repotune.clean.audit``). They are never a sample and their tokens never count for perplexity:
completing them is recall of training text, not writing new code.

A record may be of either kind in one eval set; the mode reported is ``temporal`` when any record
carries ``added_lines``.
"""

from __future__ import annotations

import bisect
import random
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from repotune.data.transforms import commit_pair
from repotune.errors import RepotuneError
from repotune.heldout import ADDED_LINES, added_ranges, line_spans, scored_lines, scored_spans
from repotune.records import Kind, Record

if TYPE_CHECKING:
    from repotune.evaluate.settings import ScoringConfig

FILE_KINDS = (Kind.CODE,)
MIN_LINE_CHARS = 8
"""Lines shorter than this, stripped (blank lines, lone brackets, ``else:``), say nothing about the
project and are never a sample."""


@dataclass(frozen=True)
class LineSample:
    """Complete the line that starts where ``prefix`` ends."""

    path: str
    prefix: str
    """The file's text before the line (its last ``context_chars`` characters), ending in a newline."""
    expected: str
    """The line as the file has it, without its newline."""


@dataclass(frozen=True)
class FimSample:
    """Fill in the rest of a line, between ``prefix`` and ``suffix``."""

    path: str
    prefix: str
    middle: str
    """What the file has between prefix and suffix: a line from a column on, without its newline."""
    suffix: str
    """The line's newline and the lines after it that existed before (``existing_after``)."""


@dataclass(frozen=True)
class ScoredText:
    """A file whose tokens inside ``spans`` are scored for perplexity; the rest is conditioning context."""

    path: str | None
    text: str
    spans: tuple[tuple[int, int], ...] | None
    """Character ranges of ``text`` whose tokens count; None counts every token."""


@dataclass(frozen=True)
class Samples:
    """The tasks every arm answers: drawn once, from held-out records only."""

    mode: str
    """``temporal`` (scored on lines added after the cut) or ``file`` (scored on held-out files)."""
    perplexity: list[ScoredText]
    lines: list[LineSample]
    fims: list[FimSample]
    commits: list[tuple[str, str]]
    """(diff, expected subject line)."""
    general: list[ScoredText]
    """General code outside the project, for the forgetting check."""
    eligible_lines: int = 0
    """Held-out lines there were to draw line and FIM samples from (fewer than asked: all of them)."""


def existing_after(record: Record, end: int, chars: int) -> str:
    """What follows the line that ends at ``end`` (before its newline), up to ``chars`` characters: its
    newline and the lines after it, less those a temporal record's ``added_lines`` says the repository
    added after the cut. Someone writing a new line has the code below it that was there before, not
    the lines added with it further down; an editor sends only what is there. Given those lines too,
    a candidate completed itsdangerous' lines 10% better than without them, and no better given only
    the lines that were there (benchmarks/README.md, "The code below the cursor, as context"). A
    file-split record keeps all of it."""
    text = record.content
    ranges = added_ranges(record)
    if ranges is None:
        return text[end : end + chars]
    added = {number for first, last in ranges for number in range(first, last + 1)}
    spans = line_spans(text)
    line = bisect.bisect_left([stop for _, stop in spans], end)  # 0-based: the line ending at ``end``
    pieces, size = [text[end : end + 1]], 1
    for number, (start, stop) in enumerate(spans[line + 1 :], start=line + 2):
        if size >= chars:
            break
        if number not in added:
            pieces.append(text[start : stop + 1])  # the line and its newline ("" at a file's end)
            size += len(pieces[-1])
    return "".join(pieces)[:chars]


def _scored_text(record: Record) -> ScoredText:
    return ScoredText(record.file_path, record.content, scored_spans(record))


def draw_samples(eval_records: Sequence[Record], config: ScoringConfig) -> Samples:
    """Line, FIM and commit samples and perplexity texts, drawn with ``config.seed``.

    Commits and general files are drawn with generators of their own, so that asking for more or
    fewer lines does not change which commits and general files are scored."""
    rng = random.Random(config.seed)
    code = [r for r in eval_records if r.kind in FILE_KINDS and r.file_path]
    temporal = any(ADDED_LINES in r.meta for r in code)
    candidates: list[tuple[Record, int, int]] = []  # (record, line start, line end)
    for record in code:
        eligible = scored_lines(record)
        for number, (start, end) in enumerate(line_spans(record.content), start=1):
            # The first line has nothing before it to complete from.
            if number == 1 or number not in eligible:
                continue
            if len(record.content[start:end].strip()) >= MIN_LINE_CHARS:
                candidates.append((record, start, end))
    rng.shuffle(candidates)
    context = config.context_chars
    lines = [
        LineSample(
            record.file_path or "", record.content[max(0, start - context) : start], record.content[start:end]
        )
        for record, start, end in candidates[: config.line_samples]
    ]
    fims = []
    for record, start, end in candidates[config.line_samples : config.line_samples + config.fim_samples]:
        text = record.content
        # The middle is the rest of a line from a random column: the completion an editor asks for.
        column = start + rng.randrange(0, max(1, (end - start) // 2))
        fims.append(
            FimSample(
                record.file_path or "",
                text[max(0, column - context) : column],
                text[column:end],
                existing_after(record, end, context),
            )
        )
    commits = []
    for record in (r for r in eval_records if r.kind is Kind.COMMIT):
        diff, message = commit_pair(record)
        subject = message.strip().split("\n", 1)[0].strip()
        if diff and subject:
            commits.append((diff[: context * 2], subject))
    random.Random(f"{config.seed}:commits").shuffle(commits)
    scored = [_scored_text(r) for r in code]
    return Samples(
        mode="temporal" if temporal else "file",
        perplexity=[s for s in scored if s.spans is None or s.spans],
        lines=lines,
        fims=fims,
        commits=commits[: config.commit_samples],
        general=_general_texts(config, random.Random(f"{config.seed}:general")),
        eligible_lines=len(candidates),
    )


def _general_texts(config: ScoringConfig, rng: random.Random) -> list[ScoredText]:
    if config.forgetting_files == 0:
        return []
    root = Path(config.forgetting_source or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise RepotuneError(f"forgetting_source {root} is not a folder")
    files = sorted(p for p in root.glob("*.py") if p.is_file())  # top level only: small and general
    rng.shuffle(files)
    return [
        ScoredText(path.name, path.read_text(encoding="utf-8", errors="replace")[:20_000], None)
        for path in files[: config.forgetting_files]
    ]
