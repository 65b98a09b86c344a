"""What every source shares: skip accounting and the ingest result summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class IngestStats:
    """Counts for manifest.json: records kept per kind, inputs skipped per named reason."""

    kept: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"kept": dict(sorted(self.kept.items())), "skipped": dict(sorted(self.skipped.items()))}
