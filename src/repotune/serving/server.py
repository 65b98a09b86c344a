"""The model server: ``kserve.ModelServer`` with the repotune model and the OpenAI-compatible routes.

``serve`` is what ``repotune serve MODEL`` runs: it loads the model, adds the OpenAI routes and a
request body limit to KServe's FastAPI app, and runs KServe's REST server (v1/v2 protocol, health,
``/metrics``) on ``host:port``. KServe binds 0.0.0.0 by itself; here the host is an option and
defaults to 127.0.0.1, so a model is not exposed to the network by accident. gRPC is off: the
routes people use (OpenAI, v1, v2) are all HTTP.

``start_background`` runs ``repotune serve`` as a subprocess on a free port and returns once it
answers ready, for code (``repotune run``, tests, benchmarks) that needs a live server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError
from repotune.serving.model import RepotuneModel, ServeSettings, default_model_name

# Seconds a stopping server lets open requests (streams) finish before it closes them.
GRACE_PERIOD_S = 5


class BodyLimit:
    """ASGI middleware that answers 413 (OpenAI-style body) to request bodies over ``max_bytes``.

    The body is read (at most ``max_bytes`` + one chunk) before the app sees it, so a client that
    sends a huge or endless body is refused early, whether or not it sent a Content-Length.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees the disconnect as it would have
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        import json

        error = {
            "message": f"the request body is larger than this server's limit of {self.max_bytes} bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
        payload = json.dumps({"error": error}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def serve(
    source: str | Path,
    *,
    port: int = 8080,
    host: str = "127.0.0.1",
    model_name: str | None = None,
    adapter: str | Path | None = None,
    settings: ServeSettings | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Load the model at ``source`` (folder or ``s3://``) and serve it until SIGINT or SIGTERM."""
    from repotune.serving._kserve import FASTAPI_APP_IMPORT_STRING, RESTServer, kserve, model_server
    from repotune.serving.openai_routes import register_openai_routes

    settings = settings or ServeSettings()
    name = model_name or default_model_name(source)
    model = RepotuneModel(name, source, adapter=adapter, settings=settings)
    started = time.monotonic()
    model.load()
    loaded = model.loaded
    device = next(loaded.model.parameters()).device
    log(
        f"loaded {source}{f' with adapter {adapter}' if adapter else ''} as {name!r} on {device} in "
        f"{time.monotonic() - started:.1f} s (context {model.context} tokens, "
        f"fill-in-the-middle {'on' if model.fim else 'off: no FIM tokens'})"
    )

    server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, grace_period=GRACE_PERIOD_S)
    app = model_server.app
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    register_openai_routes(app, model)
    # ModelServer.start() would bind 0.0.0.0 with no way to choose; this is the same start for one
    # worker without gRPC, with the host set.
    server._register_and_check_atleast_one_model_is_ready([model])
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        server.dataplane,
        server.model_repository_extension,
        port,
        grace_period=GRACE_PERIOD_S,
    )
    rest.config.host = host
    server._rest_server = rest
    url = f"http://{host}:{port}"

    async def announce() -> None:
        while not rest._server.started:
            await asyncio.sleep(0.05)
        log(f"listening on {url}: OpenAI API at {url}/openai/v1, KServe v1/v2 at {url}/v1 and {url}/v2")

    async def run() -> None:
        server.setup_event_loop()
        waiter = asyncio.create_task(announce())
        try:
            await rest.start()
        finally:
            waiter.cancel()

    try:
        asyncio.run(run())
    finally:
        model.stop()
        log(f"stopped serving {name!r}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class BackgroundServer:
    """A ``repotune serve`` subprocess; ``stop()`` (or leaving a ``with`` block) ends it."""

    url: str
    """``http://HOST:PORT``; the OpenAI API is under ``openai_url``."""
    model_name: str
    process: subprocess.Popen
    log_path: Path
    """The server's stdout and stderr."""

    @property
    def openai_url(self) -> str:
        """The ``base_url`` to give ``openai.OpenAI``."""
        return f"{self.url}/openai/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_background(
    model: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    model_name: str | None = None,
    adapter: str | Path | None = None,
    max_batch_size: int | None = None,
    max_tokens: int | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 300.0,
    log_path: Path | None = None,
) -> BackgroundServer:
    """Start ``repotune serve MODEL`` in a subprocess and wait until it answers ready.

    ``port=None`` takes a free port (and tries another if that one is taken in between).
    ``extra_args`` are more ``repotune serve`` options (``["--request-timeout", "30"]``); ``env``
    replaces the subprocess's environment (default: this process's). Raises ``RepotuneError`` with
    the end of the server's log when it exits or is not ready within ``ready_timeout_s`` seconds.
    """
    name = model_name or default_model_name(model)
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        command = [sys.executable, "-m", "repotune", "serve", str(model), "--port", str(chosen),
                   "--host", host, "--model-name", name]  # fmt: skip
        if adapter is not None:
            command += ["--adapter", str(adapter)]
        if max_batch_size is not None:
            command += ["--max-batch-size", str(max_batch_size)]
        if max_tokens is not None:
            command += ["--max-tokens", str(max_tokens)]
        command += list(extra_args)
        if log_path is None:
            handle, path = tempfile.mkstemp(prefix="repotune-serve-", suffix=".log")
            os.close(handle)
            log_file = Path(path)
        else:
            log_file = log_path
        with open(log_file, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        server = BackgroundServer(f"http://{host}:{chosen}", name, process, log_file)
        try:
            _wait_ready(server, ready_timeout_s)
            return server
        except RepotuneError:
            server.stop()
            taken = "address already in use" in server.log_text().lower()
            if not (taken and attempt + 1 < attempts):
                raise
    raise RepotuneError("could not start the server")  # the loop returns or raises


def _wait_ready(server: BackgroundServer, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RepotuneError(
                    f"repotune serve exited with status {server.process.returncode}:\n{_tail(server)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{server.url}/v2/health/ready").status_code == 200:
                    return
            time.sleep(0.2)
    raise RepotuneError(f"repotune serve was not ready after {timeout_s:g} s:\n{_tail(server)}")


def _tail(server: BackgroundServer, lines: int = 20) -> str:
    return "\n".join(server.log_text().splitlines()[-lines:])
