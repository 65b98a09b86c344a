"""The pipeline's steps as KFP lightweight components: one thin shim per stage over the library.

Each body turns artifacts into paths, builds the stage's config, calls its one entry point
(``repotune.<stage>.run``) and records outputs and metrics (the result's ``.metrics``, and
``storage.publish`` for the copy under ``artifacts_root``); the logic lives in the stage packages and
is tested without KFP. The functions are plain here and become components in
``repotune.pipelines.pipeline``, which sets each one's image (the CUDA image for steps of a recipe
that asks for accelerators). KFP runs a body on its own, so every import is inside it.

(No `from __future__ import annotations` here: KFP reads the annotations as types.)
KFP parameters cannot be null: an empty string stands for "not set" at this boundary only and becomes
``None`` before it reaches the library.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def resolve_source(source: str, ref: str) -> str:
    """The source's revision now (a commit SHA or a fingerprint): the cache key of every later step."""
    from repotune.sources.revision import resolve_revision

    return resolve_revision(source, ref or None)


def ingest(
    source: str,
    revision: str,
    include: str,
    max_commits: int,
    artifacts_root: str,
    records: Output[Dataset],
) -> None:
    from pathlib import Path

    from repotune import ingest, storage
    from repotune.records import parse_include

    settings = {
        "kinds": parse_include(include or None),
        "max_commits": max_commits if max_commits > 0 else None,
    }
    result = ingest.run(
        ingest.IngestConfig.pinned(source, revision, Path(records.path), **settings), log=print
    )
    commit = result.commit or revision
    print(f"ingest: {result.records} records from {result.source} at {commit}")
    records.metadata.update({"source": source, "commit": commit, "records": result.records})
    records.metadata["published"] = storage.publish(records.path, artifacts_root, source, revision, "ingest")


def clean(
    records: Input[Dataset],
    artifacts_root: str,
    dataset: Output[Dataset],
    report: Output[Markdown],
    stats: Output[Metrics],
) -> None:
    from pathlib import Path

    from repotune import clean, storage

    result = clean.run(clean.CleanConfig(input=Path(records.path), output=Path(dataset.path)))
    storage.copy_to(result.output.report, report.path)
    storage.copy_to(result.output.stats, stats.path)
    print("clean: " + ", ".join(f"{k} {v}" for k, v in result.metrics.items()))
    for name, value in result.metrics.items():
        stats.log_metric(name, value)
    source, revision = records.metadata.get("source", ""), records.metadata.get("commit", "")
    dataset.metadata.update({**result.metrics, "source": source, "commit": revision})
    dataset.metadata["published"] = storage.publish(dataset.path, artifacts_root, source, revision, "clean")


def train(
    dataset: Input[Dataset],
    recipe: str,
    base_model: str,
    learning_rate: float,
    lora_rank: int,
    epochs: float,
    overrides: dict,
    artifacts_root: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    from pathlib import Path

    from repotune import storage, tracking, train
    from repotune.atomic import write_json
    from repotune.config import from_struct

    settings = {"base_model": base_model, "learning_rate": learning_rate, "lora.rank": lora_rank}
    settings = from_struct({**settings, "epochs": epochs, **overrides})
    source, commit = dataset.metadata.get("source", ""), dataset.metadata.get("commit", "")
    result = train.run(train.TrainConfig(
        data=Path(dataset.path), output=Path(model.path), recipe=train.resolve_recipe(recipe, settings)[0],
        tracking_uri=tracking.uri_from_env(), keep_checkpoints=False, pytorchjob=True,
        checkpoints_under=storage.output_prefix(artifacts_root, source, commit) if artifacts_root else None,
        data_uri=dataset.uri, output_uri=model.uri,
    ))  # fmt: skip
    write_json(Path(metrics.path), result.metrics)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    model.metadata.update({"base_model": result.base_model, "method": result.method, "commit": commit})
    model.metadata["key"] = result.recipe_key
    key = f"{commit}/{result.recipe_key}"
    model.metadata["published"] = storage.publish(model.path, artifacts_root, source, key, "model")


def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    model_name: str,
    settings: dict,
    artifacts_root: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
) -> bool:
    """Scores base, candidate and champion; returns whether the candidate is promoted."""
    from pathlib import Path

    from repotune import evaluate, storage, tracking
    from repotune.config import from_dict, from_struct

    scoring = from_dict(evaluate.ScoringConfig, from_struct(settings), "evaluation settings")
    result = evaluate.run(evaluate.EvaluateConfig(
        model=Path(model.path), data=Path(dataset.path), output=Path(evaluation.path), scoring=scoring,
        tracking_uri=tracking.uri_from_env(), model_name=model_name,
    ))  # fmt: skip
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    storage.copy_to(result.output.metrics, metrics.path)
    storage.copy_to(result.output.report_html, report.path)
    storage.copy_to(result.output.report_md, summary.path)
    evaluation.metadata.update({"promote": result.promote, "version": result.registered_version or ""})
    key = f"{model.metadata.get('commit', '')}/{model.metadata.get('key', '')}"
    source = dataset.metadata.get("source", "")
    evaluation.metadata["published"] = storage.publish(
        evaluation.path, artifacts_root, source, key, "evaluation"
    )
    return result.promote


def deploy(
    model: Input[Model],
    evaluation: Input[Artifact],
    recipe: str,
    model_name: str,
    name: str,
    namespace: str,
    runtime: str,
    apply: bool,
    manifest: Output[Artifact],
) -> str:
    """Renders the InferenceService for the promoted model and, with ``apply``, rolls it out; the URL."""
    from pathlib import Path

    from repotune import deploy, storage, tracking, train

    settings = deploy.DeploySettings(
        name=name, namespace=namespace, runtime=runtime, resources=train.resolve_recipe(recipe)[0].resources,
        s3=deploy.S3Access.from_url(storage.endpoint_url()),
    )  # fmt: skip
    version, commit = evaluation.metadata.get("version") or None, model.metadata.get("commit") or None
    result = deploy.run(deploy.DeployConfig(
        model_uri=model.metadata.get("published") or model.uri, settings=settings, apply=apply,
        manifest=Path(manifest.path), registered=deploy.RegisteredVersion(model_name, version, commit),
        only_champion=True, skip_unservable=True, tracking_uri=tracking.uri_from_env(),
    ))  # fmt: skip
    return result.url or ""
