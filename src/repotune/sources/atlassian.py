"""What the Confluence and Jira sources share: credentials from the environment, and one GET.

Both products authenticate the same two ways:

- Cloud: an account's email and an API token, sent as HTTP Basic (``{P}_USER`` and ``{P}_TOKEN``);
- Data Center / Server: a personal access token, sent as ``Authorization: Bearer`` (``{P}_PAT``).

with ``P`` = ``CONFLUENCE`` or ``JIRA``, and the site in ``{P}_URL`` unless the config names it.
Tokens are read from the environment only (on a cluster, from the Kubernetes Secrets
``repotune-confluence`` and ``repotune-jira``), never from parameters, and never logged.

The HTTP work goes through ``atlassian-python-api``'s clients (session, authentication, URL joining)
in their ``advanced_mode``, which hands back the raw response: the sources read the status
themselves, because the library's own handling of HTTP 429 sleeps silently (for up to 30 minutes)
and its errors mix several lines of server text. Here a 429 is waited out visibly or refused with a
one-line error (``repotune.sources.ratelimit``), and every other failure is one line naming the
source, the product and what to check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import requests

from repotune.errors import RepotuneError
from repotune.records import as_utc
from repotune.sources.ratelimit import RateLimitWaits


@dataclass(frozen=True)
class Credentials:
    url: str
    """The site, e.g. https://example.atlassian.net/wiki or https://confluence.example.com."""
    user: str | None = None
    token: str | None = field(default=None, repr=False)
    bearer: bool = False
    """True for a personal access token (Bearer), False for email + API token (Basic)."""
    env: str = ""
    """The variables the credentials came from, for error messages (names only, never values)."""

    def client_kwargs(self) -> dict[str, Any]:
        if self.token is None:
            return {}
        if self.bearer:
            return {"token": self.token}
        return {"username": self.user, "password": self.token}


def credentials(prefix: str, product: str, url: str | None, setting: str) -> Credentials:
    """Credentials for ``product`` from ``{prefix}_URL``, ``{prefix}_USER``/``_TOKEN`` or ``{prefix}_PAT``.

    ``url`` (the config's ``setting``) wins over ``{prefix}_URL``. No token at all is allowed (a site
    may let anonymous users read); the server's 401 then says which variables to set.
    """
    site = (url or os.environ.get(f"{prefix}_URL") or "").strip()
    if not site:
        raise RepotuneError(f"{product}: no site URL; set {setting} or {prefix}_URL")
    if not re.match(r"^https?://[^/\s]+", site):
        raise RepotuneError(f"{product}: {setting} / {prefix}_URL must be an http(s) URL, got {site!r}")
    site = site.rstrip("/")
    pat = os.environ.get(f"{prefix}_PAT") or None
    user = os.environ.get(f"{prefix}_USER") or None
    token = os.environ.get(f"{prefix}_TOKEN") or None
    if pat is not None:
        return Credentials(site, None, pat, bearer=True, env=f"{prefix}_PAT")
    if token is not None:
        if user is None:
            raise RepotuneError(
                f"{product}: {prefix}_TOKEN is an API token and needs {prefix}_USER (the account's email); "
                f"for a personal access token set {prefix}_PAT instead"
            )
        return Credentials(site, user, token, bearer=False, env=f"{prefix}_USER/{prefix}_TOKEN")
    return Credentials(site, env=f"{prefix}_USER and {prefix}_TOKEN (Cloud) or {prefix}_PAT (Data Center)")


class AtlassianClient:
    """GETs through an atlassian-python-api client, with rate-limit waits and one-line errors."""

    def __init__(
        self,
        product: str,
        source: str,
        creds: Credentials,
        client: Any,
        max_wait_s: float,
        log: Callable[[str], None],
    ) -> None:
        self.product = product
        self.source = source
        self.creds = creds
        self.client = client
        self.waits = RateLimitWaits(max_wait_s, log)

    @property
    def url(self) -> str:
        return self.creds.url

    def close(self) -> None:
        self.client.close()

    def get(
        self, path: str, params: dict[str, Any] | None = None, *, absolute: bool = False, not_found: str
    ) -> dict[str, Any]:
        """GET ``path`` (relative to the site, or an absolute URL) and return its JSON object."""
        return self.call(
            lambda: self.client.get(path, params=params, absolute=absolute, advanced_mode=True),
            where=path,
            not_found=not_found,
        )

    def call(self, send: Callable[[], requests.Response], *, where: str, not_found: str) -> dict[str, Any]:
        """Send one request (``send`` returns the raw response) until it is not rate-limited.

        ``not_found`` is the error for a JSON 404 (the product's "no such thing, or no permission").
        """
        while True:
            try:
                response = send()
            except requests.exceptions.Timeout:
                raise RepotuneError(
                    f"{self.source}: {self.product} at {self.url} did not answer within the timeout"
                ) from None
            except requests.exceptions.ConnectionError as exc:
                raise RepotuneError(
                    f"cannot reach {self.product} at {self.url}: {connection_reason(exc)}"
                ) from None
            except requests.exceptions.RequestException as exc:
                raise RepotuneError(
                    f"{self.source}: request to {self.product} failed ({type(exc).__name__})"
                ) from None
            if response.status_code == 429 or (
                response.status_code == 503 and "retry-after" in {k.lower() for k in response.headers}
            ):
                reason = response.headers.get("RateLimit-Reason") or f"HTTP {response.status_code}"
                self.waits.retry_after(self.product, response.headers, limit=reason, hint="retry later")
                continue
            return self._json(response, where, not_found)

    def _json(self, response: requests.Response, where: str, not_found: str) -> dict[str, Any]:
        status = response.status_code
        try:
            data = response.json()
        except ValueError:
            data = None
        if status == 401:
            if self.creds.token is None:
                raise RepotuneError(
                    f"{self.source}: {self.product} at {self.url} needs credentials (401); "
                    f"set {self.creds.env}"
                )
            raise RepotuneError(
                f"{self.source}: {self.product} rejected the credentials (401): the token is wrong, "
                f"expired or revoked; check {self.creds.env}"
            )
        if not isinstance(data, dict):
            kind = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise RepotuneError(
                f"{self.source}: {self.url} did not answer like the {self.product} REST API "
                f"(HTTP {status}, {kind} at {_path_only(where)}); check the URL"
            )
        if status == 403:
            raise RepotuneError(
                f"{self.source}: {self.product} refused access (403: {_message(data)}); the account behind "
                f"{self.creds.env} lacks permission"
            )
        if status == 404:
            raise RepotuneError(not_found)
        if status >= 400:
            raise RepotuneError(f"{self.source}: {self.product} answered {status} ({_message(data)})")
        return data


def _message(data: dict[str, Any]) -> str:
    messages = list(data.get("errorMessages") or [])
    if isinstance(data.get("errors"), dict):
        messages.extend(str(v) for v in data["errors"].values())
    if data.get("message"):
        messages.append(str(data["message"]))
    text = "; ".join(str(m) for m in messages if m) or "no message"
    return " ".join(text.split())[:200]


def _path_only(where: str) -> str:
    return re.sub(r"^https?://[^/]+", "", where).split("?")[0] or "/"


def connection_reason(exc: BaseException) -> str:
    # requests nests the OS error several layers deep; its "[Errno 111] Connection refused" is the news.
    match = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(exc))
    return match.group(1).strip().lower() if match else "connection failed"


def stamp(moment: datetime | None) -> str:
    """A path-safe UTC time for revision strings: ``20240301T101500Z``."""
    return as_utc(moment).strftime("%Y%m%dT%H%M%SZ") if moment is not None else "none"
