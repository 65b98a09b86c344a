"""`github:OWNER/REPO`: issues and pull requests, one record per thread, through PyGithub.

PyGithub does the HTTP work (authentication, base URL, error classification), but pages are requested
through its public ``Github.requester`` rather than ``Repository.get_issues()``, for two reasons found
in PyGithub 2.x's source: iterating a ``PaginatedList`` keeps every fetched ``Issue`` in a list for
the life of the iterator, and reading ``Issue.pull_request`` on a plain issue (the key is absent there)
triggers one extra GET per issue to "complete" the object. Plain JSON pages keep memory flat and make
the request count predictable: one request per 100 issues, plus one for the comments of an issue
that has any, plus one for the review comments of each pull request.

Linking: a pull request's ``meta["linked_issues"]`` lists the issues its body closes with a GitHub
closing keyword (``fixes #12``, ``Closes owner/repo#12``, or an issue URL in the same repository). An
issue's ``meta["linked_prs"]`` lists the pull requests seen *earlier in this run* that close it. Issues
come newest-created first, and a fixing pull request is usually opened after its issue, so most links
are found; a link from an older pull request, or from one outside ``since``, is not.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import requests
from github import Auth, Consts, Github, GithubException, RateLimitExceededException

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, as_utc, record_id
from repotune.sources.base import IngestStats
from repotune.sources.ratelimit import RateLimitWaits
from repotune.sources.threads import ThreadComment, day, thread_markdown

# Tests replace this: PyGithub's own pause between requests (seconds; its default 0.25 keeps a long
# ingest clear of GitHub's secondary rate limits). Rate-limit waits sleep in repotune.sources.ratelimit.
_SECONDS_BETWEEN_REQUESTS: float | None = Consts.DEFAULT_SECONDS_BETWEEN_REQUESTS

_PER_PAGE = 100  # the most GitHub returns per page
_SECONDARY_LIMIT_WAIT_S = 60.0  # GitHub's advice when a secondary limit names no Retry-After
_PROGRESS_EVERY = 100  # issues and pull requests between progress lines
_HUNK_LINE_CHARS = 200  # a review comment quotes only the diff line it is attached to

_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

# GitHub's closing keywords, each followed by `#N`, `owner/repo#N` or an issue URL.
# https://docs.github.com/en/issues/tracking-your-work-with-issues/linking-a-pull-request-to-an-issue
_CLOSING_RE = re.compile(
    r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?):?\s+"
    r"(?:"
    r"(?:(?P<owner>[\w.-]+)/(?P<name>[\w.-]+))?#(?P<number>\d+)"
    r"|https?://[^\s/]+/(?P<url_owner>[\w.-]+)/(?P<url_name>[\w.-]+)/issues/(?P<url_number>\d+)"
    r")\b",
    re.IGNORECASE,
)


def iter_github(
    repo: str,
    *,
    stats: IngestStats,
    token: str | None = None,
    base_url: str | None = None,
    since: datetime | None = None,
    kinds: frozenset[Kind] | None = None,
    max_wait_s: float = 60.0,
    log: Callable[[str], None] | None = None,
    timeout_s: int = 15,
) -> Iterator[Record]:
    """Yield one record per issue and per pull request of ``repo`` ("OWNER/REPO"), as pages arrive.

    ``token`` falls back to ``GITHUB_TOKEN``; ``base_url`` is the API root (GitHub Enterprise:
    ``https://HOST/api/v3``); ``since`` keeps threads updated at or after that time (naive means UTC);
    ``kinds`` picks issues and/or pull requests (``None``: both). A rate limit that resets within
    ``max_wait_s`` seconds is waited out (and said through ``log``); a later reset raises
    ``RepotuneError``. ``timeout_s`` bounds each HTTP request, in seconds.
    """
    if not _REPO_RE.match(repo):
        raise RepotuneError(f"github:{repo}: expected github:OWNER/REPO")
    wanted = frozenset({Kind.ISSUE, Kind.PULL_REQUEST}) if kinds is None else kinds
    if not wanted & {Kind.ISSUE, Kind.PULL_REQUEST}:
        return
    say = log or _no_log
    token = token or os.environ.get("GITHUB_TOKEN") or None
    source = f"github:{repo}"
    client = _Client(repo, token, base_url, max_wait_s, say, timeout_s)
    try:
        client.get(f"/repos/{repo}")  # fails early, and clearly, on a wrong name or a bad token
        params: dict[str, Any] = {"state": "all", "per_page": _PER_PAGE}
        if since is not None:
            params["since"] = as_utc(since).strftime("%Y-%m-%dT%H:%M:%SZ")
            say(f"{source}: reading issues and pull requests updated since {params['since']}")
        else:
            say(f"{source}: reading issues and pull requests")

        closed_by: dict[int, list[int]] = {}  # issue number -> pull requests seen so far that close it
        seen: set[int] = set()  # a thread created mid-run shifts pages; skip what was already read
        read = 0
        for item in client.pages(f"/repos/{repo}/issues", params):
            number = item["number"]
            if number in seen:
                stats.skip("duplicate")
                continue
            seen.add(number)
            read += 1
            if read % _PROGRESS_EVERY == 0:
                say(f"{source}: {read} issues and pull requests read")

            is_pr = item.get("pull_request") is not None
            kind = Kind.PULL_REQUEST if is_pr else Kind.ISSUE
            linked = linked_issues(item.get("body") or "", repo, number) if is_pr else []
            for issue in linked:
                closed_by.setdefault(issue, []).append(number)
            if kind not in wanted:
                continue

            comments = _thread_comments(client, repo, item, is_pr)
            meta = _meta(item, is_pr)
            # Each comment's time, in the thread's order: the headings carry only its day, and a
            # temporal split cuts the thread at the cut's moment (clean.split.comments_up_to).
            meta["comment_times"] = [c.get("created_at") for c in comments]
            if is_pr:
                meta["linked_issues"] = linked
                meta["review_comments"] = sum(1 for c in comments if c.get("path"))
            else:
                meta["linked_prs"] = sorted(closed_by.get(number, []))
            stats.kept[str(kind)] += 1
            yield Record(
                content=thread_text(item, comments, is_pr),
                kind=kind,
                source=source,
                id=record_id(source, kind, str(number)),
                language="markdown",
                meta=meta,
            )
        say(f"{source}: {read} issues and pull requests read")
    finally:
        client.close()


def linked_issues(body: str, repo: str, number: int | None = None) -> list[int]:
    """Issue numbers in ``repo`` that a pull request body closes through GitHub's closing keywords."""
    owner, name = repo.lower().split("/")
    found: list[int] = []
    for match in _CLOSING_RE.finditer(body):
        if match["number"] is not None:
            other_owner, other_name, text = match["owner"], match["name"], match["number"]
        else:
            other_owner, other_name, text = match["url_owner"], match["url_name"], match["url_number"]
        if other_owner is not None and (other_owner.lower(), other_name.lower()) != (owner, name):
            continue
        issue = int(text)
        if issue != number and issue not in found:
            found.append(issue)
    return found


def thread_text(item: dict[str, Any], comments: list[dict[str, Any]], is_pr: bool) -> str:
    """The thread as Markdown (``threads.thread_markdown``): title, state and labels, body, comments."""
    what = "Pull request" if is_pr else "Issue"
    state = item.get("state") or "unknown"
    if is_pr and (item.get("pull_request") or {}).get("merged_at"):
        state = "merged"
    status = f"{what} #{item['number']} · {state}"
    labels = _label_names(item)
    if labels:
        status += f" · labels: {', '.join(labels)}"
    return thread_markdown(
        item.get("title") or "",
        status,
        _login(item),
        _day(item.get("created_at")),
        item.get("body") or "",
        (
            ThreadComment(_login(c), _day(c.get("created_at")), c.get("body") or "", _review_note(c))
            for c in comments
        ),
    )


def _review_note(comment: dict[str, Any]) -> str:
    if not comment.get("path"):
        return ""
    line = comment.get("line") or comment.get("original_line")
    where = f"{comment['path']}:{line}" if line else comment["path"]
    note = f"review comment on {where}"
    hunk_lines = (comment.get("diff_hunk") or "").splitlines()
    if hunk_lines:
        # The hunk ends at the line the comment is attached to; the rest is context.
        note += f"\n\n```diff\n{hunk_lines[-1][:_HUNK_LINE_CHARS]}\n```"
    return note


class _Client:
    """GET requests through PyGithub's requester, with rate-limit waits and one-line errors."""

    def __init__(
        self,
        repo: str,
        token: str | None,
        base_url: str | None,
        max_wait_s: float,
        log: Callable[[str], None],
        timeout_s: int,
    ) -> None:
        self.repo = repo
        self.has_token = token is not None
        self.base_url = (base_url or Consts.DEFAULT_BASE_URL).rstrip("/")
        self.max_wait_s = max_wait_s
        self.timeout_s = timeout_s
        self.log = log
        self.waits = RateLimitWaits(max_wait_s, log)
        # retry=None: PyGithub's default retry sleeps silently through rate limits, for up to an hour.
        self._github = Github(
            auth=Auth.Token(token) if token else None,
            base_url=self.base_url,
            timeout=timeout_s,
            per_page=_PER_PAGE,
            retry=None,
            seconds_between_requests=_SECONDS_BETWEEN_REQUESTS,
        )

    def close(self) -> None:
        self._github.close()

    def get(self, url: str, params: dict[str, Any] | None = None) -> tuple[dict[str, Any], Any]:
        """One GET; a rate limit is waited out and the same request sent again."""
        while True:
            try:
                return self._github.requester.requestJsonAndCheck("GET", url, parameters=params)
            except GithubException as exc:
                if not _is_rate_limit(exc):
                    raise self._error(exc) from None
                self._wait_for(exc)
            except requests.exceptions.Timeout:
                raise RepotuneError(
                    f"GitHub at {self.base_url} did not answer within {self.timeout_s} s"
                ) from None
            except requests.exceptions.ConnectionError as exc:
                raise RepotuneError(f"cannot reach GitHub at {self.base_url}: {_reason(exc)}") from None

    def pages(self, url: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Items of a list endpoint, one page in memory at a time, following the Link header."""
        next_url: str | None = url
        next_params: dict[str, Any] | None = params
        while next_url is not None:
            headers, data = self.get(next_url, next_params)
            if not isinstance(data, list):
                raise RepotuneError(
                    f"{self.base_url}{url} did not answer like the GitHub API (expected a JSON list)"
                )
            yield from data
            # The next link carries every query parameter already.
            next_url, next_params = _next_link(headers.get("link")), None

    def _wait_for(self, exc: GithubException) -> None:
        headers = exc.headers or {}
        wait_s, reset_epoch = _rate_limit_wait(headers, time.time())
        resource = headers.get("x-ratelimit-resource", "core")
        limit = headers.get("x-ratelimit-limit")
        hint = "retry later" if self.has_token else "set GITHUB_TOKEN or retry later"
        if reset_epoch is not None and limit is not None:
            reset = datetime.fromtimestamp(reset_epoch, UTC)
            per = "minute" if "search" in resource else "hour"
            remaining = headers.get("x-ratelimit-remaining", "0")
            self.waits.wait(
                wait_s,
                limit=f"GitHub rate limit ({resource})",
                waiting=f"GitHub rate limit reached ({resource}: {remaining} of {limit} left); "
                f"waiting {math.ceil(wait_s)} s until reset",
                too_long=f"GitHub rate limit exhausted ({resource}, {limit}/{per}); resets at "
                f"{reset:%H:%M} UTC, in {math.ceil((reset_epoch - time.time()) / 60)} min",
                hint=hint,
            )
        else:
            self.waits.wait(
                wait_s,
                limit=f"GitHub rate limit ({resource})",
                waiting=f"GitHub secondary rate limit reached ({resource}); waiting {math.ceil(wait_s)} s",
                too_long=f"GitHub secondary rate limit ({resource}): asked to wait {math.ceil(wait_s)} s, "
                f"more than {self.max_wait_s:g} s",
                hint=hint,
            )

    def _error(self, exc: GithubException) -> RepotuneError:
        source = f"github:{self.repo}"
        if exc.status == 401:
            return RepotuneError(f"{source}: GitHub rejected the credentials (401); check GITHUB_TOKEN")
        if exc.status == 404:
            if self.has_token:
                return RepotuneError(f"{source} not found, or GITHUB_TOKEN cannot read it")
            return RepotuneError(f"{source} not found (a private repository needs GITHUB_TOKEN)")
        if exc.status == 410:
            return RepotuneError(f"{source}: issues are disabled for this repository")
        message = (exc.data or {}).get("message") if isinstance(exc.data, dict) else None
        return RepotuneError(f"{source}: GitHub answered {exc.status} ({message or 'no message'})")


def _thread_comments(client: _Client, repo: str, item: dict[str, Any], is_pr: bool) -> list[dict[str, Any]]:
    number = item["number"]
    comments: list[dict[str, Any]] = []
    if item.get("comments"):  # the count saves a request for the many threads without comments
        comments.extend(client.pages(f"/repos/{repo}/issues/{number}/comments", {"per_page": _PER_PAGE}))
    if is_pr:
        comments.extend(client.pages(f"/repos/{repo}/pulls/{number}/comments", {"per_page": _PER_PAGE}))
    # Conversation and review comments interleave in time; ISO timestamps sort as text.
    comments.sort(key=lambda comment: comment.get("created_at") or "")
    return comments


def _meta(item: dict[str, Any], is_pr: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "number": item["number"],
        "title": item.get("title"),
        "state": item.get("state"),
        "labels": _label_names(item),
        "author": _login(item),
        "created_at": item.get("created_at"),
        "updated_at": item.get("updated_at"),
        "closed_at": item.get("closed_at"),
        "comments": item.get("comments", 0),
        "url": item.get("html_url"),
    }
    if is_pr:
        meta["merged_at"] = (item.get("pull_request") or {}).get("merged_at")
    return meta


def _is_rate_limit(exc: GithubException) -> bool:
    if isinstance(exc, RateLimitExceededException):
        return True
    headers = exc.headers or {}
    return exc.status in (403, 429) and (
        "retry-after" in headers or headers.get("x-ratelimit-remaining") == "0"
    )


def _rate_limit_wait(headers: dict[str, Any], now: float) -> tuple[float, float | None]:
    """Seconds to wait, and the reset time (epoch seconds) when the primary limit is the cause."""
    retry_after = headers.get("retry-after")
    if retry_after is not None:
        try:
            return max(float(retry_after), 1.0), None
        except ValueError:
            return _SECONDARY_LIMIT_WAIT_S, None
    if headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
        reset = float(headers["x-ratelimit-reset"])
        # One second past the reset: the header is rounded down to whole seconds.
        return max(reset - now + 1.0, 1.0), reset
    return _SECONDARY_LIMIT_WAIT_S, None


def _next_link(link: str | None) -> str | None:
    # Link: <https://api.github.com/...&page=2>; rel="next", <...&page=5>; rel="last"
    for part in (link or "").split(","):
        url, _, params = part.partition(";")
        if re.search(r'rel="?next"?', params):
            return url.strip().strip("<>")
    return None


def _reason(exc: requests.exceptions.ConnectionError) -> str:
    # requests nests the OS error several layers deep; its "[Errno 111] Connection refused" is the news.
    match = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(exc))
    return match.group(1).strip().lower() if match else "connection failed"


def _label_names(item: dict[str, Any]) -> list[str]:
    return [label["name"] for label in item.get("labels") or [] if isinstance(label, dict)]


def _login(item: dict[str, Any]) -> str:
    # A deleted account shows as null; GitHub's own pages call it "ghost".
    return (item.get("user") or {}).get("login") or "ghost"


def _day(timestamp: str | None) -> str:
    return day(timestamp)


def _no_log(_: str) -> None:
    pass
