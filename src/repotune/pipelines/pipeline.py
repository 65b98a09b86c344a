"""The pipeline: resolve -> ingest -> clean -> train -> evaluate -> deploy (only when evaluate promotes).

The recipe is bound when the pipeline is built: it decides the train step's image, CPU, memory and
accelerators, which Kubernetes needs before the run starts. Its values become the defaults of the few
typed parameters (base model, learning rate, LoRA rank, epochs) that a run may change, and anything
else can be set through the ``training`` parameter (dotted recipe keys, ``{"max_steps": 40}``).
Compile one pipeline per recipe: ``repotune compile --recipe configs/qwen2.5-coder-1.5b-gpu.yaml``.

(No ``from __future__ import annotations``: KFP reads the pipeline's annotations as types.)
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Model

from repotune import images
from repotune.components import steps
from repotune.train import DEFAULT_RECIPE, Recipe, resolve_recipe

PIPELINE_NAME = "repotune"

# Kubernetes Secrets the steps read credentials from (manifests/ ships templates with these names).
# They are optional: a cluster without GitHub issues or MLflow auth simply leaves them out.
S3_SECRET = "repotune-s3"
S3_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION")}
MLFLOW_SECRET = "repotune-mlflow"
MLFLOW_KEYS = {k: k for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
GITHUB_SECRET = "repotune-github"
GITHUB_KEYS = {"GITHUB_TOKEN": "GITHUB_TOKEN"}

# steps that talk to the network (git remotes, GitHub, S3, MLflow, the Kubernetes API) retry
RETRIES = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


class PipelineOutputs(NamedTuple):
    model: Model
    evaluation: Artifact
    promoted: bool


def _component(func, image: str):
    return dsl.component(func, base_image=image, install_kfp_package=False)


def _secrets(task: dsl.PipelineTask, *secrets: tuple[str, dict[str, str]]) -> dsl.PipelineTask:
    for name, keys in secrets:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=True)
    return task


def _train_resources(task: dsl.PipelineTask, recipe: Recipe) -> None:
    resources = recipe.resources
    task.set_cpu_request(resources.cpu).set_cpu_limit(resources.cpu)
    task.set_memory_request(resources.memory).set_memory_limit(resources.memory)
    if resources.gpus_per_node:
        task.set_accelerator_type(resources.gpu_resource).set_accelerator_limit(resources.gpus_per_node)


def build_pipeline(recipe_spec: str = DEFAULT_RECIPE, *, retries: bool = True):
    """The pipeline function for a recipe (a shipped name, a .yaml path or YAML text).

    ``retries=False`` for kfp.local, which honours retry policies: on one machine a failure is not a
    flaky network, and waiting minutes to repeat it helps nobody.
    """
    retry = RETRIES if retries else {"num_retries": 0}
    recipe, recipe_text = resolve_recipe(recipe_spec)
    cpu = images.cpu_image()
    gpu_image = images.cuda_image() if recipe.resources.gpus_per_node else cpu
    # Above one node the train step only launches and follows a PyTorchJob: it needs no accelerator.
    launcher = recipe.resources.nodes > 1
    train_image = cpu if launcher else gpu_image
    resolve_op = _component(steps.resolve_source, cpu)
    ingest_op = _component(steps.ingest, cpu)
    clean_op = _component(steps.clean, cpu)
    train_op = _component(steps.train, train_image)
    evaluate_op = _component(steps.evaluate, gpu_image)
    deploy_op = _component(steps.deploy, cpu)
    s3, mlflow, github = (S3_SECRET, S3_KEYS), (MLFLOW_SECRET, MLFLOW_KEYS), (GITHUB_SECRET, GITHUB_KEYS)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a language model on one repository's code, docs, issues and history, "
        "evaluate it against the base and the champion, and deploy it as a KServe InferenceService.",
    )
    def repotune(
        source: str,
        ref: str = "",
        include: str = "",
        max_commits: int = 1000,
        base_model: str = recipe.base_model,
        learning_rate: float = recipe.learning_rate,
        lora_rank: int = recipe.lora.rank,
        epochs: float = recipe.epochs,
        training: dict = {},  # noqa: B006 (KFP takes literal defaults; never mutated)
        evaluation: dict = {},  # noqa: B006
        model_name: str = "repotune",
        deploy_name: str = "repotune",
        namespace: str = "repotune",
        runtime: str = "huggingface",
        deploy_apply: bool = True,
        artifacts_root: str = "",
    ) -> PipelineOutputs:
        """Args:
        source: a git URL, ``github:OWNER/REPO``, or (on this machine) a folder or archive path.
        ref: branch, tag or commit of a git URL; empty for the default branch.
        include: record kinds, comma-separated (code,docs,commits,issues); empty for all.
        max_commits: newest commits to read; 0 for the whole history.
        training: more recipe settings by dotted key, e.g. {"max_steps": 40, "data.seq_len": 512}.
        evaluation: evaluation settings, e.g. {"line_samples": 30, "max_blocks": 32}.
        runtime: "huggingface" (KServe's vLLM runtime, GPUs) or "repotune" (this project's predictor).
        deploy_apply: apply the InferenceService; false only renders it into the manifest artifact.
        artifacts_root: s3:// prefix that also receives each stage's outputs; empty for none.
        """
        resolved = _secrets(resolve_op(source=source, ref=ref), github)
        resolved.set_display_name("resolve-source").set_caching_options(False).set_retry(**retry)
        ingested = ingest_op(
            source=source,
            revision=resolved.output,  # a git URL is checked out at exactly this commit
            include=include,
            max_commits=max_commits,
            artifacts_root=artifacts_root,
        )
        _secrets(ingested, github, s3).set_display_name("ingest").set_retry(**retry)
        cleaned = clean_op(records=ingested.outputs["records"], artifacts_root=artifacts_root)
        _secrets(cleaned, s3).set_display_name("clean")
        trained = train_op(
            dataset=cleaned.outputs["dataset"],
            recipe=recipe_text,
            base_model=base_model,
            learning_rate=learning_rate,
            lora_rank=lora_rank,
            epochs=epochs,
            overrides=training,
            artifacts_root=artifacts_root,
        )
        _secrets(trained, s3, mlflow).set_display_name("train")
        if not launcher:
            _train_resources(trained, recipe)
        evaluated = evaluate_op(
            model=trained.outputs["model"],
            dataset=cleaned.outputs["dataset"],
            model_name=model_name,
            settings=evaluation,
            artifacts_root=artifacts_root,
        )
        _secrets(evaluated, s3, mlflow).set_display_name("evaluate").set_retry(**retry)
        _train_resources(evaluated, recipe)
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
            )
            _secrets(deployed, s3, mlflow).set_display_name("deploy").set_retry(**retry)
            deployed.set_caching_options(False)  # the cluster, not the inputs, decides what is live
        return PipelineOutputs(
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            promoted=evaluated.outputs["Output"],
        )

    return repotune
