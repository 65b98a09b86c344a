"""Quality filters in the spirit of the BigCode/StarCoder data work.

A filter keeps a record (returns ``None``) or drops it with a named reason. The thresholds are the
StarCoder ones for code (mean line length over 100 or a line over 1000 characters, under 25%
alphanumeric characters) and apply to code and docs; issues and commits are only checked for
emptiness, since long lines and symbols are normal in a diff or a pasted log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from repotune.errors import RepotuneError
from repotune.records import Kind, Record
from repotune.sources.local import has_generated_marker

FILE_KINDS = frozenset({Kind.CODE, Kind.DOC})


@dataclass(frozen=True)
class FilterConfig:
    min_chars: int = 20
    """Records with fewer non-whitespace characters than this are ``trivial``."""
    max_line_length: int = 1000
    """A code or doc file with a line longer than this many characters is dropped as ``long_lines``."""
    max_mean_line_length: float = 100.0
    """A code or doc file whose mean line length exceeds this is dropped as ``long_lines``."""
    min_alnum_fraction: float = 0.25
    """A code or doc file with a smaller share of alphanumeric characters is ``low_alphanumeric``."""
    max_chars: int = 1_000_000
    """Records longer than this many characters are ``too_large``."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_alnum_fraction <= 1.0:
            raise RepotuneError("min_alnum_fraction must be between 0 and 1")
        for name in ("min_chars", "max_line_length", "max_mean_line_length", "max_chars"):
            if getattr(self, name) <= 0:
                raise RepotuneError(f"{name} must be positive")


_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"
_ASCII_ALNUM = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _count_alnum(text: str) -> int:
    ascii_part = text.encode("ascii", errors="ignore")
    count = len(ascii_part) - len(ascii_part.translate(None, _ASCII_ALNUM))  # C speed
    if len(ascii_part) != len(text):
        count += sum(ch.isalnum() for ch in _ASCII_RUNS.sub("", text))  # only the non-ASCII rest
    return count


def _count_visible(text: str) -> int:
    """Characters that are not whitespace."""
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_WHITESPACE))
    return sum(map(len, text.split()))


def drop_reason(record: Record, config: FilterConfig) -> str | None:
    """``None`` to keep ``record``, or the reason it is dropped."""
    text = record.content
    if not text.strip():
        return "empty"
    if len(text) > config.max_chars:
        return "too_large"
    if record.kind not in FILE_KINDS:
        return None
    if has_generated_marker(text):
        return "generated"
    if _count_visible(text) < config.min_chars:
        return "trivial"
    lines = text.count("\n") + (not text.endswith("\n"))
    if max(map(len, text.split("\n"))) > config.max_line_length:
        return "long_lines"
    if len(text) / lines > config.max_mean_line_length:
        return "long_lines"
    if _count_alnum(text) / len(text) < config.min_alnum_fraction:
        return "low_alphanumeric"
    return None
