"""Rate-limit waits shared by the network sources (GitHub, Confluence, Jira, Notion).

Every service says "slow down" its own way (GitHub's ``X-RateLimit-*``, Atlassian's and Notion's HTTP
429 with ``Retry-After``), but what a run does about it is the same: a short wait is waited out and
said through the log, a long one ends the run with an error that names the limit, and a limit that
keeps coming back ends the run after a bounded number of waits rather than hanging it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from repotune.errors import RepotuneError

# Tests replace this to wait without sleeping.
_sleep: Callable[[float], None] = time.sleep

MAX_WAITS = 10  # per run, so a limit that keeps coming back ends in an error, not a hang
DEFAULT_WAIT_S = 60.0  # when a service says 429 without a usable Retry-After


class RateLimitWaits:
    """The waits one run may still spend on rate limits, and how each is said or refused."""

    def __init__(self, max_wait_s: float, log: Callable[[str], None], max_waits: int = MAX_WAITS) -> None:
        self.max_wait_s = max_wait_s
        self.max_waits = max_waits
        self.waits_left = max_waits
        self.log = log

    def wait(self, seconds: float, *, limit: str, waiting: str, too_long: str, hint: str) -> None:
        """Sleep ``seconds`` after logging ``waiting``, or raise when the wait is not worth it.

        ``limit`` names the limit in the error raised once every wait is spent; ``too_long`` is the
        error when ``seconds`` exceeds ``max_wait_s``; ``hint`` (what the user can do) ends both.
        """
        if self.waits_left <= 0:
            raise RepotuneError(f"{limit} still reached after {self.max_waits} waits; {hint}")
        if seconds > self.max_wait_s:
            raise RepotuneError(f"{too_long}; {hint}")
        self.waits_left -= 1
        self.log(waiting)
        _sleep(seconds)

    def retry_after(self, service: str, headers: Mapping[str, str], *, limit: str, hint: str) -> None:
        """Wait out an HTTP 429 from ``service`` as its ``Retry-After`` header asks.

        ``limit`` describes the limit for the messages (e.g. ``HTTP 429, jira-quota-tenant-based``).
        """
        seconds = retry_after_seconds(headers.get("retry-after") or headers.get("Retry-After"))
        if seconds is None:
            seconds = DEFAULT_WAIT_S
        self.wait(
            seconds,
            limit=f"{service} rate limit ({limit})",
            waiting=f"{service} rate limit reached ({limit}); waiting {math.ceil(seconds)} s",
            too_long=(
                f"{service} rate limit ({limit}): asked to wait {math.ceil(seconds)} s, "
                f"more than {self.max_wait_s:g} s"
            ),
            hint=hint,
        )


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds or an HTTP date; at least 1 s.

    ``None`` when the header is absent or unreadable.
    """
    if value is None or not value.strip():
        return None
    try:
        return max(float(value), 1.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 1.0)
