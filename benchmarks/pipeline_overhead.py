#!/usr/bin/env python3
"""Pipeline overhead: the whole pipeline under kfp.local against the stage functions called directly.

Both variants run the same stages on the same input with the same recipe and evaluation settings, and
both track to a fresh local MLflow store (the pipeline's evaluate registers the candidate, so the
direct variant does too):

* ``direct``: ``repotune.ingest.run`` -> ``clean.run`` -> ``train.run`` -> ``evaluate.run`` in this
  process, on plain folders: the cost of the work itself.
* ``pipeline``: ``repotune.pipelines.local.run_local`` with an empty step cache: the KFP components
  (one Python subprocess per step, each importing repotune, torch and transformers again), artifact
  bookkeeping, the status file, and the deploy step when evaluate promotes.

The ratio pipeline / direct is the overhead (target: under 1.10, printed as PASS/MISS, never
asserted). The fixed cost per step is a few seconds of imports, so the ratio depends on how long the
work is: the tiny recipe (seconds of training) shows the worst case, the default CPU recipe a real run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/pipeline_overhead.py                         # tiny recipe, this repository
    .venv/bin/python benchmarks/pipeline_overhead.py --recipe smollm2-135m-cpu --repeat 1
    .venv/bin/python benchmarks/pipeline_overhead.py --source PATH --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import status

REPO_ROOT = Path(__file__).resolve().parent.parent
OVERHEAD_TARGET = 1.10
EVALUATION = {"line_samples": 20, "fim_samples": 10, "max_blocks": 32}


def _direct(source: str, recipe: str, training: dict, scratch: Path) -> float:
    from repotune import clean, evaluate, ingest, tracking, train
    from repotune.pipelines.local import _environment, _inside, local_tracking_uri
    from repotune.sources.revision import resolve_revision
    from repotune.train.recipe import resolve_recipe

    scratch.mkdir(parents=True)
    started = time.perf_counter()
    # in the scratch folder, as the pipeline's steps run in theirs (MLflow's artifact root is relative)
    with _environment({"MLFLOW_TRACKING_URI": local_tracking_uri(scratch)}), _inside(scratch):
        revision = resolve_revision(source)
        ingest.run(ingest.IngestConfig.pinned(source, revision, scratch / "ingest"))
        clean.run(clean.CleanConfig(input=scratch / "ingest", output=scratch / "clean"))
        recipe_settings, _ = resolve_recipe(recipe, training)
        model = scratch / "model"
        tracking_uri = tracking.uri_from_env()
        train.run(train.TrainConfig(data=scratch / "clean", output=model, recipe=recipe_settings,
                                    tracking_uri=tracking_uri, keep_checkpoints=False))  # fmt: skip
        scoring = evaluate.ScoringConfig(**EVALUATION)
        evaluate.run(evaluate.EvaluateConfig(model=model, data=scratch / "clean", output=scratch / "eval",
                                             scoring=scoring, tracking_uri=tracking_uri))  # fmt: skip
    return time.perf_counter() - started


def _pipeline(source: str, recipe: str, training: dict, scratch: Path) -> tuple[float, dict[str, str]]:
    """Seconds the pipeline took, and the state of each stage."""
    from repotune.pipelines.local import RunConfig, run_local

    started = time.perf_counter()
    config = RunConfig(
        source,
        recipe,
        training=training,
        evaluation=EVALUATION,
        workdir=scratch / "home",
        run_dir=scratch / "run",
    )
    status = run_local(config, log=lambda _: None)
    return time.perf_counter() - started, {name: stage.state for name, stage in status.stages.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default=str(REPO_ROOT), help="Repository to run on (default: this one).")
    parser.add_argument("--recipe", default="tiny-cpu", help="Shipped recipe name or .yaml path.")
    parser.add_argument("--max-steps", type=int, default=None, help="Override the recipe's max_steps.")
    parser.add_argument("--repeat", type=int, default=2, help="Runs of each variant (median reported).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    training = {"max_steps": args.max_steps} if args.max_steps else {}

    direct, pipeline, stage_states = [], [], []
    with tempfile.TemporaryDirectory(prefix="repotune-bench-") as tmp:
        for i in range(args.repeat):
            # alternate the order so neither variant always runs on a warmer page cache
            order = ("direct", "pipeline") if i % 2 == 0 else ("pipeline", "direct")
            for variant in order:
                scratch = Path(tmp) / f"{variant}-{i}"
                if variant == "direct":
                    direct.append(_direct(args.source, args.recipe, training, scratch))
                else:
                    seconds, states = _pipeline(args.source, args.recipe, training, scratch)
                    pipeline.append(seconds)
                    stage_states.append(states)
                seconds = (direct if variant == "direct" else pipeline)[-1]
                print(f"run {i + 1} {variant}: {seconds:.1f} s", flush=True)
    d, p = statistics.median(direct), statistics.median(pipeline)
    ratio = p / d
    verdict = status(ratio, OVERHEAD_TARGET, higher_is_better=False)
    print(f"\nrecipe {args.recipe}, source {args.source}, {args.repeat} run(s) each, median")
    print(f"  direct stage calls: {d:7.1f} s")
    print(f"  kfp.local pipeline: {p:7.1f} s   stages: {stage_states[-1]}")
    print(f"  pipeline / direct:  {ratio:7.3f}x  ({(ratio - 1) * 100:+.1f}% overhead; target < "
          f"{(OVERHEAD_TARGET - 1) * 100:.0f}%: {verdict})")  # fmt: skip
    if args.json:
        result = {"recipe": args.recipe, "source": args.source, "direct_s": direct, "pipeline_s": pipeline,
                  "ratio": ratio, "target": OVERHEAD_TARGET}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
