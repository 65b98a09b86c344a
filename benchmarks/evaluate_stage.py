#!/usr/bin/env python3
"""The evaluate stage as a whole: this checkout against an earlier revision, on the same inputs.

``repotune evaluate`` runs on the same trained model and clean folder (and, given them, the same
retrieval index and saved base arms) from this checkout's ``src`` and from a git worktree of
``--against`` (kept in ``.bench/``), both with this virtualenv. The two are interleaved, one run each
per round, so a busy shared machine disturbs both alike. It prints each run's wall and CPU time
(CPU time is the one such a machine disturbs least) and the ratios, and checks that both wrote the
same numbers: every metric of every arm in ``metrics.json`` and every answer in ``completions.jsonl``.
Nothing is asserted.

Usage (from the repository root), on the demo's outputs (``RUN`` is a folder under ``.demo/kfp``)::

    .venv/bin/python benchmarks/evaluate_stage.py --against REV --model RUN/train/model \\
        --data RUN/clean/dataset --index RUN/retrieval-index/index --base-scores RUN/score-base/scores \\
        --eval line_samples=30 --eval fim_samples=20 --eval context_chars=600 --eval max_blocks=20 \\
        --eval commit_samples=6 --eval forgetting_files=8
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent


def worktree(revision: str) -> Path:
    """A worktree of ``revision`` under ``.bench/``, made once."""
    commit = harness.run_checked(["git", "rev-parse", revision], cwd=ROOT, capture_output=True, text=True)
    sha = commit.stdout.strip()
    folder = ROOT / ".bench" / f"evaluate-{sha[:12]}"
    if not folder.is_dir():
        harness.run_checked(["git", "worktree", "add", "--detach", str(folder), sha], cwd=ROOT)
    return folder


def scored(output: Path) -> tuple[object, str]:
    """What an evaluation wrote that must not depend on how fast it ran: the arms' metrics, and the
    answers."""
    metrics = json.loads((output / "metrics.json").read_text())
    return metrics["models"], (output / "completions.jsonl").read_text()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--model", type=Path, required=True, help="a folder `repotune train` wrote")
    parser.add_argument("--data", type=Path, required=True, help="a folder `repotune clean` wrote")
    parser.add_argument("--index", type=Path, help="a retrieval index folder (else built from --data)")
    parser.add_argument("--base-scores", type=Path, help="saved base arms (else the base is scored too)")
    parser.add_argument("--eval", action="append", default=[], help="an evaluation setting, KEY=VALUE")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "evaluate-stage")
    args = parser.parse_args()

    sources = {"before": worktree(args.against) / "src", "now": ROOT / "src"}
    extra = [*(["--index", str(args.index)] if args.index else []),
             *(["--base-scores", str(args.base_scores)] if args.base_scores else []),
             *(option for setting in args.eval for option in ("--eval", setting))]  # fmt: skip
    rows, seconds, results = [], {name: [0.0, 0.0] for name in sources}, {}
    for round_ in range(1, args.rounds + 1):
        for name, src in sources.items():
            output = args.out / f"{name}-{round_}"
            command = [sys.executable, "-m", "repotune", "evaluate", str(args.model), str(args.data),
                       "-o", str(output), *extra]  # fmt: skip
            env = {**os.environ, "PYTHONPATH": str(src)}
            env.pop("MLFLOW_TRACKING_URI", None)  # scoring only: nothing registered
            harness.log(f"round {round_}: {name} ({src})")
            log = args.out / f"{name}-{round_}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")
            step = harness.measure(command, ROOT, env, log, timeout=3600)
            if step.rc != 0:
                harness.log(f"{name} failed (exit {step.rc}); its log: {log}")
                return 1
            found = re.findall(r"^scored in (\d+) s$", log.read_text(), flags=re.M)
            rows.append([str(round_), name, f"{step.wall_s:.1f}", f"{step.cpu_s:.1f}",
                         found[-1] if found else "-", f"{step.maxrss_mb:.0f}"])  # fmt: skip
            seconds[name][0] += step.wall_s
            seconds[name][1] += step.cpu_s
            results[name, round_] = scored(output)
    harness.print_table(["round", "source", "wall s", "CPU s", "scored in s", "peak RSS MB"], rows, left=2)
    wall = seconds["before"][0] / seconds["now"][0]
    cpu = seconds["before"][1] / seconds["now"][1]
    print(f"\nbefore / now: {cpu:.2f}x CPU time, {wall:.2f}x wall time ({args.against} / this checkout)")
    same = len({json.dumps(result, sort_keys=True) for result in results.values()}) == 1
    print(f"same metrics and answers in every run: {same}")
    harness.print_targets([f"{'PASS' if same else 'MISS'} the same numbers as before"])
    print(f"machine: {harness.machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
