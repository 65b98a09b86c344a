"""Limits on HTTP request bodies that hold before any parser sees them: size, and JSON nesting depth.

Python's ``json`` module recurses once per level, so a body of 5,000 ``[`` raises RecursionError
inside whatever parses it (a 500, or a vague 400). :class:`BodyGuard` reads the body first (at most
``max_bytes`` and one chunk), counts its nesting on the raw bytes, and only then hands it on. The model
server (``repotune.serving.guards``) and the upload API (``repotune.api.middleware``) both use it; each
gives the refusal its own error body.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

MAX_JSON_DEPTH = 32
"""Levels of arrays and objects a request body may nest; the API's and the model's bodies use 2-4."""

# Bytes outside JSON strings that open or close a level; everything else is deleted before counting.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

Refusal = Callable[[Callable, int, str, str], Awaitable[None]]
"""Sends an error answer: ``(send, status, message, code)``."""


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when arrays and objects in ``body`` nest deeper than ``limit``.

    Counted on the raw bytes, before any parser recurses into them: strings are cut out (a bracket
    inside one does not count), then only brackets are kept. Linear in the body's size.
    """
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class BodyGuard:
    """``refuse`` answers 413 for a request body over ``max_bytes`` and 400 for one nested deeper than
    ``max_depth``; requests for which ``passes(scope)`` is true go through unread (an upload the app
    streams to disk under its own cap, say).

    The body is read (at most ``max_bytes`` + one chunk) before the app sees it, so a client that sends
    a huge or endless body is refused early, whether or not it sent a Content-Length.
    """

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        max_depth: int,
        refuse: Refusal,
        passes: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.refuse = refuse
        self.passes = passes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or (self.passes is not None and self.passes(scope)):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
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
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body, self.max_depth):
            await self.refuse(
                send, 400, f"the request body nests arrays and objects deeper than {self.max_depth} levels",
                "json_too_deep",
            )  # fmt: skip
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        await self.refuse(
            send, 413, f"the request body is larger than this server's limit of {self.max_bytes} bytes",
            "request_too_large",
        )  # fmt: skip
