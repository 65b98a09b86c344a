"""ASGI middleware in front of every route: authentication first, so that an unauthenticated client
learns nothing from validation errors and sends no upload into the server's disk."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from repotune.api.auth import check_bearer
from repotune.api.errors import ApiError, error_response
from repotune.api.settings import ApiSettings


class BearerAuth:
    """Checks the token on /v1/* before anything else happens; /healthz and /openapi.json stay open."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            try:
                check_bearer(Request(scope), self.settings.tokens, self.settings.allow_no_auth)
            except ApiError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
