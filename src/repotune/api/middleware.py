"""ASGI middleware in front of every route: the bearer token first (an unauthenticated client learns
nothing from validation errors and sends no upload into the server's disk), then body limits."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from repotune.api.auth import check_bearer
from repotune.api.errors import ApiError, error_body, error_response
from repotune.api.settings import ApiSettings
from repotune.http_limits import MAX_JSON_DEPTH, BodyGuard

# The largest body a client has reason to send besides an upload: a completions request of 64 prompts
# of 100,000 characters each (escaped), in bytes.
MAX_BODY_BYTES = 16 * 1024 * 1024


def route_path(scope: Scope) -> str:
    """The path the app's routes are matched against: ``scope["path"]`` less the root path, which holds
    the prefix when the app is served under one (uvicorn's ``root_path``, or mounted in another app).
    Starlette's router's own function, so that what is checked here is what is routed."""
    return get_route_path(scope)


class BearerAuth:
    """Checks the token on /v1/* before anything else happens; /healthz and /openapi.json stay open."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope).startswith("/v1/"):
            try:
                check_bearer(Request(scope), self.settings.tokens, self.settings.allow_no_auth)
            except ApiError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_upload(scope: dict[str, Any]) -> bool:
    """An archive upload: streamed to disk by its route under REPOTUNE_API_MAX_UPLOAD_MB, never parsed
    as JSON, so the body limits let it through unread."""
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
    return (
        scope["method"] == "POST"
        and route_path(scope) == "/v1/sources"
        and content_type.split(b";")[0].strip().lower() == b"multipart/form-data"
    )


async def _refuse(send: Callable, status: int, message: str, code: str) -> None:
    payload = json.dumps(error_body(code, message), separators=(",", ":")).encode()  # as JSONResponse
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodyLimits(BodyGuard):
    """413 over ``MAX_BODY_BYTES``, 400 for JSON nested deeper than ``MAX_JSON_DEPTH`` levels (counted
    before any parser recurses), in the API's error body; uploads pass (see :func:`is_upload`)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH
    ) -> None:
        super().__init__(app, max_bytes, max_depth, refuse=_refuse, passes=is_upload)
