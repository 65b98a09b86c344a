"""The files of an ingest folder, named once: what the ingest stage writes and clean reads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IngestLayout:
    """The files of an ingest folder."""

    folder: Path

    @property
    def records(self) -> Path:
        """One record a line (see ``repotune.records``)."""
        return self.folder / "records.jsonl"

    @property
    def manifest(self) -> Path:
        """Source, resolved commit, records kept per kind, entries skipped per reason."""
        return self.folder / "manifest.json"
