"""Files become retrieval chunks: windows of whole lines that slide over the file with overlap."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

from repotune.records import Record
from repotune.retrieval.config import RetrievalConfig
from repotune.retrieval.terms import code_terms


@dataclass(frozen=True, slots=True)
class Chunk:
    """A window of lines of one file, with the search terms it is indexed under."""

    path: str
    first_line: int
    """1-based number of the chunk's first line."""
    last_line: int
    """1-based number of its last line (inclusive)."""
    start: int
    """Character offset of the chunk in the file's content."""
    end: int
    """Character offset just past the chunk (its final newline included)."""
    text: str
    terms: tuple[str, ...]


def line_windows(content: str, window_lines: int, stride_lines: int) -> Iterator[tuple[int, int, int, int]]:
    """``(first_line, last_line, start, end)`` of each window: line numbers 1-based and inclusive,
    offsets into ``content``.

    Windows start every ``stride_lines`` lines; the last one ends at the file's last line, so every
    line is in some window and no window lies wholly inside the one before it.
    """
    offsets = [0]
    for line in content.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    count = len(offsets) - 1
    first = 0
    while first < count:
        last = min(first + window_lines, count)
        yield first + 1, last, offsets[first], offsets[last]
        if last == count:
            return
        first += stride_lines


def chunk_record(record: Record, config: RetrievalConfig) -> Iterator[Chunk]:
    """The chunks of a code or doc record that are worth indexing, in file order.

    Records without a path or of a kind the config does not index give none, as do windows with
    fewer than ``config.min_chunk_terms`` search terms (blank runs, closing brackets).
    """
    if record.file_path is None or str(record.kind) not in config.kinds:
        return
    # Words never span lines, so a window's terms are its lines' terms: each line is read once, not
    # once per window that holds it.
    line_terms = [code_terms(line) for line in record.content.splitlines(keepends=True)]
    for first, last, start, end in line_windows(record.content, config.window_lines, config.stride_lines):
        terms = tuple(chain.from_iterable(line_terms[first - 1 : last]))
        if len(terms) >= config.min_chunk_terms:
            yield Chunk(record.file_path, first, last, start, end, record.content[start:end], terms)
