"""The clean stage: filter, redact, deduplicate and split ingested records into train and eval.

    result = repotune.clean.run(CleanConfig(input=Path("in"), output=Path("data")))
    result.train_records, result.dropped, result.output.train

The work is two streaming passes (:mod:`repotune.clean.passes`) and a leak audit of their output
(:mod:`repotune.clean.audit`); the split is temporal where ingest cut the history, by file path where
it did not (:mod:`repotune.clean.split`). This module writes ``stats.json`` and ``report.md``, with the
split in words (``split.trained_on``, ``split.scored_on``), and returns what the next stages read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from repotune.atomic import atomic_open, prepare_output, write_json
from repotune.clean.audit import LeakAudit
from repotune.clean.dedup import DedupConfig
from repotune.clean.filters import FilterConfig
from repotune.clean.layout import SCRATCH_PREFIX, CleanLayout
from repotune.clean.split import SplitConfig, SplitSummary, cut_of, describe
from repotune.errors import RepotuneError
from repotune.ingest.layout import IngestLayout


@dataclass(frozen=True)
class CleanConfig:
    input: Path
    """Folder written by `repotune ingest`."""
    output: Path
    """Folder for train/eval JSONL, stats and report."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    """Quality filters: what is dropped, with a named reason."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact and near-duplicate removal."""
    split: SplitConfig = field(default_factory=SplitConfig)
    """Which records are held out for evaluation where ingest did not cut the history in time."""
    redact_pii: bool = False
    """Also redact e-mail and IP addresses."""
    workers: int | None = None
    """Worker processes for filtering, redaction and hashing (default: one per core, at most 4)."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise RepotuneError("--workers must be at least 1")


@dataclass(frozen=True)
class CleanResult:
    """What a clean kept and dropped (the full counts are in ``output.stats``)."""

    output: CleanLayout
    input_records: int
    train_records: int
    eval_records: int
    dropped: dict[str, int]
    """Records dropped, per reason (``trivial``, ``near_duplicate``, ``eval_overlap``, ...)."""
    redactions: dict[str, int]
    """Secrets (and PII) replaced, per kind."""
    train_tokens_estimate: int
    """Training tokens, estimated from characters (the train stage counts real ones)."""
    split: SplitSummary
    """What trained and what is scored: the mode, the cut, one line for each side."""
    leaks: LeakAudit
    """Long lines of the scored targets that also appear in training (0 is the aim)."""

    @property
    def metrics(self) -> dict[str, int]:
        """The numbers the KFP UI shows for the step."""
        return {
            "input_records": self.input_records,
            "train_records": self.train_records,
            "eval_records": self.eval_records,
            "dropped_records": sum(self.dropped.values()),
            "redactions": sum(self.redactions.values()),
            "train_tokens_estimate": self.train_tokens_estimate,
            "scored_lines": self.split.scored_lines,
            "leaked_lines": self.leaks.found,
        }


def run(config: CleanConfig, *, progress: Callable[[int], None] | None = None) -> CleanResult:
    """Clean ``config.input`` into ``config.output``; ``progress`` gets the count of records read."""
    from repotune.clean import report
    from repotune.clean.passes import Rules, clean_records

    source = IngestLayout(config.input)
    if not config.input.exists():
        raise RepotuneError(f"{config.input} does not exist; give the folder `repotune ingest` wrote")
    if not source.records.is_file():
        raise RepotuneError(
            f"{config.input} has no {source.records.name}; run `repotune ingest` into it first"
        )
    manifest = _manifest(source.manifest)
    layout = CleanLayout(config.output)
    prepare_output(
        config.output,
        (layout.train.name, layout.eval.name, layout.stats.name),
        "clean output",
        written=(layout.report.name,),
        scratch=(SCRATCH_PREFIX,),
    )
    try:
        cut, reason = cut_of(manifest)
    except RepotuneError as err:
        raise RepotuneError(
            f"{source.manifest}: {err}; run `repotune ingest` into {config.input} again"
        ) from None
    rules = Rules(config.filters, config.dedup, config.split, config.redact_pii, config.workers, cut)
    outcome = clean_records(source.records, layout.train, layout.eval, rules, progress)
    split = describe(
        outcome.summary.records,
        manifest.get("split"),
        cut=cut,
        reason=reason,
        commit=manifest.get("commit"),
        eval_fraction=config.split.eval_fraction,
        scored_files=outcome.scored_files,
        scored_lines=outcome.scored_lines,
        dropped_hunks=outcome.dropped_sections,
        dropped_comments=outcome.dropped_comments,
    )
    stats = outcome.summary.as_stats(
        input_count=outcome.input_records, dropped=outcome.dropped, redactions=outcome.redactions
    )
    stats["split"] = split.as_dict()
    stats["leak_audit"] = outcome.leaks.as_dict()
    stats["source"] = {key: manifest.get(key) for key in ("source", "source_type", "commit", "root_commit")}
    stats["ingest_skipped"] = manifest.get("skipped", {})
    stats["config"] = {
        "filters": asdict(config.filters),
        "dedup": asdict(config.dedup),
        "split": asdict(config.split),
        "redact_pii": config.redact_pii,
    }
    write_json(layout.stats, stats)
    with atomic_open(layout.report) as handle:
        handle.write(report.render(stats))
    return CleanResult(
        output=layout,
        input_records=stats["input_records"],
        train_records=stats["kept"]["train"],
        eval_records=stats["kept"]["eval"],
        dropped=stats["dropped"],
        redactions=stats["redactions"],
        train_tokens_estimate=stats["tokens_estimate"]["train"],
        split=split,
        leaks=outcome.leaks,
    )


def _manifest(path: Path) -> dict:
    """Ingest's manifest (``{}`` where there is none: records from elsewhere take the file split)."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RepotuneError(
            f"{path}: not valid JSON ({exc}); run `repotune ingest` into its folder again"
        ) from None
    if not isinstance(manifest, dict):
        raise RepotuneError(f"{path}: not a JSON object; run `repotune ingest` into its folder again")
    return manifest
