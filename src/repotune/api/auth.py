"""Bearer-token authentication for /v1/*: tokens come from configuration, compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request
from fastapi.security import HTTPBearer

from repotune.api.errors import ApiError

# auto_error=False: a missing header must give this API's 401 body, not FastAPI's default 403.
bearer = HTTPBearer(auto_error=False, description="One of the tokens in REPOTUNE_API_TOKENS.")

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def token_matches(given: str, tokens: tuple[str, ...]) -> bool:
    """True when ``given`` is one of ``tokens``; every token is compared, each in constant time, so the
    time taken says nothing about which token or how much of one matched."""
    given_bytes = given.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given_bytes, token.encode())
    return matched


def check_bearer(request: Request, tokens: tuple[str, ...], allow_no_auth: bool) -> None:
    """Raises 401 (with a ``WWW-Authenticate: Bearer`` challenge) unless the request carries a valid token."""
    if allow_no_auth:
        return
    header = request.headers.get("authorization")
    if header is None:
        raise ApiError(
            401, "unauthorized", "missing bearer token: send 'Authorization: Bearer TOKEN'", CHALLENGE
        )
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(401, "unauthorized", "the Authorization header must be 'Bearer TOKEN'", CHALLENGE)
    if not token_matches(credentials.strip(), tokens):
        raise ApiError(401, "unauthorized", "invalid bearer token", CHALLENGE)
