"""The pipeline's steps as KFP lightweight components: one thin shim per stage over the library.

Each body turns artifacts into paths, builds the stage's config, calls its one entry point
(``repotune.<stage>.run``) and records outputs and metrics (the result's ``.metrics``, and
``storage.publish`` for the copy under ``artifacts_root``); the logic lives in the stage packages and
is tested without KFP. The functions are plain here and become components in
``repotune.pipelines.pipeline``, which sets each one's image (the CUDA image for steps of a recipe
that asks for accelerators). KFP runs a body on its own, so every import is inside it.

Every body first checks that the environment holds the credentials its parameters call for
(:mod:`repotune.pipelines.credentials`: on a cluster they come from optional Secrets, so a missing one
fails the step at once, by name), and ends with one line ``STEP: ...`` that sums up what it did, which
``repotune run`` shows beside the step's state.

(No `from __future__ import annotations` here: KFP reads the annotations as types.)
KFP parameters cannot be null: an empty string or 0 stands for "not set" at this boundary only and
becomes ``None`` before it reaches the library (:mod:`repotune.pipelines.parameters`).
"""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def resolve_source(source: str, ref: str, more_sources: list, source_settings: dict) -> str:
    """Every source's revision now (a commit SHA or a fingerprint each): the cache key of every later step."""
    from repotune.pipelines import credentials
    from repotune.sources.revision import resolve_revisions
    from repotune.sources.settings import ServiceSettings, sources_of

    sources, services = sources_of(source, more_sources), ServiceSettings.from_parameters(source_settings)
    credentials.require_for_sources("resolve-source", sources, services.environment())
    revision = resolve_revisions(sources, ref or None, services)
    print(f"resolve-source: {' + '.join(sources)} is at {revision}")
    return revision


def ingest(
    source: str,
    more_sources: list,
    revision: str,
    include: str,
    max_commits: int,
    source_settings: dict,
    artifacts_root: str,
    records: Output[Dataset],
) -> None:
    from pathlib import Path

    from repotune import ingest, storage
    from repotune.pipelines import credentials
    from repotune.records import parse_include
    from repotune.sources.revision import dataset_key
    from repotune.sources.settings import ServiceSettings, sources_of
    from repotune.wording import counted

    sources, services = sources_of(source, more_sources), ServiceSettings.from_parameters(source_settings)
    credentials.require_for_sources("ingest", sources, services.environment(), artifacts_root=artifacts_root)
    settings = {
        "kinds": parse_include(include or None),
        "max_commits": max_commits if max_commits > 0 else None,
        **services.ingest_settings(),
    }
    result = ingest.run(
        ingest.IngestConfig.pinned(sources, revision, Path(records.path), **settings), log=print
    )
    # several sources: one key for all their revisions (object-store prefixes, the model's lineage)
    commit = dataset_key(revision) if len(sources) > 1 else result.commit or revision
    records.metadata.update({"source": source, "commit": commit, "records": result.records})
    records.metadata["sources"] = [entry["source"] for entry in result.sources]
    records.metadata["published"] = storage.publish(
        records.path, artifacts_root, source, dataset_key(revision), "ingest"
    )
    counts = "; ".join(f"{entry['source']}: {entry['records']}" for entry in result.sources)
    # a checkout's uncommitted changes: read as they are on disk in the file split, left out (the
    # commits alone are read) in the temporal split; said as ingest found them, not as the revision reads
    changed = ""
    if len(sources) == 1 and (count := (result.split or {}).get("uncommitted_files")):
        files = counted(count, "file")
        changed = (
            f"; uncommitted changes to {files} not read (the temporal split reads commits only)"
            if result.split.get("mode") == "temporal"
            else f" with uncommitted changes to {files}, read as on disk"
        )
    print(f"ingest: {result.records} records from {result.source} at {commit}{changed}" + (
        f" ({counts})" if len(result.sources) > 1 else ""))  # fmt: skip


def clean(
    records: Input[Dataset],
    artifacts_root: str,
    dataset: Output[Dataset],
    report: Output[Markdown],
    stats: Output[Metrics],
) -> None:
    from pathlib import Path

    from repotune import clean, storage
    from repotune.pipelines import credentials
    from repotune.wording import counted

    credentials.require("clean", credentials.needs("clean", artifacts_root=artifacts_root))
    result = clean.run(clean.CleanConfig(input=Path(records.path), output=Path(dataset.path)))
    storage.copy_to(result.output.report, report.path)
    storage.copy_to(result.output.stats, stats.path)
    for name, value in result.metrics.items():
        stats.log_metric(name, value)
    source, revision = records.metadata.get("source", ""), records.metadata.get("commit", "")
    dataset.metadata.update({**result.metrics, "source": source, "commit": revision})
    dataset.metadata["published"] = storage.publish(dataset.path, artifacts_root, source, revision, "clean")
    kept = result.train_records + result.eval_records
    secrets = counted(sum(result.redactions.values()), "secret")
    print(f"clean: kept {kept} of {result.input_records} records ({result.train_records} train, "
          f"{result.eval_records} held out), {secrets} redacted")  # fmt: skip


def base_settings(recipe: str, base_model: str, overrides: dict) -> NamedTuple(
    "BaseSettings", [("scoring", dict), ("index", dict)]
):
    """The recipe settings score-base and retrieval-index read, apart from the others: their inputs,
    and so their cache keys, stay the same when a run changes only what training does."""
    from collections import namedtuple

    from repotune.pipelines.parameters import base_settings

    chosen = base_settings(recipe, base_model, overrides)
    return namedtuple("BaseSettings", ["scoring", "index"])(chosen["scoring"], chosen["index"])


def retrieval_index(
    dataset: Input[Dataset],
    revision: str,
    recipe_settings: dict,
    artifacts_root: str,
    index: Output[Artifact],
) -> None:
    """Builds the BM25 index of the repository at the training revision (the training records), with
    embeddings beside it where the recipe names an embedding model; its inputs are the revision, its
    dataset and that model, so KFP reuses it for as long as they stay the same."""
    from pathlib import Path

    from repotune import storage
    from repotune.pipelines import credentials
    from repotune.pipelines.parameters import as_recipe
    from repotune.retrieval.shipped import build_for_dataset, index_config

    needed = credentials.needs("retrieval-index", artifacts_root=artifacts_root)
    credentials.require("retrieval-index", needed)
    config = index_config(as_recipe(recipe_settings))
    # The manifest names the revision the files are from (the records': the cut, where evaluation
    # holds out what came after it), not the head that resolve-source found.
    built = build_for_dataset(Path(dataset.path), Path(index.path), None, log=print, config=config)
    source, at = dataset.metadata.get("source", ""), built.revision or revision
    index.metadata.update({"revision": at, "chunks": len(built), "source": source})
    index.metadata["files"] = built.manifest["files"]
    index.metadata["embedding_dimension"] = built.manifest["embedding_dimension"] or 0
    index.metadata["published"] = storage.publish(index.path, artifacts_root, source, revision, "retrieval")
    print(f"retrieval-index: {len(built):,} chunks of {built.manifest['files']:,} files at {at}")


def train(
    dataset: Input[Dataset],
    index: Input[Artifact],
    recipe: str,
    base_model: str,
    learning_rate: float,
    lora_rank: int,
    max_steps: int,
    epochs: float,
    overrides: dict,
    tracking: bool,
    artifacts_root: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> None:
    from pathlib import Path

    from repotune import storage, train
    from repotune import tracking as mlflow
    from repotune.atomic import write_json
    from repotune.pipelines import credentials
    from repotune.pipelines.parameters import resume_folder, train_settings
    from repotune.retrieval.shipped import add_to_model

    credentials.require("train", credentials.needs("train", artifacts_root=artifacts_root, tracking=tracking))
    settings = train_settings(base_model=base_model, learning_rate=learning_rate, lora_rank=lora_rank,
                              max_steps=max_steps, epochs=epochs, overrides=overrides)  # fmt: skip
    source, commit = dataset.metadata.get("source", ""), dataset.metadata.get("commit", "")
    result = train.run(train.TrainConfig(
        data=Path(dataset.path), output=Path(model.path), recipe=train.resolve_recipe(recipe, settings)[0],
        tracking_uri=mlflow.uri_from_env() if tracking else None, keep_checkpoints=False, pytorchjob=True,
        checkpoints_under=storage.output_prefix(artifacts_root, source, commit) if artifacts_root else None,
        resume_under=resume_folder(source, commit),
        data_uri=dataset.metadata.get("published") or dataset.uri, output_uri=model.uri,
    ))  # fmt: skip
    write_json(Path(metrics.path), result.metrics)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)
    # The index ships with the weights: published, registered and exported with them, served from them.
    shipped = add_to_model(Path(index.path), Path(model.path)) is not None
    model.metadata.update({"base_model": result.base_model, "method": result.method, "commit": commit})
    model.metadata["retrieval_index"] = shipped
    model.metadata["key"] = result.recipe_key
    key = f"{commit}/{result.recipe_key}"
    model.metadata["published"] = storage.publish(model.path, artifacts_root, source, key, "model")
    if model.metadata["published"]:  # the checkpoints were for resuming a run that failed before this
        result.drop_published_checkpoints()
    held_out = (
        f", held-out loss {result.base_eval_loss:.3f} -> {result.eval_loss:.3f}"
        if result.base_eval_loss is not None and result.eval_loss is not None
        else ""
    )
    print(f"train: {result.steps} steps of {result.method} on {result.base_model}{held_out}")


def score_base(
    dataset: Input[Dataset],
    index: Input[Artifact],
    recipe_settings: dict,
    settings: dict,
    scores: Output[Artifact],
) -> None:
    """Scores the base model (with and without retrieval) on the held-out data: it needs no trained
    model, so it runs beside training, and its cache serves every run with the same inputs (the recipe
    settings it reads are the base model and the retrieval budget: ``base_settings``)."""
    from pathlib import Path

    from repotune.config import from_struct
    from repotune.evaluate import base_scores_summary, score_base, settings_from
    from repotune.pipelines.parameters import as_recipe

    scoring, _ = settings_from(from_struct(settings), "evaluation settings")
    chosen = as_recipe(recipe_settings)
    saved = score_base(Path(dataset.path), Path(scores.path), chosen["base_model"], scoring=scoring,
                       recipe=chosen, index=Path(index.path))  # fmt: skip
    print(f"score-base: {base_scores_summary(saved)}")


def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    index: Input[Artifact],
    base_scores: Input[Artifact],
    model_name: str,
    settings: dict,
    tracking: bool,
    artifacts_root: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    summary: Output[Markdown],
    evaluation: Output[Artifact],
) -> bool:
    """Scores base, candidate and champion; returns whether the candidate is promoted."""
    from pathlib import Path

    from repotune import evaluate, storage
    from repotune import tracking as mlflow
    from repotune.config import from_struct
    from repotune.pipelines import credentials

    needed = credentials.needs("evaluate", artifacts_root=artifacts_root, tracking=tracking)
    credentials.require("evaluate", needed)
    scoring, policy = evaluate.settings_from(from_struct(settings), "evaluation settings")
    result = evaluate.run(evaluate.EvaluateConfig(
        model=Path(model.path), data=Path(dataset.path), output=Path(evaluation.path), scoring=scoring,
        policy=policy, index=Path(index.path), tracking_uri=mlflow.uri_from_env() if tracking else None,
        model_name=model_name, base_scores=Path(base_scores.path),
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
    registered = (
        f"; registered {model_name} version {result.registered_version}" if result.registered_version else ""
    )
    print(f"evaluate: {'promote' if result.promote else 'do not promote'}{registered}")
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
    tracking: bool,
    manifest: Output[Artifact],
    min_confidence: float = 0.0,
) -> str:
    """Renders the InferenceService for the promoted model and, with ``apply``, rolls it out; the URL.
    The ``repotune`` runtime serves with retrieval, and answers a suffix, as the evaluated arm did best,
    and ends a completion before its first line less sure than ``min_confidence`` (0: never)."""
    from pathlib import Path

    from repotune import deploy, storage, train
    from repotune import tracking as mlflow
    from repotune.pipelines import credentials
    from repotune.retrieval.shipped import evaluated_setting

    credentials.require("deploy", credentials.needs("deploy", tracking=tracking))
    retrieval, fim = (evaluated_setting(Path(evaluation.path), key) for key in ("retrieval", "fim"))
    served = train.resolve_recipe(recipe)[0].serving_resources()  # one replica of the predictor
    settings = deploy.DeploySettings(
        name=name, namespace=namespace, runtime=runtime, resources=served,
        s3=deploy.S3Access.from_url(storage.endpoint_url()), retrieval=retrieval, fim=fim,
        min_confidence=min_confidence,
    )  # fmt: skip
    version, commit = evaluation.metadata.get("version") or None, model.metadata.get("commit") or None
    result = deploy.run(deploy.DeployConfig(
        model_uri=model.metadata.get("published") or model.uri, settings=settings, apply=apply,
        manifest=Path(manifest.path), registered=deploy.RegisteredVersion(model_name, version, commit),
        only_champion=True, skip_unservable=True, refuse_rolled_back=True,
        tracking_uri=mlflow.uri_from_env() if tracking else None,
    ))  # fmt: skip
    if result.skipped:
        print(f"deploy: nothing deployed: {result.skipped}")
    else:
        done = (
            f"serving at {result.url}" if result.url else "rendered (not applied)" if not apply else "applied"
        )
        model_uri = result.model.storage_uri if result.model else ""
        print(f"deploy: InferenceService {namespace}/{name} for {model_uri}: {done}")
    return result.url or ""


def export(model: Input[Model], evaluation: Input[Artifact], hub_repo: str) -> str:
    """Pushes the promoted model to the Hugging Face Hub repository ``hub_repo`` (private; ``HF_TOKEN``
    from the Secret repotune-hf); the repository's URL, or "" when nothing was pushed."""
    from pathlib import Path

    from repotune.export import export_if_promoted
    from repotune.pipelines import credentials

    credentials.require("export", credentials.needs("export", hub_repo=hub_repo))
    result = export_if_promoted(Path(model.path), Path(evaluation.path), hub_repo or None, log=print)
    if result is None:
        print("export: nothing pushed" + ("" if hub_repo else " (no hub_repo)"))
        return ""
    print(f"export: {len(result.files)} files pushed to {result.repo_url} (private)")
    return result.repo_url
