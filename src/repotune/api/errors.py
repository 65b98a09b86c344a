"""One error shape for every 4xx and 5xx answer: ``{"error": {"message": ..., "code": ...}}``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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


def error_body(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"message": message, "code": code}
    if details is not None:
        detail["details"] = details
    return {"error": detail}
