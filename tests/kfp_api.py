"""A stand-in for the Kubeflow Pipelines REST API (v2beta1) on 127.0.0.1, for the kfp SDK's client.

It answers what ``kfp.Client.create_run_from_pipeline_func`` and ``get_run`` call: healthz, experiment
lookup and creation, run creation and run reads; it keeps what was submitted so tests can inspect the
pipeline spec, the parameters and the service account the cluster would have received. Its healthz
answers as the real API server's HTTP handler does (backend/src/apiserver/main.go): ``commit_sha``,
``tag_name`` (the release, ``tag_name=`` here), ``multi_user`` and ``pipeline_store``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

PREFIX = "/apis/v2beta1"


class KfpApi:
    def __init__(self, tag_name: str = "2.15.0") -> None:
        self.url = ""
        self.tag_name = tag_name
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}


class _Handler(BaseHTTPRequestHandler):
    api: KfpApi

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == f"{PREFIX}/healthz":
            self._send(
                200,
                {
                    "commit_sha": "unknown",
                    "tag_name": self.api.tag_name,
                    "multi_user": False,
                    "pipeline_store": "database",
                },
            )
        elif path == f"{PREFIX}/experiments":
            self._send(
                200, {"experiments": list(self.api.experiments.values())} if self.api.experiments else {}
            )
        elif path.startswith(f"{PREFIX}/runs/"):
            run = self.api.runs.get(path.rsplit("/", 1)[1])
            self._send(200, run) if run else self._send(404, {"error": "run not found", "code": 5})
        else:
            self._send(404, {"error": f"no route {path}", "code": 5})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if path == f"{PREFIX}/experiments":
            experiment = {**body, "experiment_id": str(uuid.uuid4())}
            self.api.experiments[experiment["experiment_id"]] = experiment
            self._send(200, experiment)
        elif path == f"{PREFIX}/runs":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.api.runs[run["run_id"]] = run
            self._send(200, run)
        else:
            self._send(404, {"error": f"no route {path}", "code": 5})


@contextlib.contextmanager
def running_kfp_api(tag_name: str = "2.15.0") -> Iterator[KfpApi]:
    """A started stand-in on a free port of 127.0.0.1 that reports itself as KFP ``tag_name``."""
    api = KfpApi(tag_name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"api": api}))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
