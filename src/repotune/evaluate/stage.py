"""The evaluate stage: score the arms on held-out data, decide, register.

    result = repotune.evaluate.run(EvaluateConfig(model=Path("m"), data=Path("data"), output=Path("eval")))
    result.promote, result.arm, result.decision.reasons
    result.models["candidate_retrieval"]["line_edit_similarity"]

The arms are base, base + retrieval, candidate and candidate + retrieval, and the registered champion
at the arm it was deployed with; all answer the same samples. Retrieval searches an index of the
training records only (``train.jsonl``), or the index folder given. Writes the files
:class:`EvaluateLayout` names: every metric of every arm (with sample counts and confidence intervals),
the decision and the arm it chose, each sample's answers, and the reports. With a tracking URI, the
candidate is registered as a new model version tagged with its arm, and the ``champion`` alias moves
only when the decision says so.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from repotune.atomic import atomic_open, prepare_output, write_json
from repotune.errors import RepotuneError
from repotune.evaluate import baseline
from repotune.evaluate.arms import Arm
from repotune.evaluate.decide import PREFIX_ONLY, Decision, Policy
from repotune.evaluate.layout import EvaluateLayout
from repotune.evaluate.metrics import Metric
from repotune.evaluate.score import (
    CONFIDENCE,
    ScoringConfig,
    confidence_summary,
    context_budget,
    load_or_build_index,
    metric_from_dict,
    metric_to_dict,
    score_model,
)
from repotune.retrieval.shipped import MODEL_INDEX_DIR, model_index
from repotune.train.layout import TrainLayout


def settings_from(settings: dict[str, Any], where: str) -> tuple[ScoringConfig, Policy]:
    """The pipeline's ``evaluation`` settings (``--eval KEY=VALUE``) as scoring and promotion policy:
    ``policy.KEY`` sets a :class:`Policy` field, any other key a :class:`ScoringConfig` field."""
    from repotune.config import from_dict

    prefix = "policy."
    policy = {key.removeprefix(prefix): value for key, value in settings.items() if key.startswith(prefix)}
    scoring = {key: value for key, value in settings.items() if not key.startswith(prefix)}
    chosen = from_dict(ScoringConfig, scoring, where), from_dict(Policy, policy, f"{where}: policy")
    check_decidable(*chosen)
    return chosen


def check_decidable(scoring: ScoringConfig, policy: Policy) -> None:
    """Refuses settings under which nothing could be promoted: no samples of the task whose metric the
    policy decides on (``line_samples`` 0 with the default ``line_edit_similarity``)."""
    primary = policy.primary
    for task, count in (("line", scoring.line_samples), ("fim", scoring.fim_samples),
                        ("commit", scoring.commit_samples)):  # fmt: skip
        if primary.startswith(f"{task}_") and count == 0:
            raise RepotuneError(
                f"{task}_samples is 0, but the promotion policy decides on {primary}, which only those "
                f"samples measure, so nothing could be promoted: set {task}_samples above 0"
            )


@dataclass(frozen=True)
class EvaluateConfig:
    model: Path
    """Folder written by `repotune train`."""
    data: Path
    """Folder written by `repotune clean`."""
    output: Path
    """Folder for metrics.json, completions.jsonl and the reports."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """What every arm is asked (the same samples for each) and how it is scored."""
    policy: Policy = field(default_factory=Policy)
    """What a candidate arm must show to be promoted."""
    index: Path | None = None
    """A retrieval index folder (`RetrievalIndex.save`) of the repository at the training revision for
    the retrieval arms; unset, one is built from the clean folder's train.jsonl."""
    tracking_uri: str | None = None
    """MLflow URI: register the candidate, move the champion."""
    model_name: str = "repotune"
    """Registered model name in MLflow."""
    experiment: str = "repotune"
    """MLflow experiment of the evaluation run."""
    base_scores: Path | None = None
    """A folder the score-base step (``repotune.evaluate.baseline``) or an earlier evaluation wrote: its
    base and base + retrieval arms are used when they were scored on exactly what this evaluation would
    score (same samples, settings, base model files, index and budget); otherwise the base model is
    scored here."""

    def __post_init__(self) -> None:
        check_decidable(self.scoring, self.policy)


@dataclass(frozen=True)
class EvaluateResult:
    """The decision and the scores behind it (all of it is in ``output.metrics``)."""

    output: EvaluateLayout
    decision: Decision
    models: dict[str, dict[str, Metric]]
    """Every metric of every arm scored, by arm key (``base``, ``base_retrieval``, ``candidate``,
    ``candidate_retrieval``, ``champion`` or ``champion_retrieval``) and metric name. Model-level
    metrics (perplexity, forgetting, commit subjects) are under the model's arm without retrieval."""
    data: Path
    """The clean folder whose held-out records were scored."""
    registered_version: str | None
    """The candidate's version in the MLflow registry; None without tracking."""
    split: dict[str, Any] | None = None
    """What the model was trained on and scored on (``mode``, ``cut``, ``trained_on``, ``scored_on``),
    from the clean folder's stats.json; None when it records no split."""
    seconds: float | None = None
    """Wall time of the scoring, in seconds."""

    @property
    def promote(self) -> bool:
        return self.decision.promote

    @property
    def arm(self) -> Arm | None:
        """The candidate arm chosen (``arm.retrieval``: serve with retrieval), or the best one when
        not promoted."""
        return self.decision.arm

    @property
    def metrics(self) -> dict[str, float]:
        """The numbers the KFP UI shows for the step: ``ARM.METRIC`` to value."""
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
        decision = saved["decision"]
        return cls(
            output=layout,
            decision=Decision(
                bool(decision["promote"]),
                tuple(decision["reasons"]),
                Arm.from_key(decision["arm"]) if decision.get("arm") else None,
                Arm.from_key(decision["reference"]) if decision.get("reference") else None,
                decision.get("fim"),
            ),
            models={
                name: {key: metric_from_dict(key, values) for key, values in scores.items()}
                for name, scores in saved["models"].items()
            },
            data=Path(saved["context"]["data"]),
            registered_version=saved.get("registered_version"),
            split=saved.get("split"),
            seconds=saved.get("seconds"),
        )


def _summary(model_dir: Path) -> dict[str, Any]:
    model = TrainLayout(model_dir)
    if not model_dir.exists():
        raise RepotuneError(f"{model_dir} does not exist: give the folder `repotune train -o` wrote")
    if not model.config.is_file():
        raise RepotuneError(f"{model_dir} holds no model (config.json); run `repotune train` into it first")
    if not model.summary.is_file():
        raise RepotuneError(
            f"{model_dir} has no {model.summary.name}: cannot tell which base model to compare with"
        )
    return json.loads(model.summary.read_text())


_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _check_loadable(model_dir: Path) -> None:
    """The candidate's weights and tokenizer are there and its tokenizer loads, before any scoring (the
    base model's arms take minutes): a folder missing either fails in one line, not in a traceback
    after the base model was scored."""
    weights = [model_dir / name for name in _WEIGHTS if (model_dir / name).is_file()]
    if not weights:
        raise RepotuneError(
            f"{model_dir} has no model weights ({' or '.join(_WEIGHTS[::2])}); run `repotune train` "
            "into it again"
        )
    if weights[0].name.endswith(".index.json"):
        try:
            shards = set(json.loads(weights[0].read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RepotuneError(f"{weights[0]} is not a readable weight index") from None
        if missing := sorted(s for s in shards if not (model_dir / s).is_file()):
            raise RepotuneError(
                f"{model_dir} lacks {len(missing)} weight shard(s) its index names: {missing[0]}"
            )
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(model_dir)
    except Exception as err:  # transformers raises OSError, ValueError... for a folder it cannot read
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RepotuneError(f"{model_dir}'s tokenizer does not load: {reason}") from None


def _check_same_data(
    model_dir: Path, summary: dict[str, Any], data_dir: Path, log: Callable[[str], None]
) -> None:
    """A model is scored on held-out data of its own project: a clean folder of another repository
    (another root commit) is refused; one of the same project that is not the dataset the model was
    trained on is scored, with a note (its held-out records may be training records of the other)."""
    from repotune.clean.layout import CleanLayout
    from repotune.digest import files_digest
    from repotune.tracking import data_provenance

    trained, here = summary.get("data", {}), data_provenance(data_dir)
    theirs, ours = trained.get("dataset.root_commit"), here.get("dataset.root_commit")
    if theirs and ours and theirs != ours:
        their_source = trained.get("dataset.source", "unknown source")
        our_source = here.get("dataset.source", "unknown source")
        raise RepotuneError(
            f"{model_dir} was trained on another project ({their_source}, first commit {theirs[:12]}) than "
            f"{data_dir} holds ({our_source}, first commit {ours[:12]}): evaluate it on held-out data of "
            "its own project"
        )
    layout = CleanLayout(data_dir)
    if summary.get("dataset_hash") and summary["dataset_hash"] != files_digest(layout.train, layout.eval):
        log(
            f"note: {data_dir} is not the dataset {model_dir} was trained on (its files differ): if it "
            "was cleaned with another cut or split, some of its held-out records may have been in that "
            "training data"
        )


def retrieval_index(config: EvaluateConfig, log: Callable[[str], None], recipe: Any = None) -> Any | None:
    """The index the retrieval arms search: ``config.index``, else one built over the clean folder's
    training records (never the held-out ones), with the candidate's ``recipe``'s embedding model if
    it names one; None when there is nothing to retrieve from."""
    return load_or_build_index(config.index, config.data, log, recipe)


def _split(data: Path) -> dict[str, Any] | None:
    from repotune.clean.layout import CleanLayout

    stats = CleanLayout(data).stats
    if not stats.is_file():
        return None
    split = json.loads(stats.read_text()).get("split")
    return split if isinstance(split, dict) else None


def run(config: EvaluateConfig, *, log: Callable[[str], None] = print) -> EvaluateResult:
    """Score and decide; with ``config.tracking_uri`` also log the evaluation and register the candidate.

    The candidate goes into the MLflow model registry as a new version of ``config.model_name`` (its
    model folder is logged as the run's ``model`` artifact), tagged with the chosen arm's metrics, the
    arm and the decision; the ``champion`` alias moves to it only when the decision says so.
    """
    from repotune.clean.layout import CleanLayout
    from repotune.evaluate import report
    from repotune.evaluate.decide import should_promote
    from repotune.evaluate.registry import Registry, check_same_project, decision_tags, registered_retrieval
    from repotune.evaluate.samples import draw_samples
    from repotune.models import resolve_base_model
    from repotune.records import read_records
    from repotune.tracking import evaluate_run, make_tracker, split_datasets

    model_dir, data_dir, scoring, policy = config.model, config.data, config.scoring, config.policy
    eval_path = CleanLayout(data_dir).eval
    if not eval_path.is_file():
        raise RepotuneError(f"{data_dir} has no {eval_path.name}; run `repotune clean` into it first")
    eval_records = list(read_records(eval_path))
    if not eval_records:
        raise RepotuneError(f"{eval_path} is empty: nothing held out to evaluate on")
    out = EvaluateLayout(config.output)
    prepare_output(
        config.output,
        (out.metrics.name, out.completions.name, out.base_scores.name),
        "evaluation",
        written=(out.report_md.name, out.report_html.name),
    )
    registry = Registry(config.tracking_uri, config.model_name) if config.tracking_uri else None
    if registry is not None:
        registry.check()  # an unreachable registry fails the stage now, and nothing is deployed
    summary = _summary(model_dir)
    _check_loadable(model_dir)
    _check_same_data(model_dir, summary, data_dir, log)
    base_dir = resolve_base_model(summary["base_model"])
    started = time.monotonic()
    samples = draw_samples(eval_records, scoring)
    asked = scoring.line_samples + scoring.fim_samples
    short = (
        f" (the held-out code has {samples.eligible_lines} lines to draw from, {asked} were asked for)"
        if samples.eligible_lines < asked
        else ""
    )
    log(
        f"samples ({samples.mode} split): {len(samples.lines)} lines, {len(samples.fims)} FIM spans{short}, "
        f"{len(samples.commits)} commits, {len(samples.perplexity)} files for perplexity, "
        f"{len(samples.general)} general files"
    )
    holder = registry.holder() if registry is not None else None
    champion = holder[0] if holder is not None and holder[1] else None
    trained_on = summary.get("data", {})
    if holder is not None:
        check_same_project(
            holder[0],
            trained_on.get("dataset.source"),
            config.model_name,
            trained_on.get("dataset.root_commit"),
            promoted=holder[1],
        )
    index = retrieval_index(config, log, summary.get("recipe")) if scoring.retrieval else None
    budget = context_budget(summary, index)
    with tempfile.TemporaryDirectory(prefix="repotune-champion-") as tmp:
        # (model, folder, retrieval budget, score the retrieval arm alone)
        models: list[tuple[str, Path, int, bool]] = [
            ("base", base_dir, budget, False),
            ("candidate", model_dir, budget, False),
        ]
        if champion is not None:
            deployed_with_retrieval = registered_retrieval(champion.tags) is True
            folder = registry.download(champion.version, Path(tmp))
            log(f"champion: {config.model_name} version {champion.version}" + (
                " (deployed with retrieval)" if deployed_with_retrieval else ""))  # fmt: skip
            if deployed_with_retrieval and index is None:
                log("the champion is deployed with retrieval, but there is no index: scored without it")
            champion_budget = (
                context_budget(_summary(folder), index)
                if (folder / "train_summary.json").is_file()
                else budget
            )
            models.append(
                ("champion", folder, champion_budget, deployed_with_retrieval and index is not None)
            )
        scores: dict[str, dict[str, Metric]] = {}
        per_sample: dict[str, dict[str, list[float]]] = {}
        answers: dict[str, dict[str, list[str]]] = {}
        found: dict[str, int] = {}
        reused = None
        for name, folder, tokens, retrieval_only in models:
            contexts = None
            if name == "base":
                scored, reused = _base_arms(
                    config, summary["base_model"], base_dir, samples, index, tokens, log
                )
            else:
                log(f"scoring the {name} model ({folder})")
                scored, contexts = score_model(
                    name, folder, samples, scoring, index, tokens, retrieval_only, log
                )
            if name == "candidate" and contexts is not None:
                found = {"lines": sum(map(bool, contexts.lines)), "fims": sum(map(bool, contexts.fims))}
            for arm, result in scored.items():
                scores[arm.key], per_sample[arm.key], answers[arm.key] = (
                    result.metrics, result.per_sample, result.answers,
                )  # fmt: skip
    seconds = round(time.monotonic() - started, 1)
    decision = should_promote(scores, policy, per_sample)
    log(decision.reasons[0])
    split = _split(data_dir)
    context = {
        "data": str(data_dir),
        "candidate": str(model_dir),
        "base": str(base_dir),
        "champion": champion.version if champion is not None else None,
        "mode": samples.mode,
        "index": str(config.index) if config.index is not None else (
            f"built from {CleanLayout(data_dir).train.name}" if index is not None else None),
        "retrieval_context_tokens": budget if index is not None else None,
        "retrieval_current_file": index.config.current_file if index is not None else None,
        "samples_with_context": found or None,
        "line_repeat_penalty": scoring.line_repeat_penalty,
        "retry_line_above": scoring.retry_line_above,
        "base_arms": reused,
        "flagged": report.flagged_completions(samples.lines, per_sample, answers),
        "confidence": confidence_summary(per_sample),
        "model": {"base_model": summary.get("base_model"), "method": summary.get("method"),
                  "steps": summary.get("steps"), "source": trained_on.get("dataset.source"),
                  "commit": trained_on.get("dataset.commit")},
    }  # fmt: skip
    layout = EvaluateLayout(config.output)
    result = EvaluateResult(layout, decision, scores, data_dir, None, split, seconds)
    saved: dict[str, Any] = {
        "decision": decision.as_dict(),
        "models": result.models_as_dicts(),
        "paired": _paired(per_sample, decision),
        "split": split,
        "context": context,
        "seconds": seconds,
        "config": asdict(scoring),
        "policy": asdict(policy),
    }
    config.output.mkdir(parents=True, exist_ok=True)
    write_json(layout.metrics, saved)
    _write_completions(layout.completions, samples, answers, per_sample)
    with atomic_open(layout.report_md) as handle:
        handle.write(report.render_markdown(result, context))
    with atomic_open(layout.report_html) as handle:
        handle.write(report.render_html(result, context))
    log(f"scored in {seconds:.0f} s")
    if registry is None:
        return result
    arm = decision.arm or Arm("candidate")
    tracker = make_tracker(config.tracking_uri, config.experiment)
    # the run spans the scoring, which ran before it was opened (a registry that is down fails it
    # before any scoring; a tracking server that is down only loses its log)
    with tracker.start_run(*evaluate_run(summary), started=time.time() - seconds):
        tracker.log_dataset(split_datasets(data_dir)["evaluation"], "evaluation")
        tracker.log_params({"scoring": saved["config"], "policy": saved["policy"]})
        tracker.set_tags(decision_tags(decision))
        for name, metrics in scores.items():
            tracker.log_metrics({f"{name}.{key}": metric.value for key, metric in metrics.items()})
        for path in (layout.metrics, layout.report_md, layout.report_html):
            tracker.log_artifact(path)
        scratch = tuple(path.name for path in TrainLayout(model_dir).scratch)
        # decoding as it was scored, for MLflow's own loaders and server (``repotune.pyfunc_model``)
        if arm.retrieval and model_index(model_dir) is None:
            log(
                f"the MLflow model will answer without retrieved context: {model_dir} carries no retrieval "
                f"index ({MODEL_INDEX_DIR}/, where the pipeline's train step puts it)"
            )
        tracker.log_model(
            model_dir,
            exclude=(*scratch, ".*"),
            line_repeat_penalty=scoring.line_repeat_penalty,
            retrieval=arm.retrieval,
        )
        # The chosen arm's own scores over the model's (perplexity, forgetting): what it is deployed as.
        tagged = {**scores.get(arm.without_retrieval.key, {}), **scores.get(arm.key, {})}
        version = registry.register_candidate(tracker.run_id, "model", _tags(summary), metrics=tagged)
    registry.record_decision(version, decision)
    if decision.promote:
        registry.promote(version, decision)
        log(f"registered {config.model_name} version {version} and made it the champion ({arm.label})")
    else:
        log(f"registered {config.model_name} version {version}; the champion stays")
    saved["registered_version"] = version
    write_json(layout.metrics, saved)
    return EvaluateResult(layout, decision, scores, data_dir, version, split, seconds)


def _base_arms(
    config: EvaluateConfig,
    base_model: str,
    base_dir: Path,
    samples: Any,
    index: Any | None,
    budget: int,
    log: Callable[[str], None],
) -> tuple[dict[Arm, Any], str | None]:
    """The base model's arms, and where they came from (None: scored here). Those saved in
    ``config.base_scores`` (by the score-base step, or an earlier evaluation) are taken when they were
    scored under this evaluation's key; otherwise the base model is scored here, and the log says why.
    Either way they are saved into the output folder under that key, for the next evaluation."""
    identity = baseline.index_identity(config.index, config.data, index) if index is not None else None
    key = baseline.base_key(samples, config.scoring, base_dir, budget, identity)
    if config.base_scores is not None:
        scored, found = baseline.load(config.base_scores, key)
        if scored is not None:
            log(f"base arms: reused from {config.base_scores}, {found}")
            baseline.copy(config.base_scores, config.output)
            return scored, f"reused from `{config.base_scores}`, {found}"
        log(f"base arms: scored here, not reused: {found}")
    log(f"scoring the base model ({base_dir})")
    scored = baseline.score(
        config.output, key, base_model, base_dir, samples, config.scoring, index, budget, log
    )
    return scored, None


def _paired(per_sample: dict[str, dict[str, list[float]]], decision: Decision) -> dict[str, Any]:
    """For each candidate arm, the paired 95% interval of its difference from the reference on each
    completion metric (the intervals the decision used)."""
    from repotune.evaluate.decide import CANDIDATE_ARMS, paired_change
    from repotune.evaluate.score import PAIRED_METRICS

    reference = decision.reference
    if reference is None:
        return {}
    result: dict[str, Any] = {}
    for arm in CANDIDATE_ARMS:
        for metric in PAIRED_METRICS:
            ci = paired_change(per_sample, arm, reference, metric)
            if ci is not None:
                result.setdefault(arm.key, {})[metric] = {"reference": reference.key, "ci": list(ci)}
    return result


def _write_completions(
    path: Path,
    samples: Any,
    answers: dict[str, dict[str, list[str]]],
    per_sample: dict[str, dict[str, list[float]]],
) -> None:
    """Every sample's answers, a JSON line each; a line sample's with each arm's confidence in it."""
    with atomic_open(path) as handle:
        for task, items in (("line", samples.lines), ("fim", samples.fims), (PREFIX_ONLY, samples.fims)):
            for i, sample in enumerate(items):
                expected = sample.expected if task == "line" else sample.middle
                row = {
                    "task": task,
                    "path": sample.path,
                    "expected": expected,
                    "answers": {arm: got[task][i] for arm, got in answers.items() if task in got},
                }
                if task == "line":
                    row["confidence"] = {
                        arm: round(scores[CONFIDENCE][i], 4)
                        for arm, scores in per_sample.items()
                        if CONFIDENCE in scores
                    }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        # commit subjects, written from each diff (no file: the path is null)
        for i, (_, subject) in enumerate(samples.commits):
            row = {
                "task": "commit",
                "path": None,
                "expected": subject,
                "answers": {arm: got["commit"][i] for arm, got in answers.items() if "commit" in got},
            }
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _tags(summary: dict[str, Any]) -> dict[str, str]:
    from repotune.evaluate import registry as reg

    data = summary.get("data", {})
    tags = {"base_model": str(summary.get("base_model")), "method": str(summary.get("method"))}
    if data.get("dataset.source"):
        tags[reg.SOURCE_TAG] = str(data["dataset.source"])
    if data.get("dataset.commit"):
        tags[reg.COMMIT_TAG] = str(data["dataset.commit"])
    if data.get("dataset.root_commit"):
        tags[reg.ROOT_COMMIT_TAG] = str(data["dataset.root_commit"])
    recipe = json.dumps(summary.get("recipe"), sort_keys=True).encode()
    tags[reg.RECIPE_HASH_TAG] = hashlib.sha256(recipe).hexdigest()[:16]
    if summary.get("dataset_hash"):
        tags[reg.DATASET_HASH_TAG] = str(summary["dataset_hash"])
    return tags
