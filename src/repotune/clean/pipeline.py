"""``repotune clean``: filter, redact, deduplicate and split ingested records.

Two streaming passes keep memory independent of the content size. The first filters and redacts each
record, writes survivors to a scratch file and keeps only a small summary per record (split facts, a
content hash and a MinHash signature). Between the passes the split and the duplicate decisions are
made on those summaries; the second pass copies the survivors into ``train.jsonl`` and ``eval.jsonl``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datasketch import LeanMinHash

from repotune.atomic import atomic_open, write_json
from repotune.clean import report
from repotune.clean.dedup import DedupConfig, NearDuplicateIndex, Signer, exact_key
from repotune.clean.filters import FILE_KINDS, FilterConfig, drop_reason
from repotune.clean.secrets import redact
from repotune.clean.split import EVAL, TRAIN, SplitConfig, assign, date_cutoff, path_score, record_date
from repotune.errors import RepotuneError
from repotune.ingest import MANIFEST_FILE, RECORDS_FILE
from repotune.records import Kind, Record

TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
STATS_FILE = "stats.json"
REPORT_FILE = "report.md"


@dataclass(frozen=True)
class CleanConfig:
    input: Path
    """Folder written by ``repotune ingest`` (holds records.jsonl)."""
    output: Path
    """Folder that receives train.jsonl, eval.jsonl, stats.json and report.md."""
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    redact_pii: bool = False
    """Also replace e-mail and IP addresses with placeholders (``--redact-pii``)."""
    workers: int | None = None
    """Processes for filtering, redaction and hashing; ``None``: one per CPU core, at most 4."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise RepotuneError("--workers must be at least 1")


@dataclass(frozen=True, slots=True)
class _Summary:
    """What the decisions between the passes need to know of one surviving record."""

    kind: Kind
    path: str | None
    date: str | None
    key: str
    exact: bytes
    signature: LeanMinHash
    chars: int
    language: str | None


_worker: tuple[FilterConfig, bool, Signer] | None = None


def _init_worker(filters: FilterConfig, pii: bool, dedup: DedupConfig) -> None:
    global _worker
    _worker = (filters, pii, Signer(dedup))


def _process(line: str) -> tuple[str | None, str | None, Counter[str], _Summary | None]:
    """First pass on one JSONL line: (redacted line, drop reason, redactions, summary)."""
    assert _worker is not None
    filters, pii, signer = _worker
    record = Record.from_dict(json.loads(line))
    reason = drop_reason(record, filters)
    if reason is not None:
        return None, reason, Counter(), None
    record.content, found = redact(record.content, pii=pii)
    summary = _Summary(
        kind=record.kind,
        path=record.file_path,
        date=_utc(record_date(record)),
        key=record.id,
        exact=exact_key(record.content),
        signature=signer.sign(record.content),
        chars=len(record.content),
        language=record.language,
    )
    return record.to_json(), None, found, summary


def _utc(value: str | None) -> str | None:
    """ISO dates with mixed offsets compare correctly only once they are all in UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat()


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                if not line.startswith("{"):
                    raise RepotuneError(f"{path}:{lineno}: not a JSON record")
                yield line


def _first_pass(
    config: CleanConfig,
    records: Path,
    scratch,
    stats: Counter,
    redactions: Counter,
    progress: Callable[[int], None] | None,
) -> list[_Summary]:
    summaries: list[_Summary] = []
    workers = config.workers or min(4, os.cpu_count() or 1)
    init_args = (config.filters, config.redact_pii, config.dedup)
    if workers == 1:
        _init_worker(*init_args)
        results: Iterator = map(_process, _lines(records))
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, init_args)
        results = pool.imap(_process, _lines(records), chunksize=8)
    try:
        for count, (line, reason, found, summary) in enumerate(results, start=1):
            stats["input"] += 1
            if reason is not None:
                stats[reason] += 1
            else:
                redactions.update(found)
                scratch.write(line)
                scratch.write("\n")
                summaries.append(summary)
            if progress is not None and count % 100 == 0:
                progress(count)
    except json.JSONDecodeError as exc:
        raise RepotuneError(f"{records}: malformed JSON record ({exc})") from None
    except KeyError as exc:
        raise RepotuneError(f"{records}: a record lacks the field {exc}") from None
    finally:
        if pool is not None:
            pool.terminate()
    return summaries


def _decide(summaries: list[_Summary], config: CleanConfig, dropped: Counter) -> list[str | None]:
    """The split of each survivor, or ``None`` where it is a duplicate."""
    cutoff = date_cutoff(
        [s.date for s in summaries if s.date is not None and s.kind not in FILE_KINDS],
        config.split.eval_fraction,
    )
    splits = [assign(s.kind, s.path, s.date, s.key, cutoff, config.split) for s in summaries]
    files = [i for i, s in enumerate(summaries) if s.kind in FILE_KINDS]
    if config.split.eval_fraction > 0 and len(files) > 1 and not any(splits[i] == EVAL for i in files):
        # A tiny repository may have no path under the fraction; hold out the lowest-scoring one so that
        # evaluation always has a file to score.
        lowest = min(
            files, key=lambda i: path_score(summaries[i].path or summaries[i].key, config.split.seed)
        )
        splits[lowest] = EVAL
    index = NearDuplicateIndex(config.dedup)
    order = [i for i in range(len(summaries)) if splits[i] == EVAL]
    order += [i for i in range(len(summaries)) if splits[i] == TRAIN]
    decisions: list[str | None] = list(splits)
    for i in order:
        twin = index.offer(str(i), summaries[i].exact, summaries[i].signature)
        if twin is None:
            continue
        match, other = twin
        decisions[i] = None
        if splits[i] == TRAIN and splits[int(other)] == EVAL:
            dropped["eval_overlap"] += 1
        else:
            dropped[f"{match}_duplicate"] += 1
    return decisions


def run_clean(config: CleanConfig, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Clean ``config.input`` into ``config.output``; returns the stats that were written."""
    records_path = config.input / RECORDS_FILE
    if not records_path.is_file():
        raise RepotuneError(f"{config.input} has no {RECORDS_FILE}; run `repotune ingest` into it first")
    manifest_path = config.input / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    config.output.mkdir(parents=True, exist_ok=True)
    dropped: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    # Survivors wait in a scratch file beside the outputs; it goes whatever happens.
    scratch_path = config.output / f".survivors-{os.getpid()}.jsonl"
    try:
        with scratch_path.open("w", encoding="utf-8") as scratch:
            summaries = _first_pass(config, records_path, scratch, dropped, redactions, progress)
        input_count = dropped.pop("input", 0)
        if input_count == 0:
            raise RepotuneError(f"{records_path} holds no records")
        decisions = _decide(summaries, config, dropped)
        summary = report.Summary()
        with (
            scratch_path.open(encoding="utf-8") as survivors,
            atomic_open(config.output / TRAIN_FILE) as train,
            atomic_open(config.output / EVAL_FILE) as held_out,
        ):
            for line, decision, facts in zip(survivors, decisions, summaries, strict=True):
                if decision is None:
                    continue
                (held_out if decision == EVAL else train).write(line)
                summary.add(decision, facts.kind, facts.language, facts.path, facts.chars)
    finally:
        scratch_path.unlink(missing_ok=True)
    stats = summary.as_stats(input_count=input_count, dropped=dropped, redactions=redactions)
    stats["source"] = {key: manifest.get(key) for key in ("source", "source_type", "commit")}
    stats["ingest_skipped"] = manifest.get("skipped", {})
    stats["config"] = {
        "filters": asdict(config.filters),
        "dedup": asdict(config.dedup),
        "split": asdict(config.split),
        "redact_pii": config.redact_pii,
    }
    write_json(config.output / STATS_FILE, stats)
    with atomic_open(config.output / REPORT_FILE) as handle:
        handle.write(report.render(stats))
    return stats
