#!/usr/bin/env python3
"""Secret redaction, side by side: today's rules against a baseline revision's, in one process.

Three figures, each for the baseline and for the current rules:

* coverage: the share of the fake-secret corpus (``tests/secret_corpus.py``: every format in every
  place it can hide) that ``redact`` removes, and the number of kinds and formats in it;
* findings on real code: every redaction in a tree that holds no live secret (by default this
  Python's standard library, ``.py`` files), with the ones the baseline did not make listed: those
  are new false positives unless they are secrets;
* speed of ``redact`` over the same tree (read into memory first), and of the whole clean stage
  (``repotune.clean.run`` with one worker, so that it runs in this process, over the tree's
  ``repotune.ingest.run`` records, with the pipeline's ``redact`` swapped for each side): the two
  sides alternate run by run so that other load on the machine falls on both alike; the median of
  ``--repeat`` runs and the ratio current/baseline (target for clean: at most 1.20, no more than 20% slower).

The baseline is ``src/repotune/clean/secrets.py`` at ``--baseline-rev`` (default: the last commit
where redaction was that single module), loaded from git into a temporary file. Targets print as
PASS/MISS and are never asserted; the exit status is 0 when everything ran.

Usage (from the repository root)::

    .venv/bin/python benchmarks/secret_redaction.py                       # stdlib, 5 runs each
    .venv/bin/python benchmarks/secret_redaction.py --tree PATH --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.secret_corpus import measure  # noqa: E402

import repotune.clean  # noqa: E402
import repotune.clean.passes as clean_passes  # noqa: E402
import repotune.ingest  # noqa: E402
from repotune.clean import CleanConfig  # noqa: E402
from repotune.clean.secrets import RULES, redact  # noqa: E402
from repotune.ingest import IngestConfig  # noqa: E402

BASELINE_REV = "9469ae51b30ba06db1e1d674dad9c755b7194657"
"""The last commit where redaction was the single module `clean/secrets.py` (25 rules)."""
SLOWDOWN_TARGET = 1.20

Redact = Callable[[str], tuple[str, Counter[str]]]


def load_baseline(rev: str) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:src/repotune/clean/secrets.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="secrets-baseline-"))
    path = folder / "secrets_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("secrets_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["secrets_baseline"] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def read_tree(root: Path, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    texts = []
    for path in sorted(root.rglob("*")):
        if "site-packages" in path.parts or "__pycache__" in path.parts or path.suffix not in suffixes:
            continue
        try:
            texts.append((str(path.relative_to(root)), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return texts


def findings(redactor: Redact, texts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(file, original line) for every line that `redactor` changed."""
    found = []
    for name, text in texts:
        out, counts = redactor(text)
        if counts:
            for before, after in zip(text.splitlines(), out.splitlines(), strict=False):
                if before != after:
                    found.append((name, before.strip()))
    return found


def timed(redactor: Redact, texts: list[tuple[str, str]]) -> float:
    start = time.perf_counter()
    for _, text in texts:
        redactor(text)
    return time.perf_counter() - start


def clean_seconds(redactor: Redact, records: Path, work: Path) -> float:
    """One `repotune.clean.run` over `records` (an ingest folder) with the pipeline using `redactor`."""
    output = work / "clean"
    shutil.rmtree(output, ignore_errors=True)
    # `_process` calls the module's `redact` (one worker runs here), with the record's path and a
    # commit's table headers, which older rules do not take: those get only what they know.
    known = inspect.signature(redactor).parameters
    clean_passes.redact = lambda text, **kw: redactor(text, **{k: v for k, v in kw.items() if k in known})
    try:
        start = time.perf_counter()
        repotune.clean.run(CleanConfig(input=records, output=output, workers=1))
        return time.perf_counter() - start
    finally:
        clean_passes.redact = redact


def report_times(title: str, times: dict[str, list[float]], size: int | None) -> float:
    medians = {side: statistics.median(t) for side, t in times.items()}
    print(f"\n{title}\n| rules | median s | min-max s |" + (" MiB/s |" if size else ""))
    print("|---|---:|---:|" + ("---:|" if size else ""))
    for side, t in times.items():
        speed = f" {size / 2**20 / medians[side]:.1f} |" if size else ""
        print(f"| {side} | {medians[side]:.2f} | {min(t):.2f}-{max(t):.2f} |{speed}")
    return medians["current"] / medians["baseline"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--suffixes", default=".py", help="comma-separated file suffixes to read")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each rule set (median)")
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    parser.add_argument("--no-clean", action="store_true", help="time redact alone, not the clean stage")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)

    baseline = load_baseline(args.baseline_rev)
    sides: dict[str, Redact] = {"baseline": baseline.redact, "current": redact}
    texts = read_tree(args.tree, tuple(args.suffixes.split(",")))
    size = sum(len(text) for _, text in texts)
    print(f"tree: {args.tree} ({len(texts)} files, {size / 2**20:.1f} MiB of text)")
    print(f"baseline: {args.baseline_rev[:12]} ({len(baseline.RULES)} rules); current: {len(RULES)} rules\n")

    result: dict[str, dict] = {}
    for side, redactor in sides.items():
        coverage = measure(redactor=lambda text, r=redactor: r(text)[0])
        result[side] = {
            "formats": coverage.formats,
            "kinds": len(coverage.kinds),
            "placements": coverage.placements,
            "redacted_share": coverage.share,
            "missed": sorted({f"{m.sample.format} ({m.place})" for m in coverage.misses}),
            "findings": findings(redactor, texts),
        }
    print("| rules | corpus formats | kinds | placements | redacted | findings on the tree |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, r in result.items():
        print(
            f"| {side} | {r['formats']} | {r['kinds']} | {r['placements']} | {r['redacted_share']:.1%} "
            f"| {len(r['findings'])} |"
        )
    before, after = (set(map(tuple, result[side]["findings"])) for side in ("baseline", "current"))
    new, gone = sorted(after - before), sorted(before - after)
    print(f"\nfindings the baseline did not make (new false positives unless secrets): {len(new)}")
    for name, line in new:
        print(f"  {name}: {line[:120]}")
    if gone:
        print(f"findings only the baseline made: {len(gone)}")
    for side, r in result.items():
        if r["missed"]:
            examples = ", ".join(r["missed"][:3])
            print(f"corpus placements the {side} rules miss: {len(r['missed'])}, e.g. {examples}")

    times: dict[str, list[float]] = {side: [] for side in sides}
    for redactor in sides.values():
        timed(redactor, texts[:200])  # warm-up: caches, first-call compilation
    for _ in range(args.repeat):
        for side, redactor in sides.items():
            times[side].append(timed(redactor, texts))
    ratio = report_times("redact over the tree:", times, size)
    print(f"current/baseline time: {ratio:.2f}x")

    clean_times: dict[str, list[float]] = {side: [] for side in sides}
    clean_ratio = None
    if not args.no_clean:
        work = Path(tempfile.mkdtemp(prefix="secrets-clean-"))
        try:
            # A plain copy outside any git checkout: its files only, as `repotune ingest` reads a folder.
            tree = work / "tree"
            shutil.copytree(args.tree, tree, ignore=shutil.ignore_patterns("site-packages", "__pycache__"))
            repotune.ingest.run(IngestConfig(source=str(tree), output=work / "ingest"))
            clean_seconds(redact, work / "ingest", work)  # warm-up
            for _ in range(args.repeat):
                for side, redactor in sides.items():
                    clean_times[side].append(clean_seconds(redactor, work / "ingest", work))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        clean_ratio = report_times(
            "the clean stage (repotune.clean.run, one worker) over the tree's records:", clean_times, None
        )
        verdict = "PASS" if clean_ratio <= SLOWDOWN_TARGET else "MISS"
        print(f"current/baseline time: {clean_ratio:.2f}x ({verdict}, target <= {SLOWDOWN_TARGET:.2f}x)")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tree": str(args.tree),
                    "files": len(texts),
                    "chars": size,
                    "baseline_rev": args.baseline_rev,
                    **result,
                    "new_findings": new,
                    "redact_seconds": times,
                    "redact_ratio": ratio,
                    "clean_seconds": clean_times,
                    "clean_ratio": clean_ratio,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
