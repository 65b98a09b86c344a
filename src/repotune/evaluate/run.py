"""``repotune evaluate``: score base, candidate and champion on held-out data, decide, register.

Writes ``metrics.json`` (every metric of every model, with sample counts and confidence intervals,
and the decision), ``report.md`` and ``report.html``. With a tracking URI, the candidate is
registered as a new model version and the ``champion`` alias moves only when the decision says so.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from repotune.atomic import atomic_open, write_json
from repotune.errors import RepotuneError
from repotune.evaluate import report
from repotune.evaluate.decide import Decision, Policy, should_promote
from repotune.evaluate.metrics import Metric
from repotune.evaluate.score import EvalConfig, Scorer, draw_samples, metric_to_dict
from repotune.records import read_records

SUMMARY_FILE = "train_summary.json"


def _base_model_dir(model_dir: Path) -> Path:
    from repotune.train.models import resolve_base_model

    summary_path = model_dir / SUMMARY_FILE
    if not (model_dir / "config.json").is_file():
        raise RepotuneError(f"{model_dir} holds no model (config.json); run `repotune train` into it first")
    if not summary_path.is_file():
        raise RepotuneError(
            f"{model_dir} has no {SUMMARY_FILE}: cannot tell which base model to compare with"
        )
    return resolve_base_model(json.loads(summary_path.read_text())["base_model"])


def run_evaluation(
    model_dir: Path,
    data_dir: Path,
    output: Path,
    *,
    config: EvalConfig | None = None,
    policy: Policy | None = None,
    tracking_uri: str | None = None,
    model_name: str = "repotune",
    experiment: str = "repotune",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score and decide; with ``tracking_uri`` also log the evaluation and register the candidate.

    The candidate goes into the MLflow model registry as a new version of ``model_name`` (its model
    folder is logged as the run's ``model`` artifact), tagged with its metrics and the decision; the
    ``champion`` alias moves to it only when the decision says so.
    """
    from repotune.evaluate.registry import Registry
    from repotune.tracking import evaluate_run, make_tracker, split_datasets

    config = config or EvalConfig()
    policy = policy or Policy()
    eval_path = data_dir / "eval.jsonl"
    if not eval_path.is_file():
        raise RepotuneError(f"{data_dir} has no eval.jsonl; run `repotune clean` into it first")
    eval_records = list(read_records(eval_path))
    if not eval_records:
        raise RepotuneError(f"{eval_path} is empty: nothing held out to evaluate on")
    registry = Registry(tracking_uri, model_name) if tracking_uri else None
    if registry is not None:
        registry.check()  # an unreachable registry fails the stage now, and nothing is deployed
    base_dir = _base_model_dir(model_dir)
    samples = draw_samples(eval_records, config)
    log(
        f"samples: {len(samples.lines)} lines, {len(samples.fims)} FIM spans, "
        f"{len(samples.commits)} commits, {len(eval_records)} held-out records for perplexity, "
        f"{len(samples.general)} general files"
    )
    models: dict[str, Path] = {"base": base_dir, "candidate": model_dir}
    champion = registry.champion() if registry is not None else None
    with tempfile.TemporaryDirectory(prefix="repotune-champion-") as tmp:
        if champion is not None:
            log(f"champion: {model_name} version {champion.version}")
            models["champion"] = registry.download(champion.version, Path(tmp))
        scores: dict[str, dict[str, Metric]] = {}
        pairs: dict[str, dict[str, list[tuple[float, int]]]] = {}
        for name, folder in models.items():
            log(f"scoring the {name} model ({folder})")
            scorer = Scorer(folder, config)
            scores[name] = scorer.score(samples, log)
            pairs[name] = scorer.pairs
    paired = _paired(pairs, policy.primary)
    decision = should_promote(scores["candidate"], scores["base"], scores.get("champion"), policy, paired)
    log(decision.reasons[0])
    context = {
        "data": str(data_dir),
        "candidate": str(model_dir),
        "base": str(base_dir),
        "champion": champion.version if champion is not None else None,
    }
    result: dict[str, Any] = {
        "decision": {"promote": decision.promote, "reasons": list(decision.reasons)},
        "models": {
            name: {k: metric_to_dict(m) for k, m in metrics.items()} for name, metrics in scores.items()
        },
        "context": context,
        "paired_change": {ref: list(ci) for ref, ci in paired.items()},
        "config": asdict(config),
        "policy": asdict(policy),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "metrics.json", result)
    with atomic_open(output / "report.md") as handle:
        handle.write(report.render_markdown(scores, decision, context))
    with atomic_open(output / "report.html") as handle:
        handle.write(report.render_html(scores, decision, context))
    if registry is not None:
        tracker = make_tracker(tracking_uri, experiment)
        with tracker.start_run(*evaluate_run(json.loads((model_dir / SUMMARY_FILE).read_text()))):
            tracker.log_dataset(split_datasets(data_dir)["evaluation"], "evaluation")
            for name, metrics in scores.items():
                tracker.log_metrics({f"{name}.{key}": metric.value for key, metric in metrics.items()})
            for name in ("metrics.json", "report.md", "report.html"):
                tracker.log_artifact(output / name)
            tracker.log_model(model_dir, exclude=("checkpoints", ".token-cache", ".*"))
            version = registry.register_candidate(
                tracker.run_id, "model", _tags(model_dir), metrics=scores["candidate"]
            )
        registry.record_decision(version, decision)
        if decision.promote:
            registry.promote(version, decision)
            log(f"registered {model_name} version {version} and made it the champion")
        else:
            log(f"registered {model_name} version {version}; the champion stays")
        result["registered_version"] = version
        write_json(output / "metrics.json", result)
    return result


def _paired(
    pairs: dict[str, dict[str, list[tuple[float, int]]]], metric: str
) -> dict[str, tuple[float, float]]:
    """Paired-bootstrap CIs of the candidate's relative change in ``metric`` against each other model.

    Only where both models scored the very same blocks (same count and token counts: same tokenizer).
    """
    from repotune.evaluate.metrics import paired_relative_change_ci

    candidate = pairs["candidate"].get(metric)
    result: dict[str, tuple[float, float]] = {}
    for reference in ("base", "champion"):
        other = pairs.get(reference, {}).get(metric)
        if candidate and other and [t for _, t in candidate] == [t for _, t in other]:
            result[reference] = paired_relative_change_ci(candidate, other)
    return result


def _tags(model_dir: Path) -> dict[str, str]:
    from repotune.evaluate import registry as reg

    summary = json.loads((model_dir / SUMMARY_FILE).read_text())
    data = summary.get("data", {})
    tags = {"base_model": str(summary.get("base_model")), "method": str(summary.get("method"))}
    if data.get("dataset.source"):
        tags[reg.SOURCE_TAG] = str(data["dataset.source"])
    if data.get("dataset.commit"):
        tags[reg.COMMIT_TAG] = str(data["dataset.commit"])
    recipe = json.dumps(summary.get("recipe"), sort_keys=True).encode()
    tags[reg.RECIPE_HASH_TAG] = hashlib.sha256(recipe).hexdigest()[:16]
    if summary.get("dataset_hash"):
        tags[reg.DATASET_HASH_TAG] = str(summary["dataset_hash"])
    return tags


def decision_of(result: dict[str, Any]) -> Decision:
    return Decision(promote=result["decision"]["promote"], reasons=tuple(result["decision"]["reasons"]))
