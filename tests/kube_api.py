"""A Kubernetes API server stand-in on 127.0.0.1, enough of the REST API for the official client.

It serves namespaced and cluster-scoped objects of any group (core ``/api/v1/...`` and
``/apis/GROUP/VERSION/...``): GET one, GET a list (``labelSelector`` with ``key=value`` terms), POST
(create), PATCH with ``application/apply-patch+yaml`` (server-side apply: create or update, the
manager's earlier fields replaced by its new ones) or ``application/merge-patch+json``, and DELETE.
Writes bump ``metadata.resourceVersion``; spec changes bump ``metadata.generation``. Errors are
``Status`` bodies with the reason and details a real API server sends.

A test plays the controller: ``api.controller(plural, fn)`` registers ``fn(obj, reads)``, called on
every GET of an object of that resource with the stored object (change its ``status`` in place) and
the number of GETs since its generation last changed. ``ready_after`` and friends build the usual
ones. Every request is recorded in ``api.requests``::

    with running_kube_api() as api:
        api.controller("inferenceservices", ready_after(2, url="http://chat.team-a.example.com"))
        client = repotune.kube.connect(host=api.url)
        ...
        assert [r.method for r in api.requests_to("inferenceservices")] == ["PATCH", "GET", "GET"]
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

Controller = Callable[[dict[str, Any], int], None]
"""``fn(obj, reads)``: update ``obj["status"]`` in place; ``reads`` counts GETs of this generation."""


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any
    """The parsed body (JSON or YAML), or None."""

    @property
    def plural(self) -> str:
        parsed = _parse_path(self.path)
        return parsed[2] if parsed else ""


@dataclass
class _Stored:
    obj: dict[str, Any]
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The last configuration each field manager applied: what its next apply may remove."""
    reads: int = 0


class KubeApi:
    """The server's state: objects, controllers, recorded requests. Safe to use from the test thread
    while the server threads answer the client."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self._objects: dict[tuple[str, str, str | None, str], _Stored] = {}
        self._controllers: dict[str, Controller] = {}
        self._uninstalled: set[str] = set()
        self._version = 0
        self._lock = threading.RLock()

    def controller(self, plural: str, fn: Controller | None) -> None:
        """Play the controller of ``plural`` with ``fn`` from now on (None: no controller)."""
        with self._lock:
            if fn is None:
                self._controllers.pop(plural, None)
            else:
                self._controllers[plural] = fn

    def uninstall(self, plural: str) -> None:
        """Answer for ``plural`` as a server without its CRD does: a plain-text 404 for every path."""
        with self._lock:
            self._uninstalled.add(plural)

    def requests_to(self, plural: str, method: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.plural == plural and method in (None, r.method)]

    def object(self, group: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of the stored object (without running the controller), or None."""
        with self._lock:
            stored = self._objects.get((group, plural, namespace, name))
            return None if stored is None else copy.deepcopy(stored.obj)

    def put(self, group: str, plural: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` as if some other client had created it."""
        meta = obj["metadata"]
        with self._lock:
            self._objects[(group, plural, meta.get("namespace"), meta["name"])] = _Stored(
                self._stamp(copy.deepcopy(obj), None)
            )

    def _stamp(self, obj: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        if previous is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            meta["generation"] = 1
        else:
            old = previous["metadata"]
            meta["uid"], meta["creationTimestamp"] = old["uid"], old["creationTimestamp"]
            changed = _spec_part(obj) != _spec_part(previous)
            meta["generation"] = old["generation"] + (1 if changed else 0)
        meta["resourceVersion"] = str(self._version)
        return obj

    def handle(
        self, method: str, raw_path: str, content_type: str | None, raw_body: bytes
    ) -> tuple[int, Any]:
        split = urlsplit(raw_path)
        query = parse_qs(split.query)
        body: Any = None
        if raw_body:
            try:
                body = yaml.safe_load(raw_body) if content_type == APPLY else json.loads(raw_body)
            except ValueError as err:
                return _status(400, "BadRequest", f"cannot parse the body: {err}")
        with self._lock:
            self.requests.append(Recorded(method, split.path, query, content_type, body))
            parsed = _parse_path(split.path)
            if parsed is None or parsed[2] in self._uninstalled:
                return 404, "404 page not found"
            group, version, plural, namespace, name = parsed
            key = (group, plural, namespace, name or "")
            if method == "GET" and name is None:
                return 200, self._list(group, version, plural, namespace, query)
            if method == "POST" and name is None:
                return self._create(group, plural, namespace, body)
            if name is None:
                return _status(405, "MethodNotAllowed", f"{method} is not allowed on a collection")
            stored = self._objects.get(key)
            if method == "GET":
                if stored is None:
                    return _not_found(group, plural, name)
                control = self._controllers.get(plural)
                stored.reads += 1
                if control is not None:
                    before = copy.deepcopy(stored.obj.get("status"))
                    control(stored.obj, stored.reads)
                    if stored.obj.get("status") != before:
                        self._version += 1
                        stored.obj["metadata"]["resourceVersion"] = str(self._version)
                return 200, copy.deepcopy(stored.obj)
            if method == "DELETE":
                if stored is None:
                    return _not_found(group, plural, name)
                del self._objects[key]
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Success",
                    "details": {"name": name, "group": group, "kind": plural},
                }
            if method == "PATCH":
                return self._patch(key, group, plural, namespace, name, query, content_type, body)
            return _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _list(
        self, group: str, version: str, plural: str, namespace: str | None, query: dict[str, list[str]]
    ) -> dict[str, Any]:
        wanted = {}
        for term in (query.get("labelSelector") or [""])[0].split(","):
            if term:
                label, _, value = term.partition("=")
                wanted[label] = value
        items = [
            copy.deepcopy(stored.obj)
            for (g, p, ns, _), stored in sorted(self._objects.items(), key=lambda item: str(item[0]))
            if g == group
            and p == plural
            and namespace in (None, ns)
            and all((stored.obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        return {
            "apiVersion": f"{group}/{version}" if group else version,
            "kind": "List",
            "metadata": {"resourceVersion": str(self._version)},
            "items": items,
        }

    def _create(self, group: str, plural: str, namespace: str | None, body: Any) -> tuple[int, Any]:
        name = (body or {}).get("metadata", {}).get("name")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        key = (group, plural, namespace, name)
        if key in self._objects:
            return _status(
                409, "AlreadyExists", f'{plural}.{group} "{name}" already exists', group, plural, name
            )
        obj = copy.deepcopy(body)
        if namespace is not None:
            obj["metadata"]["namespace"] = namespace
        self._objects[key] = _Stored(self._stamp(obj, None))
        return 201, copy.deepcopy(obj)

    def _patch(
        self,
        key: tuple[str, str, str | None, str],
        group: str,
        plural: str,
        namespace: str | None,
        name: str,
        query: dict[str, list[str]],
        content_type: str | None,
        body: Any,
    ) -> tuple[int, Any]:
        stored = self._objects.get(key)
        if content_type == MERGE:
            if stored is None:
                return _not_found(group, plural, name)
            self._replace(stored, _merge_patch(copy.deepcopy(stored.obj), body))
            return 200, copy.deepcopy(stored.obj)
        if content_type != APPLY:
            return _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {content_type}",
            )
        manager = (query.get("fieldManager") or [""])[0]
        if not manager:
            return _status(400, "BadRequest", "PATCH requests with apply content type require fieldManager")
        if not isinstance(body, dict) or not body.get("apiVersion") or not body.get("kind"):
            return _status(400, "BadRequest", "apply patches need apiVersion and kind")
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            return _status(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
            )
        if meta.get("namespace", namespace) != namespace:
            return _status(
                400, "BadRequest", "the namespace of the object does not match the namespace on the URL"
            )
        applied = copy.deepcopy(body)
        if stored is None:
            obj = copy.deepcopy(body)
            obj["metadata"]["managedFields"] = [{"manager": manager, "operation": "Apply"}]
            self._objects[key] = _Stored(self._stamp(obj, None), {manager: applied})
            return 201, copy.deepcopy(obj)
        obj = _remove(
            copy.deepcopy(stored.obj), stored.applied.get(manager, {}), frozenset({"apiVersion", "kind"})
        )
        obj = _deep_merge(obj, applied)
        managers = {entry["manager"] for entry in stored.obj["metadata"].get("managedFields") or []}
        obj["metadata"]["managedFields"] = [
            {"manager": m, "operation": "Apply"} for m in sorted(managers | {manager})
        ]
        self._replace(stored, obj)
        stored.applied[manager] = applied
        return 200, copy.deepcopy(stored.obj)

    def _replace(self, stored: _Stored, obj: dict[str, Any]) -> None:
        before = stored.obj["metadata"]["generation"]
        stored.obj = self._stamp(obj, stored.obj)
        if stored.obj["metadata"]["generation"] != before:
            # A new spec to roll out: the controller's count of reads starts again.
            stored.reads = 0


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    """What a generation counts: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _remove(obj: dict[str, Any], owned: dict[str, Any], keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``obj`` without the fields of ``owned`` (maps recursively; lists and scalars whole, where a real
    server merges some lists by key): what a manager's new apply replaces. ``keep`` names fields that
    identify the object rather than belong to a manager."""
    for key, value in owned.items():
        if key in keep or key not in obj:
            continue
        if isinstance(value, dict) and isinstance(obj[key], dict):
            _remove(obj[key], value, frozenset({"name", "namespace"}) if key == "metadata" else frozenset())
            if not obj[key] and key != "metadata":
                del obj[key]
        else:
            del obj[key]
    return obj


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _merge_patch(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386: null deletes, maps merge, everything else replaces."""
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge_patch(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _parse_path(path: str) -> tuple[str, str, str, str | None, str | None] | None:
    """(group, version, plural, namespace, name) of a REST path, or None when it names no resource."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if len(rest) == 1:
        return group, version, rest[0], namespace, None
    if len(rest) == 2:
        return group, version, rest[0], namespace, rest[1]
    return None


def _status(
    code: int, reason: str, message: str, group: str = "", plural: str = "", name: str = ""
) -> tuple[int, dict[str, Any]]:
    details = {"name": name, "group": group, "kind": plural} if name else {}
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def _not_found(group: str, plural: str, name: str) -> tuple[int, dict[str, Any]]:
    resource = f"{plural}.{group}" if group else plural
    return _status(404, "NotFound", f'{resource} "{name}" not found', group, plural, name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: KubeApi

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip() or None
        try:
            code, payload = self.api.handle(self.command, self.path, content_type, raw)
        except Exception as err:  # a bug in the stand-in: tell the client rather than drop the connection
            code, payload = _status(500, "InternalError", f"{type(err).__name__}: {err}")
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def running_kube_api() -> Iterator[KubeApi]:
    """A started stand-in on a free port of 127.0.0.1 (``api.url``); stopped on exit."""
    api = KubeApi()
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _set_condition(obj: dict[str, Any], kind: str, status: str, reason: str = "", message: str = "") -> None:
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    entry = {"type": kind, "status": status}
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = message
    conditions[:] = [c for c in conditions if c.get("type") != kind] + [entry]


def _observe(obj: dict[str, Any]) -> None:
    obj.setdefault("status", {})["observedGeneration"] = obj["metadata"]["generation"]


def ready_after(polls: int, url: str | None = None, condition: str = "Ready") -> Controller:
    """Reports the generation not ready for ``polls - 1`` reads, then ``condition`` True (with
    ``status.url`` when given), as KServe does for an InferenceService that rolled out."""

    def control(obj: dict[str, Any], reads: int) -> None:
        _observe(obj)
        if reads >= polls:
            _set_condition(obj, condition, "True")
            if url is not None:
                obj["status"]["url"] = url
        else:
            _set_condition(
                obj, condition, "False", "RevisionMissing", "Configuration is waiting for a Revision"
            )

    return control


def never_ready(
    reason: str = "RevisionFailed", message: str = "Revision failed: container exited"
) -> Controller:
    """Observes every generation and reports it not ready, forever."""

    def control(obj: dict[str, Any], reads: int) -> None:
        _observe(obj)
        _set_condition(obj, "Ready", "False", reason, message)

    return control


def fails_after(polls: int, condition: str = "Failed", message: str = "job failed") -> Controller:
    """Reports ``condition`` True with ``message`` from the ``polls``-th read (a PyTorchJob's Failed)."""

    def control(obj: dict[str, Any], reads: int) -> None:
        _observe(obj)
        if reads >= polls:
            _set_condition(obj, condition, "True", "JobFailed", message)

    return control


def by_spec(choose: Callable[[dict[str, Any]], Controller]) -> Controller:
    """A controller that picks one of several by the object's spec: e.g. the bad model never gets
    ready while the good one does."""

    def control(obj: dict[str, Any], reads: int) -> None:
        choose(obj)(obj, reads)

    return control
