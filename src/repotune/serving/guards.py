"""ASGI middleware in front of every route of the model server: bearer tokens, body size, JSON depth,
and clients that go away before their answer starts.

They sit outside KServe's routes and this project's alike, so one check covers the OpenAI routes, the
KServe v1/v2 routes and whatever KServe adds. Their refusals carry OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

from repotune import http_limits
from repotune.api.auth import token_matches

# Health and readiness stay open: KServe's and Kubernetes' probes carry no token.
_PROBES = re.compile(r"/|/v2/health/(live|ready)|/v1/models/[^/:]+|/v2/models/[^/]+(/versions/[^/]+)?/ready")


async def _refuse(
    send: Callable, status: int, message: str, code: str, type_: str = "invalid_request_error",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:  # fmt: skip
    payload = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


class BearerAuth:
    """401 unless the request carries ``Authorization: Bearer TOKEN`` with one of ``tokens`` (compared in
    constant time, as the upload API compares them); health and readiness probes pass without one."""

    def __init__(self, app: Any, tokens: tuple[str, ...]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or (
            scope["method"] in ("GET", "HEAD") and _PROBES.fullmatch(scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, credentials = header.partition(" ")
        if (
            scheme.lower() == "bearer"
            and credentials.strip()
            and token_matches(credentials.strip(), self.tokens)
        ):
            await self.app(scope, receive, send)
            return
        message = (
            "invalid bearer token" if header else "missing bearer token: send 'Authorization: Bearer TOKEN'"
        )
        # OpenAI answers a bad key with 401 and code invalid_api_key; its client raises AuthenticationError.
        await _refuse(send, 401, message, "invalid_api_key", headers=((b"www-authenticate", b"Bearer"),))


class BodyGuard(http_limits.BodyGuard):
    """413 for request bodies over ``max_bytes``, 400 for JSON nested deeper than ``max_depth`` (the
    shared guard of ``repotune.http_limits``), refused with OpenAI's error body."""

    def __init__(self, app: Any, max_bytes: int, max_depth: int) -> None:
        super().__init__(app, max_bytes, max_depth, refuse=_refuse)


class CancelOnDisconnect:
    """Cancels a request whose client goes away before its answer starts.

    A whole (not streamed) answer is generated while its client waits for the first byte, and neither
    Starlette nor KServe looks at the connection meanwhile: a client that timed out would have its
    request generated to the end all the same (the openai client tries twice more: three times over),
    and the request log would say it finished. Once the app has read the body, the next ``receive``
    returns only when the client disconnects (or the answer is complete); that wait runs here beside
    the app, and a disconnect before the answer starts cancels the request's task: the model's rows
    stop at their next token or never start, and the request's line says the client went away. A
    stream has started its answer, and is left to Starlette, which ends it when the client goes.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        task = asyncio.current_task()
        answering = cut = False
        after_body: dict[str, Any] = {"type": "http.disconnect"}
        arrived = asyncio.Event()
        watcher: asyncio.Task | None = None

        async def watch() -> None:
            nonlocal after_body, cut
            after_body = await receive()
            arrived.set()
            if after_body["type"] == "http.disconnect" and not answering and task is not None:
                cut = True
                task.cancel()

        async def relay() -> dict[str, Any]:
            nonlocal watcher
            if watcher is not None:  # the body is read: the watcher holds the one receive left
                await arrived.wait()
                return after_body
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        async def sending(message: dict[str, Any]) -> None:
            nonlocal answering
            answering = answering or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, relay, sending)
        except asyncio.CancelledError:
            # Nobody is left to answer; a cancellation from elsewhere (the server stopping) goes on.
            if not cut or task is None or task.uncancel() > 0:
                raise
        finally:
            if watcher is not None:
                watcher.cancel()
