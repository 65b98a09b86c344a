"""Train/eval split that cannot leak.

Files go by a deterministic hash of their path: a file is held out in every run and every later
commit of the repository, so a model trained on one snapshot is never scored on a file it saw.
Commits, issues and pull requests go by date: the newest share is held out, as a model is used on
work that comes after its training data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from repotune.errors import RepotuneError
from repotune.records import Kind, Record

TRAIN = "train"
EVAL = "eval"
# Wiki pages go by their creation date (``meta["created_at"]``), which no later edit moves.
DATED_KINDS = frozenset({Kind.COMMIT, Kind.ISSUE, Kind.PULL_REQUEST, Kind.WIKI_PAGE})


@dataclass(frozen=True)
class SplitConfig:
    eval_fraction: float = 0.1
    """Share of files (by path hash) and of the newest commits and issues held out for evaluation."""
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
