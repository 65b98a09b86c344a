"""The pipeline's stages as plain functions over folders: what each KFP component body calls.

A component (``repotune.components.stages``) only turns artifacts into paths and back; everything a
stage decides (which ref to check out, which metrics to show in the KFP UI, where outputs are
published) is here, importable and tested without KFP.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from repotune.atomic import write_json
from repotune.errors import RepotuneError

TRACKING_ENV = "MLFLOW_TRACKING_URI"


def train_settings(recipe_text: str, settings: dict[str, Any]) -> tuple[Any, str]:
    """The recipe the train step runs (YAML text plus dotted overrides) and its short hash.

    The hash names the model's object-store prefix: the same data, recipe and settings give the same
    prefix, so a cached step and its published copy agree.
    """
    from repotune.config import from_struct
    from repotune.train.recipe import resolve_recipe

    settings = from_struct(settings)
    recipe, text = resolve_recipe(recipe_text, settings)
    key = hashlib.sha256((text + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:12]
    return recipe, key


def train(
    data_dir: Path,
    output: Path,
    recipe_text: str,
    settings: dict[str, Any],
    metrics: Path,
    *,
    data_uri: str | None = None,
    output_uri: str | None = None,
    checkpoints_under: str | None = None,
) -> dict:
    """Fine-tune on ``data_dir`` into ``output``; returns UI metrics and model metadata.

    A recipe with ``resources.nodes`` above 1 trains as a Kubeflow PyTorchJob instead, reading the data
    from ``data_uri`` (the dataset artifact in object storage) and writing beside ``output_uri``.
    Checkpoints are deleted after a successful run: the model artifact is what later steps and the
    registry need, and a checkpoint of a large model would double what is stored per run.
    ``checkpoints_under`` (an ``s3://`` prefix) receives the checkpoints as they are saved when the
    recipe names no ``checkpoint_uri``: a retried step on a new pod resumes from there.
    """
    import dataclasses

    from repotune.train.finetune import CHECKPOINTS, SUMMARY_FILE, run_training

    recipe, key = train_settings(recipe_text, settings)
    if checkpoints_under and checkpoints_under.startswith("s3://") and recipe.checkpoint_uri is None:
        recipe = dataclasses.replace(
            recipe, checkpoint_uri=f"{checkpoints_under.rstrip('/')}/{key}/checkpoints"
        )
    if recipe.resources.nodes > 1:
        _train_on_cluster(recipe, key, data_uri, output_uri, output)
        summary = json.loads((output / SUMMARY_FILE).read_text())
    else:
        summary = run_training(data_dir, output, recipe, tracking_uri=os.environ.get(TRACKING_ENV) or None)
    shutil.rmtree(output / CHECKPOINTS, ignore_errors=True)
    values = {
        "steps": summary["steps"],
        "train_loss": summary["train_loss"],
        "eval_loss": summary["eval_loss"],
        "base_eval_loss": summary["base_eval_loss"],
        "tokens_per_second": summary["tokens_per_second"],
    }
    values = {k: float(v) for k, v in values.items() if v is not None}
    write_json(metrics, values)
    metadata = {"base_model": recipe.base_model, "method": recipe.method, "key": key}
    return {"metrics": values, "metadata": metadata}


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _train_on_cluster(
    recipe: Any, key: str, data_uri: str | None, output_uri: str | None, output: Path
) -> None:
    """Run the recipe as a PyTorchJob across ``recipe.resources.nodes`` nodes, wait, and fetch the model.

    The job writes to a sibling of this step's own artifact prefix; the model is then brought into
    ``output`` so KFP stores it as this step's artifact like a single-node run's.
    """
    from repotune import storage
    from repotune.train.cluster_job import render_pytorchjob, run_pytorchjob

    remote = ("s3://", "minio://")
    if not (data_uri and output_uri and data_uri.startswith(remote) and output_uri.startswith(remote)):
        raise RepotuneError(
            f"the recipe asks for {recipe.resources.nodes} nodes: that runs as a Kubeflow PyTorchJob, which "
            "reads its data from object storage, so run the pipeline on a cluster (`repotune submit`)"
        )
    namespace = os.environ.get("REPOTUNE_NAMESPACE") or (
        SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.is_file() else "default"
    )
    job_output = storage.minio_to_s3(output_uri).rstrip("/") + "-pytorchjob"
    name = f"repotune-train-{key}-{hashlib.sha256(data_uri.encode()).hexdigest()[:8]}"
    job = render_pytorchjob(
        recipe,
        name=name,
        namespace=namespace,
        data_uri=storage.minio_to_s3(data_uri),
        output_uri=job_output,
        tracking_uri=os.environ.get(TRACKING_ENV) or None,
    )
    budget_s = (recipe.max_minutes or 24 * 60) * 60 + 30 * 60  # the training budget plus start-up
    run_pytorchjob(job, timeout_s=budget_s, log=print)
    storage.fetch(job_output, output)


def evaluate(
    model_dir: Path, data_dir: Path, output: Path, model_name: str, settings: dict[str, Any]
) -> dict:
    """Score base, candidate and champion and decide; registers the candidate when MLflow is set."""
    from repotune.config import from_dict, from_struct
    from repotune.evaluate.run import run_evaluation
    from repotune.evaluate.score import EvalConfig

    config = from_dict(EvalConfig, from_struct(settings), "evaluation settings")
    result = run_evaluation(
        model_dir,
        data_dir,
        output,
        config=config,
        tracking_uri=os.environ.get(TRACKING_ENV) or None,
        model_name=model_name,
    )
    metrics = {
        f"{name}.{metric}": float(values["value"])
        for name, scores in result["models"].items()
        for metric, values in scores.items()
        if values.get("value") is not None
    }
    return {
        "promote": bool(result["decision"]["promote"]),
        "metrics": metrics,
        "version": result.get("registered_version"),
    }


def write_reports(evaluation: Path, metrics: Path, html: Path, markdown: Path) -> None:
    """The evaluation's files as the artifacts the KFP UI shows (metrics, HTML and Markdown)."""
    _copy_file(evaluation / "metrics.json", metrics)
    _copy_file(evaluation / "report.html", html)
    _copy_file(evaluation / "report.md", markdown)


def _no_longer_champion(registered: dict[str, str | None]) -> str | None:
    """Why this model must not be deployed although its evaluation promoted it, or None.

    A cached evaluate keeps the decision it made then: re-running the pipeline on an old commit must
    not put that commit's model back in front of users when a newer one has become champion since.
    """
    tracking_uri = os.environ.get(TRACKING_ENV)
    version, name = registered.get("version"), registered.get("model_name")
    if not (tracking_uri and version and name):
        return None
    from repotune.evaluate.registry import Registry

    champion = Registry(tracking_uri, name).champion()
    if champion is None or str(champion.version) != str(version):
        now = f"version {champion.version} is" if champion is not None else "no version is"
        return f"{name} version {version} is no longer the champion ({now}); the live service stays"
    return None


def _copy_file(source: Path, dest: Path) -> None:
    if not source.is_file():
        raise RepotuneError(f"{source} was not written")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)


def deploy(
    model_uri: str,
    recipe_text: str,
    name: str,
    namespace: str,
    runtime: str,
    apply: bool,
    registered: dict[str, str],
    manifest: Path,
) -> str:
    """Render the InferenceService for the promoted model into ``manifest`` and, with ``apply``, roll it
    out (server-side apply, wait for Ready, roll back on failure); returns the endpoint URL or "".

    KServe downloads the weights from ``storageUri``, so the model must be in S3: on a cluster it is
    (KFP's ``minio://`` artifact URI, or the published copy); on this machine only when the run
    published its outputs (``--artifacts s3://...``). Otherwise the manifest says why nothing was rendered.
    """
    import dataclasses

    from repotune import deploy as serving
    from repotune.storage import ENDPOINT_VARS

    if not model_uri.startswith(("s3://", "minio://")):
        note = (
            f"# No InferenceService rendered: the model is at {model_uri}, and KServe can only download\n"
            "# it from object storage. Run with --artifacts s3://BUCKET/PREFIX to publish it there.\n"
        )
        manifest.write_text(note)
        print(note.strip())
        return ""
    stale = _no_longer_champion(registered)
    if stale:
        manifest.write_text(f"# Nothing deployed: {stale}\n")
        print(stale)
        return ""
    from repotune.train.recipe import resolve_recipe

    recipe, _ = resolve_recipe(recipe_text)
    model = dataclasses.replace(serving.from_storage_uri(model_uri), **registered)
    endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
    settings = serving.DeploySettings(
        name=name,
        namespace=namespace,
        runtime=runtime,
        resources=recipe.resources,
        s3=serving.S3Access.from_url(endpoint),
    )
    manifest.write_text(serving.to_yaml(serving.render_manifests(model, settings)))
    print(f"rendered the InferenceService {namespace}/{name} for {model.storage_uri}")
    if not apply:
        return ""
    result = serving.deploy(model, settings, tracking_uri=os.environ.get(TRACKING_ENV) or None, log=print)
    return result.url or ""
