"""The pipeline: resolve -> ingest -> clean -> retrieval index -> train -> evaluate -> deploy and, with a
``hub_repo``, export to the Hugging Face Hub (both only when evaluate promotes). Beside train, the
score-base step scores the base model's arms, which evaluate then reuses (``repotune.evaluate.baseline``).

The retrieval index of the repository at the training revision is built once per revision (its inputs
are the revision and the clean dataset, so KFP's cache reuses it), evaluation scores the retrieval arms
with it, and the train step puts it into the model folder, so that it ships with the weights.

The recipe is bound when the pipeline is built: it decides the train step's image, CPU, memory and
accelerators, which Kubernetes needs before the run starts. Its values become the defaults of the few
typed parameters (base model, learning rate, LoRA rank, epochs) that a run may change, and anything
else can be set through the ``training`` parameter (dotted recipe keys, ``{"max_steps": 40}``).
Compile one pipeline per recipe: ``repotune compile --recipe configs/qwen2.5-coder-1.5b-gpu.yaml``.

(No ``from __future__ import annotations``: KFP reads the pipeline's annotations as types.)
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Model

from repotune import images
from repotune.components import steps
from repotune.pipelines.credentials import ARTIFACTS_ROOT, SERVICE_ACCOUNT, STEP_SECRETS
from repotune.train import DEFAULT_RECIPE, Recipe, resolve_recipe

PIPELINE_NAME = "repotune"

# steps that talk to the network (git remotes, GitHub, S3, MLflow, the Kubernetes API) retry
RETRIES = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


class PipelineOutputs(NamedTuple):
    model: Model
    report: HTML
    evaluation: Artifact
    promoted: bool


def _component(func, image: str):
    return dsl.component(func, base_image=image, install_kfp_package=False)


def _secrets(task: dsl.PipelineTask, step: str) -> dsl.PipelineTask:
    """Maps the Secrets ``step`` reads into its environment (repotune.pipelines.credentials). Optional:
    a run that does not need one starts without it, and the step refuses at its start when its
    parameters call for a key that is missing."""
    for secret in STEP_SECRETS[step]:  # type: ignore[index]
        kubernetes.use_secret_as_env(
            task, secret_name=secret.name, secret_key_to_env=secret.env, optional=True
        )
    return task


STEP_CPU, STEP_MEMORY = "500m", "1Gi"
"""What each step without the recipe's resources asks for (requests only, no limits): a namespace with
a ResourceQuota on requests admits only pods that state them."""


def _small(task: dsl.PipelineTask) -> dsl.PipelineTask:
    return task.set_cpu_request(STEP_CPU).set_memory_request(STEP_MEMORY)


def _train_resources(task: dsl.PipelineTask, recipe: Recipe) -> None:
    resources = recipe.resources
    task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
    task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
    if resources.gpus_per_node:
        task.set_accelerator_type(resources.gpu_resource).set_accelerator_limit(resources.gpus_per_node)
    for toleration in resources.tolerations():
        kubernetes.add_toleration(task, **toleration)


def _images_env(task: dsl.PipelineTask, chosen: images.Images) -> dsl.PipelineTask:
    """The compiled-in images as ``REPOTUNE_IMAGE`` / ``REPOTUNE_CUDA_IMAGE`` for a step that names an
    image in what it creates (the ServingRuntime, the PyTorchJob): without them it would resolve the
    project's own images inside its pod, not the registry the pipeline was compiled for."""
    for name, value in images.environment(chosen).items():
        task.set_env_variable(name, value)
    return task


def build_pipeline(recipe_spec: str = DEFAULT_RECIPE, *, retries: bool = True):
    """The pipeline function for a recipe (a shipped name, a .yaml path or YAML text).

    ``retries=False`` for kfp.local, which honours retry policies: on one machine a failure is not a
    flaky network, and waiting minutes to repeat it helps nobody.
    """
    retry = RETRIES if retries else {"num_retries": 0}
    recipe, recipe_text = resolve_recipe(recipe_spec)
    run_images = images.current()
    cpu = run_images.cpu
    gpu_image = images.cuda_image() if recipe.resources.gpus_per_node else cpu
    # Above one node the train step only launches and follows a PyTorchJob: it needs no accelerator.
    launcher = recipe.resources.nodes > 1
    train_image = cpu if launcher else gpu_image
    resolve_op = _component(steps.resolve_source, cpu)
    settings_op = _component(steps.base_settings, cpu)
    ingest_op = _component(steps.ingest, cpu)
    clean_op = _component(steps.clean, cpu)
    # Embedding every chunk is work for the recipe's accelerator (minutes of CPU for a large
    # repository); BM25 alone is not. An embedding model given only at run time (`training`) is
    # embedded on the CPU image, which has the same libraries.
    dense = bool(recipe.data.retrieval_embedding_model)
    index_op = _component(steps.retrieval_index, gpu_image if dense else cpu)
    export_op = _component(steps.export, cpu)
    train_op = _component(steps.train, train_image)
    score_base_op = _component(steps.score_base, gpu_image)
    evaluate_op = _component(steps.evaluate, gpu_image)
    deploy_op = _component(steps.deploy, cpu)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a language model on one repository's code, docs, issues and history, "
        "evaluate it against the base and the champion, and deploy it as a KServe InferenceService. "
        f"Run it as the service account {SERVICE_ACCOUNT} (the Roles of manifests/pipeline-namespace).",
    )
    def repotune(
        source: str,
        more_sources: list = [],  # noqa: B006 (KFP takes literal defaults; never mutated)
        source_settings: dict = {},  # noqa: B006
        ref: str = "",
        include: str = "",
        max_commits: int = 1000,
        base_model: str = recipe.base_model,
        learning_rate: float = recipe.learning_rate,
        lora_rank: int = recipe.lora.rank,
        max_steps: int = recipe.max_steps or 0,
        epochs: float = recipe.epochs,
        training: dict = {},  # noqa: B006 (KFP takes literal defaults; never mutated)
        evaluation: dict = {},  # noqa: B006
        tracking: bool = True,
        model_name: str = "repotune",
        deploy_name: str = "repotune",
        namespace: str = "repotune",
        runtime: str = "huggingface",
        deploy_apply: bool = True,
        deploy_min_confidence: float = 0.0,
        artifacts_root: str = ARTIFACTS_ROOT,
        hub_repo: str = "",
    ) -> PipelineOutputs:
        """Fine-tune, evaluate and deploy a model of one repository (the KFP UI shows these per parameter).

        Args:
            source: Git URL, github:OWNER/REPO, confluence:SPACE, jira:PROJECT, notion:ID or s3:// archive.
            more_sources: More sources for the same dataset, e.g. ["confluence:ENG", "jira:ENG"].
            source_settings: Wiki/tracker settings: confluence_comments, jira_jql, confluence_url, jira_url.
            ref: Branch, tag or commit of a git URL; empty for the remote's default branch.
            include: Record kinds, comma-separated (code,docs,commits,issues,wiki,diagrams); empty: all.
            max_commits: Newest commits to read from the history; 0 for the whole history.
            base_model: Model to fine-tune: a shipped alias, a Hugging Face id or an s3:// folder.
            learning_rate: Peak learning rate of the cosine schedule.
            lora_rank: LoRA rank r (adapter size); ignored by full fine-tuning.
            max_steps: Optimizer steps to train; 0 to train for `epochs` instead (a positive value wins).
            epochs: Passes over the training data; used only when max_steps is 0.
            training: More recipe settings by dotted key, e.g. {"data.seq_len": 512}; they win over the above.
            evaluation: Evaluation settings, e.g. {"line_samples": 30}; "policy.KEY" sets the promotion rule.
            tracking: Log to MLflow and register the model (Secret repotune-mlflow); false: no MLflow.
            model_name: Registered model name in MLflow; the champion alias moves on promotion.
            deploy_name: Name of the KServe InferenceService the promoted model is served as.
            namespace: Namespace of the InferenceService (the profile namespace on multi-user Kubeflow).
            runtime: huggingface (KServe's vLLM runtime, for GPUs) or repotune (this project's predictor).
            deploy_apply: Apply the InferenceService and wait for Ready; false only renders its manifest.
            deploy_min_confidence: repotune runtime: end completions before a less sure line (0: off).
            artifacts_root: s3:// prefix for each stage's outputs and the served model (Secret repotune-s3).
            hub_repo: Hugging Face Hub ORG/NAME to push a promoted model to, private (Secret repotune-hf).

        Returns:
            model: The fine-tuned model folder (weights, adapter, tokenizer, retrieval index, summary).
            report: The evaluation report: base against candidate (and champion), with the decision.
            evaluation: The evaluation folder: metrics.json, report.md and report.html.
            promoted: Whether the candidate was promoted to champion (and deployed).
        """
        resolved = _secrets(
            resolve_op(source=source, ref=ref, more_sources=more_sources, source_settings=source_settings),
            "resolve-source",
        )
        _small(resolved).set_display_name("resolve-source").set_caching_options(False).set_retry(**retry)
        ingested = ingest_op(
            source=source,
            more_sources=more_sources,
            revision=resolved.output,  # a git URL is checked out at exactly this commit
            include=include,
            max_commits=max_commits,
            source_settings=source_settings,
            artifacts_root=artifacts_root,
        )
        _small(_secrets(ingested, "ingest")).set_display_name("ingest").set_retry(**retry)
        cleaned = clean_op(records=ingested.outputs["records"], artifacts_root=artifacts_root)
        _small(_secrets(cleaned, "clean")).set_display_name("clean")
        # Only the settings the index and the base scores depend on reach those steps, so that a run
        # that changes what training does finds both in the cache.
        chosen = settings_op(recipe=recipe_text, base_model=base_model, overrides=training)
        _small(chosen).set_display_name("base-settings")
        indexed = index_op(
            dataset=cleaned.outputs["dataset"],
            revision=resolved.output,
            recipe_settings=chosen.outputs["index"],
            artifacts_root=artifacts_root,
        )
        _secrets(indexed, "retrieval-index").set_display_name("retrieval-index")
        if dense:
            _train_resources(indexed, recipe)
        else:
            _small(indexed)
        # The base model's arms need no trained model: on a cluster they are scored beside training, and
        # the step's cache serves every later run on the same data, index, base model and settings.
        based = score_base_op(
            dataset=cleaned.outputs["dataset"],
            index=indexed.outputs["index"],
            recipe_settings=chosen.outputs["scoring"],
            settings=evaluation,
        )
        _secrets(based, "score-base").set_display_name("score-base").set_retry(**retry)
        _train_resources(based, recipe)
        trained = train_op(
            dataset=cleaned.outputs["dataset"],
            index=indexed.outputs["index"],
            recipe=recipe_text,
            base_model=base_model,
            learning_rate=learning_rate,
            lora_rank=lora_rank,
            max_steps=max_steps,
            epochs=epochs,
            overrides=training,
            tracking=tracking,
            artifacts_root=artifacts_root,
        )
        _images_env(_secrets(trained, "train"), run_images).set_display_name("train")
        if launcher:
            _small(trained)  # it only submits and follows the PyTorchJob, whose pods get the resources
        else:
            _train_resources(trained, recipe)
        evaluated = evaluate_op(
            model=trained.outputs["model"],
            dataset=cleaned.outputs["dataset"],
            index=indexed.outputs["index"],
            base_scores=based.outputs["scores"],
            model_name=model_name,
            settings=evaluation,
            tracking=tracking,
            artifacts_root=artifacts_root,
        )
        _secrets(evaluated, "evaluate").set_display_name("evaluate").set_retry(**retry)
        _train_resources(evaluated, recipe)
        # kfp.local misreads a named output in a condition, so evaluate returns its decision as its
        # single return value ("Output")
        with dsl.If(evaluated.outputs["Output"] == True, name="promoted"):  # noqa: E712 (a KFP condition)
            deployed = deploy_op(
                model=trained.outputs["model"],
                evaluation=evaluated.outputs["evaluation"],
                recipe=recipe_text,
                model_name=model_name,
                name=deploy_name,
                namespace=namespace,
                runtime=runtime,
                apply=deploy_apply,
                tracking=tracking,
                min_confidence=deploy_min_confidence,
            )
            _images_env(deployed, run_images)
            _small(_secrets(deployed, "deploy")).set_display_name("deploy").set_retry(**retry)
            deployed.set_caching_options(False)  # the cluster, not the inputs, decides what is live
            with dsl.If(hub_repo != "", name="hub-export"):
                exported = export_op(
                    model=trained.outputs["model"],
                    evaluation=evaluated.outputs["evaluation"],
                    hub_repo=hub_repo,
                )
                _small(_secrets(exported, "export")).set_display_name("export").set_retry(**retry)
                exported.set_caching_options(False)  # the Hub, not the inputs, decides what is there
        return PipelineOutputs(
            model=trained.outputs["model"],
            report=evaluated.outputs["report"],
            evaluation=evaluated.outputs["evaluation"],
            promoted=evaluated.outputs["Output"],
        )

    return repotune
