"""Compile the pipeline to KFP IR YAML, and start and follow runs on a KFP cluster through the kfp SDK."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError
from repotune.pipelines.pipeline import DEFAULT_RECIPE, build_pipeline

COMPILED = {
    # committed IR YAML under pipelines/ (CI compiles afresh and fails on any difference)
    "repotune-cpu.yaml": "smollm2-135m-cpu",
    "repotune-gpu.yaml": "qwen2.5-coder-1.5b-gpu",
}
KFP_TOKEN_ENV = "KFP_TOKEN"


def compile_pipeline(output: Path, recipe: str = DEFAULT_RECIPE) -> Path:
    """Write the pipeline for ``recipe`` as KFP IR YAML to ``output`` (for the KFP UI or ``submit``)."""
    from kfp import compiler

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(recipe), str(output))
    return output


def _client(host: str):
    import kfp

    # A bearer token for clusters behind an auth proxy (e.g. Kubeflow's Dex/oauth2-proxy); never a flag,
    # so it stays out of shell history.
    return kfp.Client(host=host, existing_token=os.environ.get(KFP_TOKEN_ENV) or None)


def submit_run(
    host: str,
    arguments: dict[str, Any],
    run_name: str,
    *,
    recipe: str = DEFAULT_RECIPE,
    experiment: str = "repotune",
    namespace: str | None = None,
) -> str:
    """Start a run of the pipeline for ``recipe`` on the KFP at ``host``; returns the KFP run id."""
    if "source" not in arguments:
        raise RepotuneError("a run needs a source (a git URL or github:OWNER/REPO)")
    client = _client(host)
    try:
        result = client.create_run_from_pipeline_func(
            build_pipeline(recipe),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            enable_caching=True,
        )
    except Exception as exc:  # the SDK raises urllib3/ApiException types; the message is what helps
        raise RepotuneError(f"submitting to {host} failed: {str(exc).splitlines()[0]}") from None
    return result.run_id


def run_state(host: str, run_id: str) -> dict[str, Any]:
    """The run's state on the cluster (``SUCCEEDED``, ``RUNNING``, ``FAILED``...) and its task states."""
    run = _client(host).get_run(run_id)
    tasks = {}
    details = getattr(run, "run_details", None)
    for task in getattr(details, "task_details", None) or []:
        tasks[task.display_name] = str(task.state)
    return {"state": str(run.state), "error": getattr(run.error, "message", None), "tasks": tasks}
