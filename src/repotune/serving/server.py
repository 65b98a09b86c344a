"""The model server: ``kserve.ModelServer`` with the repotune model and the OpenAI-compatible routes.

``serve`` is what ``repotune serve MODEL`` runs: it loads the model, adds the OpenAI routes and the
guards (``repotune.serving.guards``: bearer tokens, body size, JSON depth, clients that go away) to
KServe's FastAPI app, and runs KServe's REST server (v1/v2 protocol, health, ``/metrics``) on
``host:port``. KServe binds 0.0.0.0 by itself; here the host is an option and defaults to 127.0.0.1, so
a model is not exposed to the network by accident, and another address needs bearer tokens
(``REPOTUNE_SERVE_TOKENS``) or an explicit ``--insecure-no-auth``. gRPC is off: the routes people use
(OpenAI, v1, v2) are all HTTP.

``start_background`` runs ``repotune serve`` as a subprocess on a free port and returns once it
answers ready, for code (``repotune run``, tests, benchmarks) that needs a live server.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError
from repotune.serving.errors import ServingError
from repotune.serving.settings import ServeSettings, tokens_from_env

logger = logging.getLogger(__name__)

# Seconds a stopping server lets open requests (streams) finish before it closes them.
GRACE_PERIOD_S = 5
CUT_BEFORE_END_S = 1.5
"""How long before the grace period ends the requests still open are failed, so that their error
reaches the clients before the connections close."""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, taken before the model loads (seconds) and handed to the server,
    so a port in use is one line at once, not an error from inside KServe after the load."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except (socket.gaierror, UnicodeError, OverflowError) as err:
        raise RepotuneError(f"--host {host} --port {port}: {getattr(err, 'strerror', None) or err}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    # As uvicorn binds: a port left in TIME_WAIT by a stopped server can be taken again at once.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise RepotuneError(f"port {port} on {host} is in use") from None
        raise RepotuneError(f"cannot listen on {host} port {port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


def _error_handlers(app: Any) -> None:
    """Refusals keep their status on every route; nothing unexpected names an exception in a body.

    The OpenAI routes answer with OpenAI's error body, KServe's routes with KServe's ``{"error": ...}``.
    KServe's own handler for other exceptions writes ``TypeName : message``; this one replaces it.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    def answer(request: Any, err: ServingError) -> JSONResponse:
        if request.url.path.startswith("/openai/"):
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers())
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers())

    async def refused(request: Any, err: ServingError) -> JSONResponse:
        return answer(request, err)

    async def unexpected(request: Any, err: Exception) -> JSONResponse:
        logger.error("request to %s failed", request.url.path, exc_info=err)
        return answer(request, ServingError(500, "internal error; the server log has the details",
                                            type="server_error"))  # fmt: skip

    async def no_versions(request: Any, err: NotImplementedError) -> JSONResponse:
        # KServe answers a request for a model version with 501; a server of one unversioned model
        # has no such version, which is a 404 the client can act on, not a server fault.
        return answer(request, ServingError(404, f"not found: {err}", code="not_found"))

    async def invalid(request: Any, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each failed input, and fails (a 500) on the NaN and infinities
        # Python's JSON parser accepts; KServe's v2 routes validate their bodies through it.
        first = err.errors()[0] if err.errors() else {}
        # The location starts with "body" and the model's class name; the fields follow.
        where = ".".join(str(part) for part in first.get("loc", ())[1:] if not str(part)[:1].isupper())
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid")
        return answer(request, ServingError(422, message))

    app.add_exception_handler(ServingError, refused)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(NotImplementedError, no_versions)
    app.add_exception_handler(Exception, unexpected)


def _no_repository(app: Any) -> None:
    """Answer KServe's model repository routes with 404 before KServe's own handlers can: they would let
    any caller unload the one model this process serves, and ``load`` cannot bring it back."""
    from fastapi.responses import JSONResponse

    async def refuse(model_name: str) -> JSONResponse:
        return JSONResponse({"error": "this server serves one model and has no model repository"}, 404)

    for verb in ("load", "unload"):
        # Registered before KServe's routes (create_application), so these match first.
        app.add_api_route(f"/v2/repository/models/{{model_name}}/{verb}", refuse, methods=["POST"],
                          include_in_schema=False)  # fmt: skip


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
    """Load the model at ``source`` (folder or ``s3://``) and serve it until SIGINT or SIGTERM.

    Before anything loads: refuse a non-loopback ``host`` without tokens (``ServeSettings.check_exposure``),
    a local folder that is not there, and take the port (``bind``), so each mistake costs one line, not a
    model load.
    """
    from repotune.serving.loading import check_source

    settings = settings or ServeSettings()
    settings.check_exposure(host)
    check_source(source)
    if adapter is not None:
        check_source(adapter, "adapter")
    _check_retrieval(adapter if adapter is not None else source, settings.retrieval)
    sock = bind(host, port)
    try:
        from repotune.serving._kserve import FASTAPI_APP_IMPORT_STRING, RESTServer, kserve, model_server
        from repotune.serving.guards import BearerAuth, BodyGuard, CancelOnDisconnect
        from repotune.serving.model import RepotuneModel
        from repotune.serving.openai_routes import register_openai_routes

        log(f"loading {source}")
        model = RepotuneModel(model_name, source, adapter=adapter, settings=settings)
        started = time.monotonic()
        model.load()
        device = next(model.loaded.model.parameters()).device
        aliases = f" (also {', '.join(repr(a) for a in model.aliases)})" if model.aliases else ""
        log(
            f"loaded {source}{f' with adapter {adapter}' if adapter else ''} as {model.name!r}{aliases} on "
            f"{device} in {time.monotonic() - started:.1f} s (context {model.context} tokens, "
            f"{_gaps(model)})"
        )
        if model.retrieval is not None:
            index = model.retrieval
            revision = index.index.revision or "unknown"
            search = "BM25 + embeddings" if index.index.config.embedding_model else "BM25"
            log(
                f"retrieval: {len(index.index):,} chunks ({search}) of revision {revision} from "
                f"{index.folder}, up to {index.budget} tokens of context; "
                + (f"on ({index.why})" if index.default else index.why)
                + "; a request's `retrieval` field wins"
            )
        if settings.tokens:
            count = len(settings.tokens)
            log(f"authentication: a bearer token of {count} in REPOTUNE_SERVE_TOKENS on every route but "
                "health and readiness")  # fmt: skip
        else:
            log(
                "no authentication: "
                + ("--insecure-no-auth" if settings.insecure_no_auth else f"{host} only")
            )

        _quiet_kserve()
        server = kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, grace_period=GRACE_PERIOD_S)
        app = model_server.app
        app.add_middleware(CancelOnDisconnect)  # innermost: it sees the body BodyGuard has read
        app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth)
        if settings.tokens:
            app.add_middleware(BearerAuth, tokens=settings.tokens)  # outside BodyGuard: no body read first
        register_openai_routes(app, model)
        _no_repository(app)
        # ModelServer.start() would bind 0.0.0.0 itself; this is the same start for one worker without
        # gRPC, on the socket bound above.
        server._register_and_check_atleast_one_model_is_ready([model])
        for alias in model.aliases:  # the KServe v1/v2 routes answer to every name the OpenAI ones do
            server.registered_models.update(model, name=alias)
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

        async def cut_when_stopping() -> None:
            # uvicorn lets open requests run for the grace period, then cancels them: a stream cut
            # that way reaches its client as a bare end of the body. Just before, every request still
            # open is failed instead, so each client gets a 503 or a stream's error event.
            while not rest._server.should_exit:
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(0.0, GRACE_PERIOD_S - CUT_BEFORE_END_S))
            if model.batcher is not None:
                model.batcher.cut("the server is stopping")

        async def run() -> None:
            server.setup_event_loop()
            rest.create_application()
            _error_handlers(app)  # after KServe's, which they replace
            waiters = [asyncio.create_task(announce()), asyncio.create_task(cut_when_stopping())]
            try:
                await rest._server.serve(sockets=[sock])
            finally:
                for waiter in waiters:
                    waiter.cancel()

        # uvicorn stops gracefully on SIGTERM and then raises it again under the previous handler:
        # the default one would end the process before the lines below.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
        try:
            asyncio.run(run())
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            model.stop()
            log(f"stopped serving {model.name!r}")
    finally:
        sock.close()


class _KServeNoise(logging.Filter):
    """Drops KServe's "OpenAI endpoints not registered" (its own OpenAI routes need an extra that is not
    installed: repotune registers its own, and announces them once listening) and "Time series
    endpoints not registered" (there are none to have)."""

    NOISE = frozenset({"OpenAI endpoints not registered", "Time series endpoints not registered"})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.NOISE


class _Timings(logging.Filter):
    """Drops KServe's two timing lines a request (``time:wall``, and ``time:cpu``, which is the whole
    process's CPU time, not the request's) beside uvicorn's access line, health probes included. A
    filter, not a level: KServe and uvicorn configure the logger's level again as they start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def _quiet_kserve() -> None:
    """What KServe says that a user of ``repotune serve`` cannot act on, left out."""
    import warnings

    kserve_logger = logging.getLogger("kserve")
    if not any(isinstance(f, _KServeNoise) for f in kserve_logger.filters):
        kserve_logger.addFilter(_KServeNoise())
    trace_logger = logging.getLogger("kserve.trace")
    if not any(isinstance(f, _Timings) for f in trace_logger.filters):
        trace_logger.addFilter(_Timings())
    # KServe's error handlers answer with FastAPI's ORJSONResponse, which FastAPI now deprecates.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


def _gaps(model: Any) -> str:
    """How a request with a suffix is answered, for the start-up line."""
    if model.fim_prompts:
        if model.settings.fim is None:  # auto: the evaluation may have found the prefix alone better
            return "a suffix makes a fill-in-the-middle prompt; --fim off answers from the prefix alone"
        return "a suffix makes a fill-in-the-middle prompt"
    why = "--fim off" if model.fim else "no FIM tokens"
    return f"a suffix is answered from the code before the cursor, to the end of its line ({why})"


def _check_retrieval(source: str | Path, setting: bool | None) -> None:
    """``--retrieval on`` for a local model folder without an index fails before the model loads (an
    ``s3://`` model is checked once it is fetched)."""
    from repotune.retrieval.shipped import MODEL_INDEX_DIR, model_index
    from repotune.storage import is_s3_uri

    if not setting or (isinstance(source, str) and is_s3_uri(source)):
        return
    if model_index(Path(source).expanduser()) is None:
        raise RepotuneError(
            f"--retrieval on: {source} has no retrieval index ({MODEL_INDEX_DIR}/ beside the weights, as "
            "the pipeline's train step puts it there)"
        )


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
    process: subprocess.Popen
    log_path: Path
    """The server's stdout and stderr."""
    model_name: str = ""
    """The name the server lists on ``/openai/v1/models`` (set once it is ready)."""
    token: str | None = None
    """A bearer token the server accepts, when it was started with ``REPOTUNE_SERVE_TOKENS``."""
    temporary_log: bool = False
    """Whether ``log_path`` is a temporary file of ours, removed once the server has stopped."""

    @property
    def headers(self) -> dict[str, str]:
        """``Authorization`` for the server's token, if it has one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def openai_url(self) -> str:
        """The ``base_url`` to give ``openai.OpenAI``."""
        return f"{self.url}/openai/v1"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s`` seconds; a temporary log is removed then."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.temporary_log:
            self.log_path.unlink(missing_ok=True)

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
    replaces the subprocess's environment (default: this process's); a ``REPOTUNE_SERVE_TOKENS`` in it
    turns authentication on, and its first token becomes ``BackgroundServer.token``. Without
    ``model_name`` the server names the model itself (``served_names``), and ``model_name`` is read
    back from ``/openai/v1/models``. The server's output goes to ``log_path``, else to a temporary file
    that ``stop()`` removes. Raises ``RepotuneError`` with the end of the server's log when it exits or
    is not ready within ``ready_timeout_s`` seconds.
    """
    tokens = tokens_from_env(env)
    attempts = 3 if port is None else 1
    for attempt in range(attempts):
        chosen = port if port is not None else free_port(host)
        command = [
            sys.executable,
            "-m",
            "repotune",
            "serve",
            str(model),
            "--port",
            str(chosen),
            "--host",
            host,
        ]
        if model_name is not None:
            command += ["--model-name", model_name]
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
        server = BackgroundServer(
            f"http://{host}:{chosen}",
            process,
            log_file,
            token=next(iter(tokens), None),
            temporary_log=log_path is None,
        )
        try:
            _wait_ready(server, ready_timeout_s)
            return server
        except RepotuneError:
            taken = f"port {chosen} on {host} is in use" in server.log_text()
            server.stop()
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
                    models = client.get(f"{server.openai_url}/models", headers=server.headers)
                    models.raise_for_status()
                    server.model_name = models.json()["data"][0]["id"]
                    return
            time.sleep(0.2)
    raise RepotuneError(f"repotune serve was not ready after {timeout_s:g} s:\n{_tail(server)}")


def _tail(server: BackgroundServer, lines: int = 20) -> str:
    return "\n".join(server.log_text().splitlines()[-lines:])
