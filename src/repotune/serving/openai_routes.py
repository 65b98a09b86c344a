"""OpenAI-compatible routes on KServe's FastAPI app: ``/openai/v1/completions`` (with fill in the
middle), ``/openai/v1/chat/completions``, ``/openai/v1/models`` and ``/openai/v1/models/{model}``.

kserve 0.21 ships OpenAI routes of its own, but they import vLLM's types and are skipped without vLLM
(a CUDA-only package), so these routes are registered on ``kserve.model_server.app`` instead. They are
thin, as KServe's are: parse the body into a typed request (``repotune.serving.protocol``), call the
model's ``create_completion`` / ``create_chat_completion``, and write its answer as JSON, or as
server-sent events ending with ``data: [DONE]`` when it streams.

Every refusal is a 4xx (or 429/503/504) with OpenAI's error body ``{"error": {"message", "type",
"param", "code"}}``, and a line in the request log. Once a stream has started, the only error left is
the request's timeout, which arrives as an error event (the openai client raises it; its last choice
finishes, for Tabby).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from openai.types import Model
from pydantic import BaseModel
from starlette.routing import Match

from repotune.serving.errors import ServingError
from repotune.serving.model import REQUEST_ID, RepotuneModel, refusal_line, request_log
from repotune.serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_json,
    request_schema,
    validated,
)

PREFIX = "/openai/v1"


def error_response(err: ServingError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers={**err.headers(), **(headers or {})})


def request_id(request: Request) -> str | None:
    """The request's ``X-Request-Id`` (set by Istio/KServe's ingress, or the client), for its line."""
    return request.headers.get("x-request-id", "")[:128] or None


def refused(request: Request, err: ServingError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The refusal in OpenAI's shape, and its line in the request log (an answer cut short has written
    its own)."""
    if not err.logged:
        request_log.info(refusal_line(request.url.path, err, request_id(request)))
    return error_response(err, headers)


def register_openai_routes(app: FastAPI, model: RepotuneModel) -> None:
    """Add ``/openai/v1/models`` (and each model), ``/openai/v1/completions`` and
    ``/openai/v1/chat/completions``; another method on one of them is a 405 that names the one it takes,
    and any other path under ``/openai/v1`` a 404, both in OpenAI's shape."""
    router = APIRouter()

    def card(name: str) -> dict[str, Any]:
        return Model(id=name, created=int(time.time()), object="model", owned_by="repotune").model_dump(
            mode="json"
        )

    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card(model.name)]})

    async def retrieve_model(request: Request, name: str) -> JSONResponse:
        try:
            model.check_model(name)
        except ServingError as err:
            return refused(request, err)
        return JSONResponse(card(name))

    async def unknown(request: Request, path: str) -> JSONResponse:
        # A route of this server asked with another method matches the route's path only (PARTIAL).
        allow = sorted(
            {
                method
                for route in routes
                if route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods
            }
        )
        if allow:
            message = f"{PREFIX}/{path} takes {' or '.join(allow)}, not {request.method}"
            err = ServingError(405, message, code="method_not_allowed")
            return refused(request, err, {"Allow": ", ".join(allow)})
        return refused(
            request, ServingError(404, f"{PREFIX}/{path} is not a route of this server", code="unknown_url")
        )

    async def completions(request: Request) -> Response:
        REQUEST_ID.set(request_id(request))
        try:
            params = validated(CompletionRequest, parse_json(await request.body()))
            return respond(await model.create_completion(params), chat=False)
        except ServingError as err:
            return refused(request, err)

    async def chat_completions(request: Request) -> Response:
        REQUEST_ID.set(request_id(request))
        try:
            params = validated(ChatCompletionRequest, parse_json(await request.body()))
            return respond(await model.create_chat_completion(params), chat=True)
        except ServingError as err:
            return refused(request, err)

    router.add_api_route(f"{PREFIX}/models", list_models, methods=["GET"])
    router.add_api_route(f"{PREFIX}/models/{{name}}", retrieve_model, methods=["GET"])
    router.add_api_route(
        f"{PREFIX}/completions", completions, methods=["POST"], openapi_extra=_body(CompletionRequest)
    )
    router.add_api_route(
        f"{PREFIX}/chat/completions",
        chat_completions,
        methods=["POST"],
        openapi_extra=_body(ChatCompletionRequest),
    )
    routes = [route for route in router.routes if isinstance(route, APIRoute)]
    # last: any other path or method under the prefix answers in OpenAI's error shape, not FastAPI's
    router.add_api_route(
        f"{PREFIX}/{{path:path}}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )  # fmt: skip
    app.include_router(router)


def _body(kind: type[BaseModel]) -> dict[str, Any]:
    # The routes read the body themselves (any content type, the errors in OpenAI's shape); this puts
    # the typed request in /openapi.json all the same.
    schema = request_schema(kind)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def respond(answer: BaseModel | AsyncIterator[BaseModel], *, chat: bool = False) -> Response:
    """A whole answer as JSON; chunks as server-sent events, then ``data: [DONE]``."""
    if isinstance(answer, BaseModel):
        return JSONResponse(answer.model_dump(mode="json"))

    async def events() -> AsyncIterator[str]:
        # aclosing: a client that goes away closes the model's stream, which cancels its rows.
        try:
            async with aclosing(answer) as chunks:
                async for chunk in chunks:
                    yield _sse(chunk)
        except ServingError as err:
            yield _sse(stream_error(err, chat=chat))
            return
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def stream_error(err: ServingError, *, chat: bool) -> dict[str, Any]:
    """The event that ends a stream cut short (the request's timeout; headers are gone already): the
    error, which the openai client raises, and a last choice that finishes, for clients that read only
    ``choices`` (Tabby parses every event as a chunk, and an error alone would fail its parser)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": "length"}
    choice |= {"delta": {}} if chat else {"text": "", "logprobs": None}
    return {
        **err.body(),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "choices": [choice],
    }


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json(warnings=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"
