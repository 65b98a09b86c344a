"""A real ``mlflow server`` on 127.0.0.1 for integration tests: sqlite backend, and artifacts in a local
folder or, with ``artifacts_destination``, proxied by the server into an S3 bucket (``--serve-artifacts``)
of the session's SeaweedFS (``tests/s3_server.py``), through boto3 as on a cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import requests

STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A started server: ``url`` to reach it, ``kill()`` to take it away mid-test.

    ``artifacts_destination`` (e.g. ``s3://bucket/mlflow``) makes the server store artifacts there and
    proxy them to clients (``mlflow-artifacts:/`` URIs), so clients need no S3 credentials; ``env`` adds
    variables for the server process only (``AWS_*``, ``MLFLOW_S3_ENDPOINT_URL``).
    """

    def __init__(
        self, root: Path, *, artifacts_destination: str | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifact_root = root / "artifacts"
        self._log = open(root / "server.log", "wb")  # noqa: SIM115 (closed in kill())
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            *(
                ["--default-artifact-root", self.artifact_root.as_uri()]
                if artifacts_destination is None
                else ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
            ),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",  # the test machines have few cores; one worker starts fastest
        ]
        # Its own process group, so kill() also stops the web server's worker processes.
        self._proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=root,
            # Without it MLflow 3 starts a job runner (eight more Python processes, about 40 s of CPU
            # in the first minute) for GenAI features repotune does not use; manifests/base/mlflow.yaml
            # turns it off too.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        )
        self._root = root

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"mlflow server not healthy after {STARTUP_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return (self._root / "server.log").read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)
        self._log.close()


@contextlib.contextmanager
def running_mlflow_server(
    tmp_path: Path, *, artifacts_destination: str | None = None, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The tracking URI of a healthy ``mlflow server`` whose data lives under ``tmp_path`` (artifacts
    too, unless ``artifacts_destination``; see ``MlflowServer``); the server is killed on exit. (Use
    ``MlflowServer`` directly to kill it mid-test.)"""
    server = MlflowServer(tmp_path, artifacts_destination=artifacts_destination, env=env)
    try:
        server.wait_healthy()
        yield server.url
    finally:
        server.kill()


@contextlib.contextmanager
def running_mlflow_on_s3(tmp_path: Path, endpoint: str, artifacts_destination: str) -> Iterator[str]:
    """``running_mlflow_server`` with artifacts proxied into the S3 test server (SeaweedFS) at ``endpoint``
    (the destination bucket must exist). Only the server gets S3 credentials: clients upload through it."""
    from tests.s3_server import CREDENTIALS

    env = {**CREDENTIALS, "AWS_DEFAULT_REGION": CREDENTIALS["AWS_REGION"], "MLFLOW_S3_ENDPOINT_URL": endpoint}
    with running_mlflow_server(tmp_path, artifacts_destination=artifacts_destination, env=env) as url:
        yield url
