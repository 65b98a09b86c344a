"""The evaluate stage: score base, candidate and champion on held-out data, decide, register.

    result = repotune.evaluate.run(EvaluateConfig(model=Path("m"), data=Path("data"), output=Path("eval")))
    result.promote, result.decision.reasons, result.models["candidate"]["perplexity"]

Writes the files :class:`EvaluateLayout` names: every metric of every model (with sample counts and
confidence intervals) and the decision, and the reports. With a tracking URI, the candidate is
registered as a new model version and the ``champion`` alias moves only when the decision says so.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repotune.atomic import atomic_open, write_json
from repotune.errors import RepotuneError
from repotune.evaluate.decide import Decision, Policy
from repotune.evaluate.layout import EvaluateLayout
from repotune.evaluate.metrics import Metric
from repotune.evaluate.score import ScoringConfig, metric_from_dict, metric_to_dict
from repotune.train.layout import TrainLayout


@dataclass(frozen=True)
class EvaluateConfig:
    model: Path
    """Folder written by `repotune train`."""
    data: Path
    """Folder written by `repotune clean`."""
    output: Path
    """Folder for metrics.json and the reports."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """What every model is asked (the same samples for each) and how it is scored."""
    policy: Policy = field(default_factory=Policy)
    """What the candidate must show to be promoted."""
    tracking_uri: str | None = None
    """MLflow URI: register the candidate, move the champion."""
    model_name: str = "repotune"
    """Registered model name in MLflow."""
    experiment: str = "repotune"
    """MLflow experiment of the evaluation run."""


@dataclass(frozen=True)
class EvaluateResult:
    """The decision and the scores behind it (all of it is in ``output.metrics``)."""

    output: EvaluateLayout
    decision: Decision
    models: dict[str, dict[str, Metric]]
    """Every metric of every model scored, by model (``base``, ``candidate``, ``champion``) and name."""
    data: Path
    """The clean folder whose held-out records were scored."""
    registered_version: str | None
    """The candidate's version in the MLflow registry; None without tracking."""

    @property
    def promote(self) -> bool:
        return self.decision.promote

    @property
    def metrics(self) -> dict[str, float]:
        """The numbers the KFP UI shows for the step: ``MODEL.METRIC`` to value."""
        return {
            f"{name}.{metric}": float(score.value)
            for name, scores in self.models.items()
            for metric, score in scores.items()
        }

    def models_as_dicts(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``models`` as metrics.json writes it (value, n, ci_low, ci_high, higher_is_better)."""
        return {
            name: {k: metric_to_dict(m) for k, m in scores.items()} for name, scores in self.models.items()
        }

    @classmethod
    def load(cls, folder: Path) -> EvaluateResult:
        """The result an evaluation wrote into ``folder`` (a pipeline step's output, say)."""
        layout = EvaluateLayout(folder)
        saved = json.loads(layout.metrics.read_text())
        return cls(
            output=layout,
            decision=Decision(bool(saved["decision"]["promote"]), tuple(saved["decision"]["reasons"])),
            models={
                name: {key: metric_from_dict(key, values) for key, values in scores.items()}
                for name, scores in saved["models"].items()
            },
            data=Path(saved["context"]["data"]),
            registered_version=saved.get("registered_version"),
        )


def _base_model_dir(model_dir: Path) -> Path:
    from repotune.models import resolve_base_model

    model = TrainLayout(model_dir)
    if not model.config.is_file():
        raise RepotuneError(f"{model_dir} holds no model (config.json); run `repotune train` into it first")
    if not model.summary.is_file():
        raise RepotuneError(
            f"{model_dir} has no {model.summary.name}: cannot tell which base model to compare with"
        )
    return resolve_base_model(json.loads(model.summary.read_text())["base_model"])


def run(config: EvaluateConfig, *, log: Callable[[str], None] = print) -> EvaluateResult:
    """Score and decide; with ``config.tracking_uri`` also log the evaluation and register the candidate.

    The candidate goes into the MLflow model registry as a new version of ``config.model_name`` (its
    model folder is logged as the run's ``model`` artifact), tagged with its metrics and the decision;
    the ``champion`` alias moves to it only when the decision says so.
    """
    from repotune.clean.layout import CleanLayout
    from repotune.evaluate import report
    from repotune.evaluate.decide import should_promote
    from repotune.evaluate.registry import Registry
    from repotune.evaluate.score import Scorer, draw_samples
    from repotune.records import read_records
    from repotune.tracking import evaluate_run, make_tracker, split_datasets

    model_dir, data_dir, scoring, policy = config.model, config.data, config.scoring, config.policy
    eval_path = CleanLayout(data_dir).eval
    if not eval_path.is_file():
        raise RepotuneError(f"{data_dir} has no {eval_path.name}; run `repotune clean` into it first")
    eval_records = list(read_records(eval_path))
    if not eval_records:
        raise RepotuneError(f"{eval_path} is empty: nothing held out to evaluate on")
    registry = Registry(config.tracking_uri, config.model_name) if config.tracking_uri else None
    if registry is not None:
        registry.check()  # an unreachable registry fails the stage now, and nothing is deployed
    base_dir = _base_model_dir(model_dir)
    samples = draw_samples(eval_records, scoring)
    log(
        f"samples: {len(samples.lines)} lines, {len(samples.fims)} FIM spans, "
        f"{len(samples.commits)} commits, {len(eval_records)} held-out records for perplexity, "
        f"{len(samples.general)} general files"
    )
    models: dict[str, Path] = {"base": base_dir, "candidate": model_dir}
    champion = registry.champion() if registry is not None else None
    with tempfile.TemporaryDirectory(prefix="repotune-champion-") as tmp:
        if champion is not None:
            log(f"champion: {config.model_name} version {champion.version}")
            models["champion"] = registry.download(champion.version, Path(tmp))
        scores: dict[str, dict[str, Metric]] = {}
        pairs: dict[str, dict[str, list[tuple[float, int]]]] = {}
        for name, folder in models.items():
            log(f"scoring the {name} model ({folder})")
            scorer = Scorer(folder, scoring)
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
    layout = EvaluateLayout(config.output)
    result = EvaluateResult(layout, decision, scores, data_dir, registered_version=None)
    saved: dict[str, Any] = {
        "decision": {"promote": decision.promote, "reasons": list(decision.reasons)},
        "models": result.models_as_dicts(),
        "context": context,
        "paired_change": {ref: list(ci) for ref, ci in paired.items()},
        "config": asdict(scoring),
        "policy": asdict(policy),
    }
    config.output.mkdir(parents=True, exist_ok=True)
    write_json(layout.metrics, saved)
    with atomic_open(layout.report_md) as handle:
        handle.write(report.render_markdown(scores, decision, context))
    with atomic_open(layout.report_html) as handle:
        handle.write(report.render_html(scores, decision, context))
    if registry is None:
        return result
    tracker = make_tracker(config.tracking_uri, config.experiment)
    with tracker.start_run(*evaluate_run(json.loads(TrainLayout(model_dir).summary.read_text()))):
        tracker.log_dataset(split_datasets(data_dir)["evaluation"], "evaluation")
        for name, metrics in scores.items():
            tracker.log_metrics({f"{name}.{key}": metric.value for key, metric in metrics.items()})
        for path in (layout.metrics, layout.report_md, layout.report_html):
            tracker.log_artifact(path)
        scratch = tuple(path.name for path in TrainLayout(model_dir).scratch)
        tracker.log_model(model_dir, exclude=(*scratch, ".*"))
        version = registry.register_candidate(
            tracker.run_id, "model", _tags(model_dir), metrics=scores["candidate"]
        )
    registry.record_decision(version, decision)
    if decision.promote:
        registry.promote(version, decision)
        log(f"registered {config.model_name} version {version} and made it the champion")
    else:
        log(f"registered {config.model_name} version {version}; the champion stays")
    saved["registered_version"] = version
    write_json(layout.metrics, saved)
    return EvaluateResult(layout, decision, scores, data_dir, registered_version=version)


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

    summary = json.loads(TrainLayout(model_dir).summary.read_text())
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
