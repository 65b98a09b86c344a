"""The clean stage's two passes over the records: filter, redact, deduplicate and split.

Two streaming passes keep memory independent of the content size. The first filters and redacts each
record, writes survivors to a scratch file and keeps only a small summary per record (split facts, a
content hash and a MinHash signature). Between the passes the split and the duplicate decisions are
made on those summaries; the second pass copies the survivors into ``train.jsonl`` and ``eval.jsonl``,
taking a held-out file's sections out of training commits' diffs in the file split. A last read of the
two outputs audits them for leaks (:mod:`repotune.clean.audit`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repotune.atomic import atomic_open, umask
from repotune.clean import audit, report
from repotune.clean.dedup import DedupConfig, NearDuplicateIndex, Signer, exact_key
from repotune.clean.filters import FILE_KINDS, FilterConfig, drop_reason
from repotune.clean.layout import SCRATCH_PREFIX
from repotune.clean.secrets import redact
from repotune.clean.split import (
    EVAL,
    TRAIN,
    SplitConfig,
    TimeCut,
    assign,
    assign_temporal,
    comments_up_to,
    date_cutoff,
    drop_sections,
    earlier_names,
    has_diff,
    held_out_by_ingest,
    path_score,
    record_date,
    remap_ranges,
    renames,
)
from repotune.errors import RepotuneError
from repotune.records import Kind, Record, utc_moment


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
    held_out: bool | None
    """Ingest's verdict in a temporal split (see ``split.held_out_by_ingest``)."""
    touched: tuple[str, ...]
    """The paths a commit's diff touches (empty for other kinds)."""
    renames: tuple[tuple[str, str], ...]
    """(old path, new path) of the files a commit's diff renames (empty for other kinds)."""
    added: int
    """Lines added after the cut, for a file's future version (0 for anything else)."""
    source: str
    """The source it came from (the report counts each)."""


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
    before = record.content
    headers = record.meta.get("table_headers")
    headers = headers if isinstance(headers, dict) else None
    record.content, found = redact(record.content, pii=pii, path=record.file_path, table_headers=headers)
    spans = record.meta.get("added_lines")
    if spans is not None and record.content.count("\n") != before.count("\n"):
        # A multi-line secret became one placeholder: the added ranges must follow the lines.
        spans = record.meta["added_lines"] = remap_ranges(before, record.content, spans)
    summary = _Summary(
        kind=record.kind,
        path=record.file_path,
        date=_utc(record_date(record)),
        key=record.id,
        exact=exact_key(record.content),
        signature=signer.sign(record.content),
        chars=len(record.content),
        language=record.language,
        held_out=held_out_by_ingest(record),
        touched=tuple(record.meta.get("files") or ()) if record.kind is Kind.COMMIT else (),
        renames=tuple(renames(record.content)) if record.kind is Kind.COMMIT else (),
        added=sum(last - first + 1 for first, last in spans) if spans else 0,
        source=sys.intern(record.source),  # a few distinct names across many records
    )
    return record.to_json(), None, found, summary


def _utc(value: str | None) -> str | None:
    """ISO dates with mixed offsets compare correctly only once they are all in UTC."""
    moment = utc_moment(value)
    return moment.isoformat() if moment is not None else None


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
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RepotuneError(f"{where}: malformed JSON record ({exc})") from None
            except (ValueError, TypeError) as exc:
                raise RepotuneError(f"{where}: not a repotune record ({exc})") from None
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
    rules: Rules,
    records: Path,
    scratch: Path,
    dropped: Counter[str],
    redactions: Counter[str],
    progress: Callable[[int], None] | None,
) -> tuple[int, list[_Summary]]:
    """Filter, redact and sign every record; returns the record count and the survivors' summaries."""
    workers = rules.workers or min(4, os.cpu_count() or 1)
    init_args = (rules.filters, rules.redact_pii, rules.dedup)
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


def _decide(summaries: list[_Summary], rules: Rules, dropped: Counter) -> tuple[list[str | None], set[str]]:
    """The split of each survivor (``None`` where it is a duplicate), and the held-out paths whose
    sections leave training commits' diffs (file split only)."""
    if rules.cut is not None:
        return _decide_temporal(summaries, rules, rules.cut, dropped), set()
    cutoff = date_cutoff(
        [s.date for s in summaries if s.date is not None and s.kind not in FILE_KINDS],
        rules.split.eval_fraction,
    )
    splits = [assign(s.kind, s.path, s.date, s.key, cutoff, rules.split) for s in summaries]
    files = [i for i, s in enumerate(summaries) if s.kind in FILE_KINDS]
    if rules.split.eval_fraction > 0 and len(files) > 1 and not any(splits[i] == EVAL for i in files):
        # A tiny repository may have no path under the fraction; hold out the lowest-scoring one so that
        # evaluation always has a file to score.
        lowest = min(files, key=lambda i: path_score(summaries[i].path or summaries[i].key, rules.split.seed))
        splits[lowest] = EVAL
    index = NearDuplicateIndex(rules.dedup)
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
    held_paths = {s.path for s, split in zip(summaries, splits, strict=True) if split == EVAL and s.path}
    # A held-out file renamed from another path has its lines in that path's sections too.
    held_paths = earlier_names(held_paths, [pair for s in summaries for pair in s.renames])
    return decisions, held_paths


def _decide_temporal(
    summaries: list[_Summary], rules: Rules, cut: TimeCut, dropped: Counter
) -> list[str | None]:
    """The temporal split: ingest's verdicts, dates against the cut's; each side deduplicated on its own.

    Training holds only what stood at the cut, so a training record that resembles a held-out one
    resembles the past, not the future: the file at the cut is a near copy of its version at the end,
    whose added lines alone are scored. Future file versions are not deduplicated at all (one per path).
    """
    cut_date = _utc(cut.date) or cut.date
    splits = [assign_temporal(s.kind, s.date, s.held_out, cut_date) for s in summaries]
    decisions: list[str | None] = list(splits)
    for side in (EVAL, TRAIN):
        index = NearDuplicateIndex(rules.dedup)
        for i, summary in enumerate(summaries):
            if splits[i] != side or summary.added:
                continue
            twin = index.offer(str(i), summary.exact, summary.signature)
            if twin is not None:
                decisions[i] = None
                dropped[f"{twin[0]}_duplicate"] += 1
    return decisions


@dataclass(frozen=True)
class Rules:
    """What the passes do to each record (the clean stage's settings, less its folders)."""

    filters: FilterConfig
    dedup: DedupConfig
    split: SplitConfig
    redact_pii: bool
    workers: int | None
    cut: TimeCut | None = None
    """The cut of a temporal split; ``None`` for the file split."""


@dataclass(frozen=True)
class Outcome:
    """What the passes found: counts for stats.json and the report."""

    input_records: int
    dropped: Counter[str]
    redactions: Counter[str]
    summary: report.Summary
    dropped_sections: int
    """``diff --git`` sections of held-out files taken out of training commits (file split)."""
    dropped_comments: int
    """Comments posted after the cut taken out of training threads (temporal split)."""
    scored_files: int
    """Held-out file versions with lines added after the cut (temporal split)."""
    scored_lines: int
    """Lines added after the cut in those files."""
    leaks: audit.LeakAudit


def clean_records(
    records: Path, train: Path, held_out: Path, rules: Rules, progress: Callable[[int], None] | None = None
) -> Outcome:
    """Clean the JSONL file ``records`` into ``train`` and ``held_out`` (each written atomically)."""
    dropped: Counter[str] = Counter()
    redactions: Counter[str] = Counter()
    sections = comments = scored_files = scored_lines = 0
    # Survivors wait in scratch files beside the outputs; they go whatever happens.
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=train.parent))
    try:
        input_count, summaries = _first_pass(rules, records, scratch, dropped, redactions, progress)
        if input_count == 0:
            raise RepotuneError(f"{records} holds no records")
        decisions, held_paths = _decide(summaries, rules, dropped)
        summary = report.Summary()
        chunks = sorted(scratch.iterdir())
        # Both sides go to scratch first: the audit reads them before eval.jsonl is final, which marks
        # the held-out lines that training has (``seen_lines``) so that they are not scored.
        train_tmp, eval_tmp = scratch / "train.out", scratch / "eval.out"
        with (
            train_tmp.open("w", encoding="utf-8") as train_out,
            eval_tmp.open("w", encoding="utf-8") as eval_out,
        ):
            position = trained = 0
            for chunk_file in chunks:
                with chunk_file.open(encoding="utf-8") as survivors:
                    for line in survivors:
                        decision, facts = decisions[position], summaries[position]
                        position += 1
                        if decision is None:
                            continue
                        if decision == EVAL:
                            eval_out.write(line)
                            continue
                        chars = facts.chars
                        if rules.cut is not None and facts.kind in _THREAD_KINDS:
                            line, chars, removed = _without_later_comments(line, chars, rules.cut)
                            comments += removed
                        if held_paths.intersection(facts.touched):
                            line, chars, removed = _without_held_out(line, held_paths)
                            sections += removed
                            if line is None:
                                dropped["held_out_diff"] += 1
                                continue
                        train_out.write(line)
                        trained += 1
                        summary.add(TRAIN, facts.kind, facts.language, facts.path, chars, facts.source)
            if position != len(summaries):
                raise RuntimeError(f"scratch holds {position} survivors, expected {len(summaries)}")
            if trained == 0:
                raise RepotuneError(_nothing_trains(input_count, dropped, decisions.count(EVAL)))
            train_out.flush()
            os.fsync(train_out.fileno())
        leaks, found = audit.audit(train_tmp, eval_tmp)
        set_aside = 0
        with atomic_open(held_out) as final, eval_tmp.open(encoding="utf-8") as pending:
            for line in pending:
                record = Record.from_dict(json.loads(line))
                if found and record.kind in FILE_KINDS:
                    moved = audit.set_aside(record, found)
                    set_aside += moved
                    if record.meta.get("added_lines") == []:
                        dropped["seen_in_training"] += 1  # every line it added stood at the cut
                        continue
                    if moved:
                        line = record.to_json() + "\n"
                if "added_lines" in record.meta:
                    scored_files += 1
                    scored_lines += sum(last - first + 1 for first, last in record.meta["added_lines"])
                final.write(line)
                summary.add(
                    EVAL, record.kind, record.language, record.file_path, len(record.content), record.source
                )
        os.chmod(train_tmp, 0o666 & ~umask())
        os.replace(train_tmp, train)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    leaks = dataclasses.replace(leaks, set_aside=set_aside)
    return Outcome(
        input_count, dropped, redactions, summary, sections, comments, scored_files, scored_lines, leaks
    )


def _nothing_trains(input_count: int, dropped: Counter[str], held_out: int) -> str:
    """Why no record is left to train on, largest cause first (train.jsonl would be empty, and only the
    next stage would fail, far from the cause)."""
    causes = [
        f"{n:,} {'dropped ' if i == 0 else ''}as {reason}"
        for i, (reason, n) in enumerate(dropped.most_common())
    ]
    if held_out:
        causes.append(f"{held_out:,} held out for evaluation")
    return f"no training records left of {input_count:,}: {', '.join(causes)}"


_THREAD_KINDS = frozenset({Kind.ISSUE, Kind.PULL_REQUEST})


def _without_later_comments(line: str, chars: int, cut: TimeCut) -> tuple[str, int, int]:
    """A training thread's JSON line without the comments posted after the cut: (line, characters,
    comments removed)."""
    record = Record.from_dict(json.loads(line))
    content, removed = comments_up_to(
        record.content, record.meta.get("updated_at"), cut.date, record.meta.get("comment_times")
    )
    if not removed:
        return line, chars, 0
    record.content = content
    return record.to_json() + "\n", len(content), removed


def _without_held_out(line: str, held_paths: set[str]) -> tuple[str | None, int, int]:
    """A training commit's JSON line without its diff sections of held-out files: (line, characters,
    sections removed); the line is ``None`` when nothing of its diff is left (the message alone would
    describe a held-out change)."""
    record = Record.from_dict(json.loads(line))
    content, removed = drop_sections(record.content, held_paths)
    if not removed:
        return line, len(record.content), 0
    if not has_diff(content):
        return None, 0, removed
    record.content = content
    record.meta["files"] = [path for path in record.meta.get("files", []) if path not in held_paths]
    return record.to_json() + "\n", len(content), removed
