"""Errors a client caused or must wait out, carried to the HTTP layer as OpenAI-style bodies."""

from __future__ import annotations

from typing import Any


class ServingError(Exception):
    """A request that cannot be served, with the HTTP status and the OpenAI error fields to send.

    OpenAI's error body is ``{"error": {"message", "type", "param", "code"}}``; its client turns the
    status into ``BadRequestError`` (400), ``NotFoundError`` (404), ``RateLimitError`` (429) and so on.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.logged = False
        """Whether the request's line in the request log already says how it ended (an answer cut short
        writes its own, ``repotune.serving.model.Served``); a refusal's is written as it is answered."""

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """HTTP headers of the answer: ``Retry-After`` for a busy server (the openai client waits that
        long before it retries)."""
        return {"Retry-After": "1"} if self.status in (429, 503) else {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ServingError:
    return ServingError(400, message, param=param, code=code)


class QueueFull(ServingError):
    """The queue cannot take all of a request's generations now; the client should retry later."""

    def __init__(self, limit: int, waiting: int, asked: int) -> None:
        super().__init__(
            429,
            f"the server is busy: {waiting} of at most {limit} generations are waiting, and this request "
            f"adds {asked}; retry later",
            type="rate_limit_error",
            code="queue_full",
        )


class Unavailable(ServingError):
    """The model is not loaded, or the server is stopping."""

    def __init__(self, message: str) -> None:
        super().__init__(503, message, type="server_error", code="unavailable")


class Timeout(ServingError):
    """A request ran past the server's request timeout (queue wait included)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            504,
            f"the request did not finish within the server's timeout of {seconds:g} s",
            type="timeout_error",
            code="timeout",
        )
