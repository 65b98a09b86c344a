"""One error shape for every 4xx and 5xx answer: ``{"error": {"message": ..., "code": ...}}``.

``install_handlers`` makes FastAPI's and Starlette's own errors (404 for an unknown route, 422 for a
body that fails its model, anything unexpected) answer in that shape too.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("repotune.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


class ApiError(Exception):
    """An answer other than success, worded for the client; ``code`` is a stable, machine-readable name."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.details = details


class ErrorDetail(BaseModel):
    message: str
    code: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


# The answers every /v1 route may give, as the OpenAPI document lists them.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "Missing or wrong bearer token",
        404: "Not found",
        422: "Invalid request",
    }.items()
}


# The answers of the body guard in front of every JSON route (``middleware.BodyLimits``).
BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "JSON nested deeper than the limit (json_too_deep)"},
    413: {"model": ErrorBody, "description": "Body over the size limit (request_too_large)"},
}


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"message": message, "code": code}
    if details is not None:
        detail["details"] = details
    return {"error": detail}


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers
    )


def describe(errors: Any) -> tuple[str, list[dict[str, Any]]]:
    """pydantic's validation errors as one line for people and a list for programs."""
    details = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    message = "; ".join(f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details) or "invalid request"
    return message, details


def validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    """``model`` from ``body``, or a 422 ApiError naming what is wrong."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        message, details = describe(exc.errors())
        raise ApiError(422, "invalid_request", message, details=details) from None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "error")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, details = describe(exc.errors())
    return JSONResponse(error_body("invalid_request", message, details), status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        error_body("internal_error", "internal error; the API's log has the details"), status_code=500
    )


def install_handlers(app: FastAPI) -> None:
    """Every error the app can raise answers with :class:`ErrorBody`."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
