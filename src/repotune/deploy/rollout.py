"""Apply the InferenceService, wait for it, and roll back when the new revision does not come up.

``roll_out`` reads the live InferenceService first: its spec is what serves now (the previous
champion). It then applies the new objects with server-side apply (idempotent: a retried pipeline
step changes nothing), waits for ``Ready`` on the new generation, and, when that does not come within
the timeout, re-applies the previous spec and raises ``RolledBack``, so that the pipeline step fails
visibly while the old model keeps serving.

A first deploy that fails has nothing to roll back to. Its InferenceService is left in place: its
events and pod logs say why it failed (``kubectl describe inferenceservice NAME``), it serves no
traffic that worked before, and the next deploy applies over it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from repotune import kube
from repotune.deploy.render import ANNOTATION_MODEL_URI, LABEL_MODEL_VERSION, DeploySettings, render_manifests
from repotune.deploy.uris import ModelSource, registry_client
from repotune.errors import RepotuneError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
ENDPOINT_TAG = "repotune.endpoint"
"""On the deployed model version: the InferenceService's URL (``status.url``)."""
ENDPOINT_SERVICE_TAG = "repotune.endpoint.inference_service"
"""On the deployed model version: ``NAMESPACE/NAME`` of the InferenceService."""
ENDPOINT_TIME_TAG = "repotune.endpoint.time"
"""On the deployed model version: when it became Ready, ISO 8601 in UTC."""
DEPLOY_ERROR_TAG = "repotune.deploy.error"
"""On a version whose deploy failed: why (truncated)."""
MAX_TAG_CHARS = 5000
ANNOTATION_ROLLED_BACK = "repotune.io/rolled-back-model"
"""On an InferenceService restored after a failed deploy: the storage URI that did not come up (the
next deploy of another model drops it, as server-side apply drops what its manager no longer sets)."""
# Annotations that belong to other tools and must not be re-applied as repotune's own.
_FOREIGN_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
# KServe's model status when the new revision cannot load: no point waiting out the timeout.
_FAILED_TRANSITIONS = ("BlockedByFailedLoad", "InvalidSpec")


@dataclass(frozen=True)
class Rollout:
    """Where the model is served."""

    name: str
    namespace: str
    url: str | None
    """The InferenceService's ``status.url``; None when KServe reports none."""
    revision: int
    """The InferenceService's ``metadata.generation`` that is Ready (after a rollback: the restored one)."""
    rolled_back: bool
    """True when the new revision failed and the previous spec was applied again."""


class RolledBack(RepotuneError):
    """The new revision did not become Ready; the previous spec was re-applied. ``result`` says where
    the previous model is served (``rolled_back`` True)."""

    def __init__(self, message: str, result: Rollout):
        super().__init__(message)
        self.result = result


def inference_service_failure(obj: dict[str, Any]) -> str | None:
    """Why KServe gave up on the current revision (the model failed to load, the spec is invalid), or
    None while it may still come up."""
    model_status = (obj.get("status") or {}).get("modelStatus") or {}
    transition = model_status.get("transitionStatus")
    if transition not in _FAILED_TRANSITIONS:
        return None
    info = model_status.get("lastFailureInfo") or {}
    detail = ": ".join(str(info[k]) for k in ("reason", "message") if info.get(k))
    return f"{transition}{': ' + detail if detail else ''}"


def previous_spec(live: dict[str, Any]) -> dict[str, Any]:
    """The object to apply to restore ``live``: its spec, labels and annotations, without the fields
    the server and controllers own (status, uid, resourceVersion, managedFields)."""
    meta = live["metadata"]
    restored: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"]}
    if meta.get("labels"):
        restored["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _FOREIGN_ANNOTATIONS}
    if annotations:
        restored["annotations"] = annotations
    return {
        "apiVersion": live["apiVersion"],
        "kind": live["kind"],
        "metadata": restored,
        "spec": live["spec"],
    }


def roll_out(
    model: ModelSource,
    settings: DeploySettings,
    *,
    timeout_s: float = 900.0,
    api: ApiClient | None = None,
    tracking_uri: str | None = None,
    poll_s: float = 5.0,
    refuse_rolled_back: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> Rollout:
    """Serve ``model`` as the InferenceService ``settings.name`` and wait until it is Ready.

    ``refuse_rolled_back``: refuse at once a model that an earlier deploy rolled back (the live
    object's ``ANNOTATION_ROLLED_BACK``), as a retried pipeline step must: applying it again would only
    wait out the timeout and roll back once more.

    Raises ``RolledBack`` when the new revision is not Ready within ``timeout_s`` seconds (or KServe
    reports that it cannot load) and a previous spec was restored, and a plain RepotuneError when there
    was nothing to restore. With ``tracking_uri`` and a registered version, tags that version with the
    endpoint (``repotune.endpoint``), or with the failure (``repotune.deploy.error``).
    """
    api = api if api is not None else kube.connect()
    group, version, plural = ISVC
    name, namespace = settings.name, settings.namespace
    where = f"InferenceService {namespace}/{name}"
    live = kube.get(group, version, plural, namespace, name, api=api)
    failed_before = ((live or {}).get("metadata", {}).get("annotations") or {}).get(ANNOTATION_ROLLED_BACK)
    if refuse_rolled_back and failed_before == model.storage_uri:
        raise RepotuneError(
            f"{where}: {model.uri} did not become Ready in an earlier attempt and was rolled back "
            f"({_model_of(live or {})} serves); not applied again. Fix the cause (kubectl get events -n "
            f"{namespace}), then deploy it with `repotune deploy`"
        )

    *support, isvc = render_manifests(model, settings)
    for obj in support:
        kube.server_side_apply(obj, api=api)
    applied = kube.server_side_apply(isvc, api=api)
    generation = int(applied["metadata"].get("generation", 1))
    change = "created" if live is None else f"updated to generation {generation}"
    canary = "" if settings.canary_percent is None else f", canary at {settings.canary_percent}% of traffic"
    log(f"{where}: {change} serving {model.storage_uri}{canary}; waiting up to {timeout_s:g} s for Ready")

    try:
        ready = _wait_ready(settings, generation, timeout_s, poll_s, api, log)
    except kube.WaitFailed as failure:
        message = f"{where}: {model.uri} did not become Ready ({failure})"
        _record_failure(tracking_uri, model, message, log)
        if live is None:
            raise RepotuneError(
                f"{message}. This was its first deploy, so there is nothing to roll back to; it is left in "
                f"place for inspection (kubectl describe inferenceservice {name} -n {namespace}); fix the "
                "cause and deploy again, or delete it"
            ) from failure
        restored = previous_spec(live)
        restored["metadata"].setdefault("annotations", {})[ANNOTATION_ROLLED_BACK] = model.storage_uri
        if restored["spec"] == applied["spec"]:
            raise RepotuneError(
                f"{message}. Its spec did not change with this deploy, so there is nothing to roll back to"
            ) from failure
        result = _roll_back(restored, live, settings, timeout_s, poll_s, api, log)
        raise RolledBack(f"{message}. {_describe_rollback(live, result)}", result) from failure

    revision = int(ready["metadata"]["generation"])
    result = Rollout(name, namespace, _url(ready), revision, rolled_back=False)
    log(f"{where}: Ready at {result.url or '(no URL reported)'} (generation {result.revision})")
    _record_endpoint(tracking_uri, model, result, log)
    return result


def _wait_ready(
    settings: DeploySettings,
    generation: int,
    timeout_s: float,
    poll_s: float,
    api: ApiClient,
    log: Callable[[str], None],
) -> dict[str, Any]:
    said: list[str] = []

    def progress(obj: dict[str, Any]) -> None:
        # One line per change of state, not one per poll.
        if not kube.is_observed(obj, generation):
            line = f"waiting for KServe to pick up generation {generation}"
        else:
            line = f"Ready={_ready_status(obj)} ({kube.status_message(obj, 'Ready')})"
        if not said or said[-1] != line:
            said.append(line)
            log(f"InferenceService {settings.namespace}/{settings.name}: {line}")

    group, version, plural = ISVC
    return kube.wait_for_condition(
        group,
        version,
        plural,
        settings.namespace,
        settings.name,
        "Ready",
        timeout_s=timeout_s,
        on_failure_condition=None,
        failed=inference_service_failure,
        min_generation=generation,
        poll_s=poll_s,
        progress=progress,
        api=api,
    )


def _roll_back(
    restored: dict[str, Any],
    live: dict[str, Any],
    settings: DeploySettings,
    timeout_s: float,
    poll_s: float,
    api: ApiClient,
    log: Callable[[str], None],
) -> Rollout:
    where = f"InferenceService {settings.namespace}/{settings.name}"
    log(f"{where}: rolling back to the previous spec ({_model_of(live)})")
    back = kube.server_side_apply(restored, api=api)
    generation = int(back["metadata"].get("generation", 1))
    try:
        ready = _wait_ready(settings, generation, timeout_s, poll_s, api, log)
    except kube.WaitFailed as failure:
        log(f"{where}: the restored spec is not Ready either ({failure})")
        obj = failure.obj or back
        return Rollout(settings.name, settings.namespace, _url(obj), generation, rolled_back=True)
    return Rollout(settings.name, settings.namespace, _url(ready), generation, rolled_back=True)


def _describe_rollback(live: dict[str, Any], result: Rollout) -> str:
    state = "is Ready again" if result.url is not None else "was re-applied but is not Ready yet"
    return (
        f"Rolled back: the previous spec ({_model_of(live)}) {state} as generation {result.revision}"
        f"{' at ' + result.url if result.url else ''}"
    )


def _model_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    model = (meta.get("annotations") or {}).get(ANNOTATION_MODEL_URI)
    version = (meta.get("labels") or {}).get(LABEL_MODEL_VERSION)
    if model is None:
        model = obj.get("spec", {}).get("predictor", {}).get("model", {}).get("storageUri", "unknown model")
    return f"{model}, version {version}" if version else str(model)


def _ready_status(obj: dict[str, Any]) -> str:
    found = kube.condition(obj, "Ready")
    return str(found.get("status")) if found else "Unknown"


def _url(obj: dict[str, Any]) -> str | None:
    if not kube.is_true(obj, "Ready"):
        return None
    return (obj.get("status") or {}).get("url") or None


def _record_endpoint(
    tracking_uri: str | None, model: ModelSource, result: Rollout, log: Callable[[str], None]
) -> None:
    tags = {
        ENDPOINT_SERVICE_TAG: f"{result.namespace}/{result.name}",
        ENDPOINT_TIME_TAG: datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if result.url is not None:
        tags[ENDPOINT_TAG] = result.url
    _tag_version(tracking_uri, model, tags, log)


def _record_failure(
    tracking_uri: str | None, model: ModelSource, message: str, log: Callable[[str], None]
) -> None:
    text = message if len(message) <= MAX_TAG_CHARS else message[: MAX_TAG_CHARS - 3] + "..."
    try:
        _tag_version(tracking_uri, model, {DEPLOY_ERROR_TAG: text}, log)
    except RepotuneError as err:
        # The deploy's own failure is the error to report; a registry that is down only loses the note.
        log(f"warning: {err}")


def _tag_version(
    tracking_uri: str | None, model: ModelSource, tags: dict[str, str], log: Callable[[str], None]
) -> None:
    if not tracking_uri:
        return
    if model.model_name is None or model.version is None:
        log(f"not recorded in MLflow: {model.uri} names no registered version (deploy a models:/ URI)")
        return
    client = registry_client(tracking_uri)
    try:
        for key, value in tags.items():
            client.set_model_version_tag(model.model_name, model.version, key, value)
    except Exception as err:
        raise RepotuneError(
            f"tagging {model.model_name} version {model.version} in the MLflow "
            f"registry at {tracking_uri} failed ({type(err).__name__}: {err})"
        ) from err
