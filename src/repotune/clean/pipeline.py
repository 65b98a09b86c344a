"""``repotune clean``: filter, redact, deduplicate and split ingested records.

Two streaming passes keep memory independent of the content size. The first filters and redacts each
record, writes survivors to a scratch file and keeps only a small summary per record (split facts, a
content hash and a MinHash signature). Between the passes the split and the duplicate decisions are
made on those summaries; the second pass copies the survivors into ``train.jsonl`` and ``eval.jsonl``.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from repotune.atomic import atomic_open, write_json
from repotune.clean import report
from repotune.clean.dedup import DedupConfig, NearDuplicateIndex, Signer, exact_key
from repotune.clean.filters import FILE_KINDS, FilterConfig, drop_reason
from repotune.clean.secrets import redact
from repotune.clean.split import EVAL, TRAIN, SplitConfig, assign, date_cutoff, path_score, record_date
from repotune.errors import RepotuneError
from repotune.ingest import IngestLayout
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
    signature: np.ndarray
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


# The input is cut into chunks of about this many bytes, each cleaned by one worker process that
# reads it from the file and writes its survivors to its own scratch file: record text never passes
# through the parent process, which only gathers the small summaries.
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class _Chunk:
    index: int
    start: int
    end: int
    first_line: int


@dataclass(slots=True)
class _ChunkResult:
    records: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    redactions: Counter[str] = field(default_factory=Counter)
    summaries: list[_Summary] = field(default_factory=list)


def _chunks(path: Path) -> Iterator[_Chunk]:
    index, start, position, lineno, first = 0, 0, 0, 1, 1
    with path.open("rb") as handle:
        for line in handle:
            position += len(line)
            lineno += 1
            if position - start >= _CHUNK_BYTES:
                yield _Chunk(index, start, position, first)
                index, start, first = index + 1, position, lineno
    if position > start:
        yield _Chunk(index, start, position, first)


def _chunk_file(scratch: Path, index: int) -> Path:
    return scratch / f"{index:06d}.jsonl"


def _process_chunk(task: tuple[Path, Path, _Chunk]) -> _ChunkResult:
    source, scratch, chunk = task
    with source.open("rb") as handle:
        handle.seek(chunk.start)
        data = handle.read(chunk.end - chunk.start)
    result = _ChunkResult()
    with _chunk_file(scratch, chunk.index).open("w", encoding="utf-8") as out:
        for offset, raw in enumerate(data.split(b"\n")):
            if not raw.strip():
                continue
            where = f"{source}:{chunk.first_line + offset}"
            try:
                line, reason, found, summary = _process(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
                raise RepotuneError(f"{where}: malformed JSON record ({exc})") from None
            except KeyError as exc:
                raise RepotuneError(f"{where}: a record lacks the field {exc}") from None
            result.records += 1
            if reason is not None:
                result.dropped[reason] += 1
                continue
            result.redactions.update(found)
            out.write(line)
            out.write("\n")
            result.summaries.append(summary)
    return result


def _pool(workers: int, init_args: tuple):
    # fork shares the parent's imported modules with the workers at no cost; spawn (which imports
    # everything again in each worker) is the fallback where fork does not exist.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers, _init_worker, init_args)


def _first_pass(
    config: CleanConfig,
    records: Path,
    scratch: Path,
    dropped: Counter[str],
    redactions: Counter[str],
    progress: Callable[[int], None] | None,
) -> tuple[int, list[_Summary]]:
    """Filter, redact and sign every record; returns the record count and the survivors' summaries."""
    workers = config.workers or min(4, os.cpu_count() or 1)
    init_args = (config.filters, config.redact_pii, config.dedup)
    tasks = ((records, scratch, chunk) for chunk in _chunks(records))
    pool = None
    if workers == 1:
        _init_worker(*init_args)
        results: Iterator[_ChunkResult] = map(_process_chunk, tasks)
    else:
        pool = _pool(workers, init_args)
        results = pool.imap(_process_chunk, tasks)
    # The index between the passes needs datasketch, whose scipy import takes about 0.4 s: load it
    # now, after the fork, while the workers do the first pass.
    threading.Thread(target=importlib.import_module, args=("datasketch",), daemon=True).start()
    count = 0
    summaries: list[_Summary] = []
    try:
        for result in results:
            count += result.records
            dropped.update(result.dropped)
            redactions.update(result.redactions)
            summaries.extend(result.summaries)
            if progress is not None:
                progress(count)
        if pool is not None:
            pool.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return count, summaries


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
    source = IngestLayout(config.input)
    records_path = source.records
    if not records_path.is_file():
        raise RepotuneError(f"{config.input} has no {records_path.name}; run `repotune ingest` into it first")
    manifest = json.loads(source.manifest.read_text()) if source.manifest.is_file() else {}
    config.output.mkdir(parents=True, exist_ok=True)
    dropped: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    # Survivors wait in scratch files beside the outputs; they go whatever happens.
    scratch = Path(tempfile.mkdtemp(prefix=".scratch-", dir=config.output))
    try:
        input_count, summaries = _first_pass(config, records_path, scratch, dropped, redactions, progress)
        if input_count == 0:
            raise RepotuneError(f"{records_path} holds no records")
        decisions = _decide(summaries, config, dropped)
        summary = report.Summary()
        with (
            atomic_open(config.output / TRAIN_FILE) as train,
            atomic_open(config.output / EVAL_FILE) as held_out,
        ):
            position = 0
            for chunk_file in sorted(scratch.iterdir()):
                with chunk_file.open(encoding="utf-8") as survivors:
                    for line in survivors:
                        decision, facts = decisions[position], summaries[position]
                        position += 1
                        if decision is None:
                            continue
                        (held_out if decision == EVAL else train).write(line)
                        summary.add(decision, facts.kind, facts.language, facts.path, facts.chars)
            if position != len(summaries):
                raise RuntimeError(f"scratch holds {position} survivors, expected {len(summaries)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
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
