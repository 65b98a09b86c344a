"""The files of a clean folder, named once: what the clean stage writes and training and evaluation read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCRATCH_PREFIX = ".scratch-"
"""Scratch folders of a clean in progress (a copy of the surviving records); a hard kill leaves one."""


@dataclass(frozen=True)
class CleanLayout:
    """The files of a clean folder: what training and evaluation read."""

    folder: Path

    @property
    def train(self) -> Path:
        """Records to train on, one a line."""
        return self.folder / "train.jsonl"

    @property
    def eval(self) -> Path:
        """Held-out records: what evaluation scores, never trained on."""
        return self.folder / "eval.jsonl"

    @property
    def stats(self) -> Path:
        """Kept, dropped by reason, redactions by kind, per kind and language counts, the source."""
        return self.folder / "stats.json"

    @property
    def report(self) -> Path:
        """The same numbers for a person, in Markdown."""
        return self.folder / "report.md"
