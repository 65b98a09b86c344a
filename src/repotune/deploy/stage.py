"""The deploy stage: serve a model as a KServe InferenceService, or say why it was not.

    result = repotune.deploy.run(DeployConfig(model_uri="models:/repotune@champion", settings=settings))
    result.url, result.objects, result.skipped

The model URI becomes a ``ModelSource`` (:mod:`repotune.deploy.uris`), the objects are rendered
(:mod:`repotune.deploy.render`, pure), written to ``manifest`` when one is given, and, with ``apply``,
rolled out (:func:`repotune.deploy.rollout.roll_out`: server-side apply, wait for Ready, roll back).
The pipeline's deploy step deploys only while its model is still the registry's champion
(:func:`no_longer_champion`, a pure function like ``should_promote``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repotune.deploy.render import DeploySettings, Runtime, render_manifests, to_yaml
from repotune.deploy.rollout import Rollout, roll_out
from repotune.deploy.uris import MODELS_SCHEME, ModelSource, resolve_model_uri
from repotune.errors import RepotuneError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

_OBJECT_STORAGE = ("s3://", "minio://", MODELS_SCHEME)


@dataclass(frozen=True)
class RegisteredVersion:
    """The registered model version a storage URI holds, as the caller knows it."""

    model_name: str
    version: str | None
    """The version number; None when the model was never registered (no tracking)."""
    commit: str | None = None
    """Commit SHA of the repository the model was trained on."""


@dataclass(frozen=True)
class DeployConfig:
    model_uri: str
    """s3://, minio:// (a KFP artifact), models:/NAME@champion or models:/NAME/N."""
    settings: DeploySettings
    """What to deploy where: name, namespace, runtime, resources, canary, S3 access."""
    apply: bool = True
    """Apply the objects, wait for Ready and roll back on failure; false only renders them."""
    manifest: Path | None = None
    """File that receives the rendered objects as YAML (or, when nothing is deployed, why not)."""
    registered: RegisteredVersion | None = None
    """The registered version `model_uri` holds, when the caller knows it (the pipeline's evaluate
    registered it); a models:/ URI is looked up instead."""
    only_champion: bool = False
    """Deploy only while `registered` is still the registry's champion: a re-run of an old commit,
    whose evaluate comes from the cache, must not roll the service back to that commit's model."""
    skip_unservable: bool = False
    """Write why into `manifest` and deploy nothing, instead of failing, when the model is not in object
    storage (a local pipeline run without --artifacts) or, with `only_champion`, no longer champion."""
    refuse_rolled_back: bool = False
    """Fail at once when an earlier deploy of this model was rolled back, rather than apply it and wait
    out the timeout again (the pipeline's deploy step, which KFP retries)."""
    tracking_uri: str | None = None
    """MLflow URI: resolve models:/ URIs, record the endpoint."""
    artifacts_s3: str | None = None
    """The MLflow server's --artifacts-destination (s3://...), to map mlflow-artifacts:/ sources."""
    timeout_s: float = 900.0
    """Seconds to wait for Ready before rolling back to the previous spec."""
    kube_host: str | None = None
    """Kubernetes API URL (e.g. from `kubectl proxy`); default: kubeconfig."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise RepotuneError("--timeout must be a positive number of seconds")


@dataclass(frozen=True)
class DeployResult:
    """What was deployed, or why nothing was."""

    model: ModelSource | None
    """The weights rendered into the InferenceService; None when nothing was rendered."""
    objects: tuple[dict[str, Any], ...]
    """The rendered objects, in the order they are applied."""
    rollout: Rollout | None
    """Where the model is served; None when the objects were only rendered."""
    skipped: str | None = None
    """Why nothing was deployed (``skip_unservable``); None when something was."""

    @property
    def url(self) -> str | None:
        return self.rollout.url if self.rollout is not None else None


def no_longer_champion(model: ModelSource, champion: str | None) -> str | None:
    """Why ``model`` must not be deployed although its evaluation promoted it, or None.

    ``champion`` is the version the registry's ``champion`` alias points at now (None: no champion).
    A cached evaluate keeps the decision it made then: re-running the pipeline on an old commit must
    not put that commit's model back in front of users when a newer one has become champion since.
    """
    if champion is not None and champion == str(model.version):
        return None
    now = f"version {champion} is" if champion is not None else "no version is"
    name = f"{model.model_name} version {model.version}"
    return f"{name} is no longer the champion ({now}); the live service stays"


def run(
    config: DeployConfig, *, api: ApiClient | None = None, log: Callable[[str], None] = print
) -> DeployResult:
    """Render and (with ``config.apply``) roll out the InferenceService for ``config.model_uri``.

    ``api`` is the Kubernetes client to use; None connects to ``config.kube_host`` (or kubeconfig).
    """
    settings = config.settings
    if config.skip_unservable and not config.model_uri.startswith(_OBJECT_STORAGE):
        where = config.model_uri
        note = (
            f"# No InferenceService rendered: the model is at {where}, and KServe can only download\n"
            "# it from object storage. Run with --artifacts s3://BUCKET/PREFIX to publish it there.\n"
        )
        return _skipped(config, note, note.strip(), log)
    model = resolve_model_uri(
        config.model_uri, tracking_uri=config.tracking_uri, artifacts_s3=config.artifacts_s3
    )
    if config.registered is not None:
        model = dataclasses.replace(model, **dataclasses.asdict(config.registered))
    if config.only_champion and config.tracking_uri and model.model_name and model.version:
        from repotune.evaluate.registry import Registry

        champion = Registry(config.tracking_uri, model.model_name).champion()
        stale = no_longer_champion(model, str(champion.version) if champion is not None else None)
        if stale is not None:
            if not config.skip_unservable:
                raise RepotuneError(stale)
            return _skipped(config, f"# Nothing deployed: {stale}\n", stale, log)
    if settings.retrieval is None and model.retrieval is not None:
        # Serve the arm that was evaluated: with retrieved context when its evaluation chose it.
        settings = dataclasses.replace(settings, retrieval=model.retrieval)
        state = "on" if model.retrieval else "off"
        log(f"retrieval {state}: the arm {model.uri} was evaluated and registered with")
    if settings.fim is None and model.fim is not None:
        settings = dataclasses.replace(settings, fim=model.fim)
        state = "on" if model.fim else "off"
        log(f"fill-in-the-middle prompts {state}: what the evaluation of {model.uri} found works better")
    if settings.retrieval and settings.runtime is Runtime.HUGGINGFACE:
        log("the evaluated arm retrieves context, which only the repotune runtime (--runtime repotune) "
            "serves; the huggingface runtime serves the model without it")  # fmt: skip
    if settings.min_confidence and settings.runtime is Runtime.HUGGINGFACE:
        log(f"min_confidence {settings.min_confidence:g} is served by the repotune runtime only "
            "(--runtime repotune); the huggingface runtime shows every completion")  # fmt: skip
    objects = tuple(render_manifests(model, settings))
    if config.manifest is not None:
        config.manifest.write_text(to_yaml(list(objects)))
        log(f"rendered the InferenceService {settings.namespace}/{settings.name} for {model.storage_uri}")
    if not config.apply:
        return DeployResult(model, objects, rollout=None)
    if api is None:
        from repotune.kube import connect

        api = connect(config.kube_host)
    rollout = roll_out(
        model, settings, timeout_s=config.timeout_s, api=api, tracking_uri=config.tracking_uri,
        refuse_rolled_back=config.refuse_rolled_back, log=log,
    )  # fmt: skip
    return DeployResult(model, objects, rollout)


def _skipped(config: DeployConfig, note: str, line: str, log: Callable[[str], None]) -> DeployResult:
    if config.manifest is not None:
        config.manifest.write_text(note)
    log(line)
    return DeployResult(model=None, objects=(), rollout=None, skipped=line)
