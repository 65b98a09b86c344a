"""The Kubernetes API through the official client, for any object (custom resources included).

Objects are plain dicts, as in a manifest. Every write is a server-side apply, so creating and updating
are one idempotent call, and a retried pipeline step changes nothing the second time::

    api = connect()  # in a pod: its ServiceAccount; else ~/.kube/config; connect(host=URL) for tests
    live = server_side_apply(pytorchjob, api=api)
    done = wait_for_condition(
        "kubeflow.org", "v1", "pytorchjobs", "team-a", "train-x", "Succeeded",
        timeout_s=3600, on_failure_condition="Failed", api=api,
    )

A resource is named by (group, version, plural): ``""`` is the core group (``"", "v1", "secrets"``).
Errors from the API server become a ``RepotuneError`` that says what was being done, to which object,
and the server's own message.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from repotune.errors import RepotuneError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

FIELD_MANAGER = "repotune"
"""Who owns the fields repotune applies (``metadata.managedFields[].manager``)."""
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
REQUEST_TIMEOUT_S = (5.0, 60.0)
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A Kubernetes name that is a DNS-1123 label (a namespace, a Secret, a ServiceAccount)."""
"""(connect, read) seconds for one API request."""
MAX_POLL_ERRORS = 3
"""Failed reads in a row after which ``wait_for_condition`` gives up (a single blip is ridden out)."""

_CONSONANT_Y = re.compile(r"[^aeiou]y$")


def connect(host: str | None = None, *, context: str | None = None) -> ApiClient:
    """An API client: for ``host`` (an ``http(s)://`` URL with no credentials, e.g. ``kubectl proxy`` or
    a test server) when given; else the pod's ServiceAccount when running in a cluster; else the
    kubeconfig (``KUBECONFIG`` or ``~/.kube/config``, its current context or ``context``)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if host is not None:
        if not host.startswith(("http://", "https://")):
            raise RepotuneError(f"--kube-host {host!r}: give the API server's URL, http(s)://HOST[:PORT]")
        configuration.host = host.rstrip("/")
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            # KUBECONFIG read now: the client reads it once, when it is imported
            config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None,
                context=context,
                client_configuration=configuration,
            )
        except (config.ConfigException, OSError) as err:
            raise RepotuneError(
                f"no Kubernetes cluster to talk to: not inside a pod, and no usable kubeconfig ({err}); set "
                "KUBECONFIG, or give the API server URL (--kube-host, e.g. from `kubectl proxy`)"
            ) from err
    return client.ApiClient(configuration)


def plural_of(kind: str) -> str:
    """The resource name Kubernetes derives from a kind when a CRD does not say otherwise (the same
    guess as kubectl's ``UnsafeGuessKindToResource``): ``InferenceService`` -> ``inferenceservices``,
    ``NetworkPolicy`` -> ``networkpolicies``, ``Ingress`` -> ``ingresses``."""
    lower = kind.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    if _CONSONANT_Y.search(lower):
        return lower[:-1] + "ies"
    return lower + "s"


def split_api_version(api_version: str) -> tuple[str, str]:
    """``serving.kserve.io/v1beta1`` -> ``("serving.kserve.io", "v1beta1")``; ``v1`` -> ``("", "v1")``."""
    group, _, version = api_version.rpartition("/")
    if not version:
        raise RepotuneError(f"apiVersion {api_version!r} is not GROUP/VERSION or VERSION")
    return group, version


def resource_path(
    group: str, version: str, plural: str, namespace: str | None, name: str | None = None
) -> str:
    """The REST path of a collection (``name`` None) or of one object; ``namespace`` None for
    cluster-scoped resources."""
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    return path if name is None else f"{path}/{name}"


def describe(group: str, plural: str, namespace: str | None, name: str | None = None) -> str:
    """``inferenceservices.serving.kserve.io team-a/chat``: how errors name an object."""
    resource = f"{plural}.{group}" if group else plural
    where = "/".join(part for part in (namespace, name) if part)
    return f"{resource} {where}" if where else resource


def server_side_apply(
    obj: Mapping[str, Any],
    field_manager: str = FIELD_MANAGER,
    *,
    plural: str | None = None,
    api: ApiClient | None = None,
) -> dict[str, Any]:
    """Create or update ``obj`` in one server-side apply (PATCH, ``application/apply-patch+yaml``,
    ``force=true``) and return the object as the server now holds it.

    Fields ``field_manager`` applied before and leaves out now are removed; fields other managers own
    (a controller's ``status``, a webhook's defaults) are kept. ``force`` takes over fields another
    manager set, as ``kubectl apply --server-side --force-conflicts`` does: this process is the one
    that decides the spec. ``plural`` overrides the resource name guessed from ``kind``.
    """
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    metadata = obj.get("metadata") or {}
    name = metadata.get("name")
    if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str) and name):
        raise RepotuneError("an object to apply needs apiVersion, kind and metadata.name")
    group, version = split_api_version(api_version)
    resource = plural or plural_of(kind)
    namespace = metadata.get("namespace")
    return _call(
        api,
        f"applying {describe(group, resource, namespace, name)}",
        resource_path(group, version, resource, namespace, name),
        "PATCH",
        query=[("fieldManager", field_manager), ("force", "true")],
        content_type=APPLY_CONTENT_TYPE,
        body=dict(obj),
    )


def get(
    group: str, version: str, plural: str, namespace: str | None, name: str, *, api: ApiClient | None = None
) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    return _call(
        api,
        f"reading {describe(group, plural, namespace, name)}",
        resource_path(group, version, plural, namespace, name),
        "GET",
        missing_ok=True,
    )


def list_objects(
    group: str,
    version: str,
    plural: str,
    namespace: str | None,
    *,
    label_selector: str | None = None,
    api: ApiClient | None = None,
) -> list[dict[str, Any]]:
    """The objects of one resource in ``namespace`` (all namespaces when None), optionally filtered by
    a label selector such as ``app=chat,tier=web``."""
    query = [("labelSelector", label_selector)] if label_selector else []
    found = _call(
        api,
        f"listing {describe(group, plural, namespace)}",
        resource_path(group, version, plural, namespace),
        "GET",
        query=query,
    )
    return list(found.get("items") or [])


def delete(
    group: str,
    version: str,
    plural: str,
    namespace: str | None,
    name: str,
    *,
    propagation: str = "Foreground",
    api: ApiClient | None = None,
) -> bool:
    """Delete the object (and, with Foreground propagation, what it owns before it goes); False when it
    was already gone."""
    found = _call(
        api,
        f"deleting {describe(group, plural, namespace, name)}",
        resource_path(group, version, plural, namespace, name),
        "DELETE",
        body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation},
        missing_ok=True,
    )
    return found is not None


def condition(obj: Mapping[str, Any], condition_type: str) -> dict[str, Any] | None:
    """The ``status.conditions`` entry of ``condition_type`` (e.g. ``Ready``, ``Succeeded``), or None."""
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry.get("type") == condition_type:
            return entry
    return None


def is_true(obj: Mapping[str, Any], condition_type: str) -> bool:
    found = condition(obj, condition_type)
    return found is not None and str(found.get("status")) == "True"


def status_message(obj: Mapping[str, Any], condition_type: str) -> str:
    """What the controller says about ``condition_type``: ``reason: message``, or a note that it said
    nothing yet."""
    found = condition(obj, condition_type)
    if found is None:
        return f"no {condition_type} condition reported yet"
    text = ": ".join(str(found[key]) for key in ("reason", "message") if found.get(key))
    return text or f"{condition_type}={found.get('status')}"


def is_observed(obj: Mapping[str, Any], min_generation: int | None) -> bool:
    """Whether the status describes generation ``min_generation`` or later. Right after an update the
    status still describes the old spec (an old ``Ready=True`` must not count); controllers that do not
    report ``status.observedGeneration`` are trusted as they are."""
    if min_generation is None:
        return True
    observed = (obj.get("status") or {}).get("observedGeneration")
    return observed is None or int(observed) >= min_generation


class WaitFailed(RepotuneError):
    """``wait_for_condition`` gave up: the failure condition came up, or time ran out."""

    def __init__(self, message: str, obj: dict[str, Any] | None, *, timed_out: bool):
        super().__init__(message)
        self.obj = obj
        """The object as last read (None when it could not be read)."""
        self.timed_out = timed_out
        """True when time ran out; False when the object reported failure."""


def wait_for_condition(
    group: str,
    version: str,
    plural: str,
    namespace: str | None,
    name: str,
    condition: str = "Ready",
    *,
    timeout_s: float,
    on_failure_condition: str | None = "Failed",
    failed: Callable[[dict[str, Any]], str | None] | None = None,
    min_generation: int | None = None,
    poll_s: float = 2.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    api: ApiClient | None = None,
) -> dict[str, Any]:
    """Poll the object every ``poll_s`` seconds until its ``condition`` is True, and return it.

    Raises ``WaitFailed`` (a RepotuneError carrying the controller's message) when the
    ``on_failure_condition`` turns True (``Failed`` for a PyTorchJob), when ``failed(obj)`` returns a
    message, when ``timeout_s`` seconds pass, or when the object disappears. With ``min_generation``
    (the ``metadata.generation`` an apply returned), conditions count only once the controller has
    observed that generation. ``progress(obj)`` is called after every read.
    """
    what = describe(group, plural, namespace, name)
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] | None = None
    errors = 0
    while True:
        try:
            found = get(group, version, plural, namespace, name, api=api)
            errors = 0
        except RepotuneError:
            errors += 1
            if errors >= MAX_POLL_ERRORS:
                raise
            found = last
        else:
            if found is None:
                raise WaitFailed(f"{what} disappeared while waiting for {condition}", last, timed_out=False)
            last = found
            if progress is not None:
                progress(found)
        if found is not None and is_observed(found, min_generation):
            if on_failure_condition is not None and is_true(found, on_failure_condition):
                message = status_message(found, on_failure_condition)
                raise WaitFailed(f"{what} reported {on_failure_condition}: {message}", found, timed_out=False)
            if failed is not None and (reason := failed(found)) is not None:
                raise WaitFailed(f"{what} failed: {reason}", found, timed_out=False)
            if is_true(found, condition):
                return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if found is None:
                detail = "it could not be read"
            elif not is_observed(found, min_generation):
                detail = f"the controller has not observed generation {min_generation} yet"
            else:
                detail = status_message(found, condition)
            raise WaitFailed(f"{what} not {condition} after {timeout_s:g} s: {detail}", found, timed_out=True)
        time.sleep(min(poll_s, remaining))


def _call(
    api: ApiClient | None,
    what: str,
    path: str,
    method: str,
    *,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
    body: Any = None,
    missing_ok: bool = False,
) -> Any:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    client = api if api is not None else connect()
    host = client.configuration.host
    try:
        return client.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
    except ApiException as err:
        if err.status == 404 and missing_ok and _names_an_object(err):
            return None
        raise _api_error(err, what, host) from err
    except HTTPError as err:
        from repotune.tracking import short_reason

        reason = short_reason(err)  # the OS error, not urllib3's retry message around it
        raise RepotuneError(f"{what}: cannot reach the Kubernetes API at {host} ({reason})") from err


def _status(err: Any) -> dict[str, Any]:
    """The Status body the API server sends with an error ({} when the body is not one)."""
    import json

    try:
        body = json.loads(err.body)
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _names_an_object(err: Any) -> bool:
    """Whether a 404 says that one object is missing. A 404 for a resource type the server does not
    know (CRD not installed) names no object, and must not read as "absent"."""
    status = _status(err)
    return status.get("reason") == "NotFound" and bool((status.get("details") or {}).get("name"))


def _api_error(err: Any, what: str, host: str) -> RepotuneError:
    message = _status(err).get("message") or err.reason
    hint = ""
    if err.status in (401, 403):
        hint = "; check the ServiceAccount's RBAC (a Role that allows this verb on this resource)"
    elif err.status == 404:
        # A 404 for a whole resource type (not one object) means the CRD is not installed.
        hint = "; is the resource's CRD installed (KServe, the Kubeflow Training Operator)?"
    return RepotuneError(f"{what} at {host} failed: {err.status} {err.reason}: {message}{hint}")
