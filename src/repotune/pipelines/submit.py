"""Compile the pipeline to KFP IR YAML, and start and follow runs on a KFP cluster through the kfp SDK.

A run is started under the ``repotune-pipeline-runner`` ServiceAccount (:data:`SERVICE_ACCOUNT`, made
by ``manifests/pipeline-namespace``), whose Roles grant what the steps do and nothing more, and only
on a KFP backend new enough for what the compiled pipeline's platform spec uses
(:data:`PLATFORM_FIELDS_SINCE`): an older backend fails every step in its driver
(kubeflow/pipelines#11935, #12495), so :func:`submit_run` refuses before anything is created.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from repotune import images as images_module
from repotune.errors import RepotuneError
from repotune.pipelines.config import SubmitConfig
from repotune.pipelines.credentials import SERVICE_ACCOUNT
from repotune.pipelines.pipeline import DEFAULT_RECIPE, build_pipeline

COMPILED = {
    # committed IR YAML under pipelines/ (CI compiles afresh and fails on any difference)
    "repotune-cpu.yaml": "smollm2-135m-cpu",
    "repotune-gpu.yaml": "qwen2.5-coder-1.5b-gpu",
}
KFP_TOKEN_ENV = "KFP_TOKEN"

PLATFORM_FIELDS_SINCE: dict[str, str] = {
    # Kubernetes platform-spec fields (kfp-kubernetes) -> the first KFP backend release known to accept
    # them. The backend's driver parses this spec strictly and fails the step on any field it does not
    # know. `optional` on secretAsEnv is in the kubernetes_platform proto from 2.15.0 on (it is not in
    # 2.14.3's), and kfp-kubernetes >= 2.15 writes it for every use_secret_as_env; the other fields are
    # in 2.14.3's proto (secretNameParameter is not in the 2.2/2.3 of Kubeflow 1.9.x, #11935).
    "secretAsEnv": "2.14.3",
    "secretAsEnv.keyToEnv": "2.14.3",
    "secretAsEnv.secretName": "2.14.3",
    "secretAsEnv.secretNameParameter": "2.14.3",
    "secretAsEnv.optional": "2.15.0",
    # kfp-kubernetes' add_toleration (2023): in the proto well before 2.14.3
    "tolerations": "2.14.3",
    "tolerations.key": "2.14.3",
    "tolerations.operator": "2.14.3",
    "tolerations.effect": "2.14.3",
}
MIN_KFP_BACKEND = max(PLATFORM_FIELDS_SINCE.values(), key=Version)
"""The oldest KFP backend the committed pipelines run on (README states it)."""


def compile_pipeline(
    output: Path, recipe: str = DEFAULT_RECIPE, *, images: images_module.Images | None = None
) -> Path:
    """Write the pipeline for ``recipe`` as KFP IR YAML to ``output`` (for the KFP UI or ``submit``),
    with ``images`` (see :func:`repotune.images.for_run`; None: the environment's or the default)."""
    from kfp import compiler

    output.parent.mkdir(parents=True, exist_ok=True)
    with images_module.use(images or images_module.for_run()):
        compiler.Compiler().compile(build_pipeline(recipe), str(output))
    return output


def platform_fields(package: Mapping[str, Any] | list[Mapping[str, Any]]) -> set[str]:
    """The Kubernetes platform-spec fields a compiled pipeline uses, as dotted paths below each
    executor's config (``secretAsEnv.optional``); ``package`` is the YAML's documents."""
    documents = package if isinstance(package, list) else [package]
    found: set[str] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, path)
        elif isinstance(node, dict) and path.count(".") < 1:
            for key, value in node.items():
                found.add(f"{path}.{key}" if path else key)
                walk(value, f"{path}.{key}" if path else key)

    for document in documents:
        kubernetes = (document.get("platforms") or {}).get("kubernetes") or {}
        for config in ((kubernetes.get("deploymentSpec") or {}).get("executors") or {}).values():
            walk(config, "")
    return found


def minimum_backend(fields: set[str]) -> Version:
    """The oldest KFP backend that accepts every field in ``fields``; fields not in
    :data:`PLATFORM_FIELDS_SINCE` are refused, since nothing says which backend knows them."""
    unknown = sorted(fields - PLATFORM_FIELDS_SINCE.keys())
    if unknown:
        raise RepotuneError(
            f"the compiled pipeline uses platform-spec field(s) {', '.join(unknown)} with no known minimum "
            "KFP backend: add them to PLATFORM_FIELDS_SINCE in repotune/pipelines/submit.py"
        )
    return max((Version(PLATFORM_FIELDS_SINCE[field]) for field in fields), default=Version("2.0.0"))


def _client(host: str):
    import kfp

    # A bearer token for clusters behind an auth proxy (e.g. Kubeflow's Dex/oauth2-proxy); never a flag,
    # so it stays out of shell history.
    try:
        with warnings.catch_warnings():
            # a notice on every construction that the client needs KFP 2.0.0-beta.2 or later; the
            # backend's version is checked against what the pipeline needs instead (check_backend)
            warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline")
            return kfp.Client(host=host, existing_token=os.environ.get(KFP_TOKEN_ENV) or None)
    except Exception as exc:  # the SDK retries healthz, then raises TimeoutError/ApiException
        from repotune.tracking import short_reason

        raise RepotuneError(f"cannot reach the KFP API at {host}: {short_reason(exc)}") from None


def backend_version(client: Any, host: str) -> str:
    """The KFP backend's release as its healthz endpoint reports it (``tag_name``, e.g. ``2.15.0``).

    ``kfp.Client.get_kfp_healthz()`` parses the answer into a model that has no ``tag_name``, so the
    raw answer is read through the same generated API (with the client's host, token and TLS)."""
    try:
        raw = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
        body = json.loads(raw.data or b"{}")
    except Exception as exc:
        raise RepotuneError(f"reading the KFP version from {host}: {str(exc).splitlines()[0]}") from None
    return str(body.get("tag_name") or "unknown")


def check_backend(found: str, needed: Version, host: str) -> None:
    """Refuse, in one line naming both versions, a backend older than ``needed`` or one that does not
    say its version (a build without ``TAG_NAME``)."""
    try:
        version = Version(found.removeprefix("v"))
    except InvalidVersion:
        raise RepotuneError(
            f"the KFP backend at {host} does not report its version (healthz tag_name {found!r}); this "
            f"pipeline needs KFP {needed} or later: pass --skip-kfp-version-check if yours is"
        ) from None
    if version < needed:
        raise RepotuneError(
            f"the KFP backend at {host} is {found}; this pipeline needs KFP {needed} or later (older "
            "drivers reject its platform spec, kubeflow/pipelines#12495): upgrade KFP, or pass "
            "--skip-kfp-version-check if yours carries the fix"
        )


def submit_run(
    host: str,
    arguments: dict[str, Any],
    run_name: str,
    *,
    recipe: str = DEFAULT_RECIPE,
    experiment: str = "repotune",
    namespace: str | None = None,
    service_account: str | None = SERVICE_ACCOUNT,
    check_version: bool = True,
    images: images_module.Images | None = None,
) -> str:
    """Start a run of the pipeline for ``recipe`` on the KFP at ``host``; returns the KFP run id.

    ``namespace``: the Kubeflow profile namespace the run belongs to (multi-user KFP; None for
    standalone). ``service_account``: the account every step runs as (None: KFP's default,
    ``pipeline-runner`` or ``default-editor``). ``check_version``: refuse a backend older than the
    compiled pipeline needs. ``images``: see :func:`repotune.images.for_run`.
    """
    if "source" not in arguments:
        raise RepotuneError("a run needs a source (a git URL or github:OWNER/REPO)")
    client = _client(host)
    with _compiled(recipe, images) as (package, documents):
        if check_version:
            check_backend(backend_version(client, host), minimum_backend(platform_fields(documents)), host)
        try:
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                enable_caching=True,
                service_account=service_account or None,
            )
        except Exception as exc:  # the SDK raises urllib3/ApiException types; the message is what helps
            raise RepotuneError(f"submitting to {host} failed: {str(exc).splitlines()[0]}") from None
    return result.run_id


def submit(config: SubmitConfig) -> tuple[str, str]:
    """``repotune submit``: the run of ``config`` started on its KFP; returns (run id, run name)."""
    from repotune.config import from_struct
    from repotune.evaluate import settings_from
    from repotune.train import resolve_recipe

    # a bad setting fails here, not in the cluster's train or evaluate step after the data steps
    resolve_recipe(config.recipe, from_struct(config.training))
    settings_from(dict(config.evaluation), "--eval")
    name = config.name()
    run_id = submit_run(
        config.host,
        config.arguments(),
        name,
        recipe=config.recipe,
        experiment=config.experiment,
        namespace=config.kfp_namespace,
        service_account=config.service_account or None,
        check_version=not config.skip_version_check,
        images=config.images.resolve(),
    )
    return run_id, name


@contextlib.contextmanager
def _compiled(
    recipe: str, images: images_module.Images | None
) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """The pipeline for ``recipe`` compiled into a temporary file: (its path, its YAML documents)."""
    with tempfile.TemporaryDirectory(prefix="repotune-submit-") as tmp:
        path = compile_pipeline(Path(tmp) / "pipeline.yaml", recipe, images=images)
        yield path, [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def run_state(host: str, run_id: str) -> dict[str, Any]:
    """The run's state on the cluster (``SUCCEEDED``, ``RUNNING``, ``FAILED``...) and its task states."""
    run = _client(host).get_run(run_id)
    tasks = {}
    details = getattr(run, "run_details", None)
    for task in getattr(details, "task_details", None) or []:
        tasks[task.display_name] = str(task.state)
    return {"state": str(run.state), "error": getattr(run.error, "message", None), "tasks": tasks}
