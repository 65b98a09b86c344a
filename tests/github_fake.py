"""A GitHub REST API stand-in on 127.0.0.1 for the endpoints the github source calls.

It answers in GitHub's shapes (issue, comment and review-comment objects, Link-header pagination,
``X-RateLimit-*`` headers), records every request, and logs any path it does not know, answering 404,
so a test notices when the client starts calling something new.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

NOT_FOUND = {
    "message": "Not Found",
    "documentation_url": "https://docs.github.com/rest",
    "status": "404",
}
BAD_CREDENTIALS = {
    "message": "Bad credentials",
    "documentation_url": "https://docs.github.com/rest",
    "status": "401",
}
PRIMARY_LIMIT_MESSAGE = (
    "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a "
    "higher rate limit. Check out the documentation for more details.)"
)
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)


def primary_rate_limit(reset_in_s: float, limit: int = 60) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The 403 GitHub sends when the hourly ("core") budget is spent, resetting in ``reset_in_s``."""
    headers = {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Used": str(limit),
        "X-RateLimit-Reset": str(int(time.time() + reset_in_s)),
        "X-RateLimit-Resource": "core",
    }
    return 403, headers, {"message": PRIMARY_LIMIT_MESSAGE, "documentation_url": "https://docs.github.com"}


def secondary_rate_limit(retry_after_s: int) -> tuple[int, dict[str, str], dict[str, Any]]:
    """The 429 GitHub sends for too many requests in a short time, with a Retry-After."""
    headers = {"Retry-After": str(retry_after_s), "X-RateLimit-Resource": "core"}
    return 429, headers, {"message": SECONDARY_LIMIT_MESSAGE, "documentation_url": "https://docs.github.com"}


@dataclass
class Thread:
    """One issue or pull request, with its conversation and (for pull requests) review comments."""

    number: int
    title: str
    body: str | None
    author: str
    created_at: str
    updated_at: str
    is_pr: bool = False
    state: str = "open"
    closed_at: str | None = None
    merged_at: str | None = None
    labels: list[str] = field(default_factory=list)
    comments: list[tuple[str, str, str]] = field(default_factory=list)  # (login, created_at, body)
    # (login, created_at, body, path, line, diff_hunk)
    review_comments: list[tuple[str, str, str, str, int, str]] = field(default_factory=list)


@dataclass
class Request:
    path: str
    query: dict[str, str]
    authorization: str | None


class FakeGitHub:
    """Serve ``owner/name`` with ``threads`` on a random port; use as a context manager."""

    def __init__(self, owner: str, name: str, threads: list[Thread], token: str | None = None) -> None:
        self.owner, self.name = owner, name
        self.threads = {thread.number: thread for thread in threads}
        self.token = token  # when set, any other Authorization is answered 401, as GitHub does
        self.requests: list[Request] = []
        self.unknown_paths: list[str] = []
        self._scripted: dict[str, list[tuple[int, dict[str, str], dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail_next(
        self, path: str, response: tuple[int, dict[str, str], dict[str, Any]], times: int = 1
    ) -> None:
        """Answer the next ``times`` requests for ``path`` (no query) with ``response`` instead."""
        self._scripted.setdefault(path, []).extend([response] * times)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def answer(self, path: str, query: dict[str, str], authorization: str | None):
        """(status, headers, body) for one GET, in GitHub's shapes."""
        with self._lock:
            self.requests.append(Request(path, query, authorization))
            scripted = self._scripted.get(path)
            if scripted:
                return scripted.pop(0)
        if self.token is not None and authorization not in (f"token {self.token}", f"Bearer {self.token}"):
            return 401, {}, BAD_CREDENTIALS

        repo_path = f"/repos/{self.owner}/{self.name}"
        if path == repo_path:
            return 200, {}, self._repo()
        if path == f"{repo_path}/issues":
            return self._page(path, query, self._issue_list(query))
        match = re.fullmatch(rf"{re.escape(repo_path)}/(issues|pulls)/(\d+)(/comments)?", path)
        if match and int(match[2]) in self.threads:
            thread = self.threads[int(match[2])]
            endpoint, with_comments = match[1], match[3] is not None
            if endpoint == "issues" and not with_comments:
                return 200, {}, self._issue(thread)
            if endpoint == "issues":
                return self._page(
                    path, query, [self._comment(thread, i) for i in range(len(thread.comments))]
                )
            if thread.is_pr and not with_comments:
                return 200, {}, self._pull(thread)
            if thread.is_pr:
                reviews = [self._review_comment(thread, i) for i in range(len(thread.review_comments))]
                return self._page(path, query, reviews)
        other_repo = re.match(r"/repos/([^/]+)/([^/]+)", path)
        if other_repo and (other_repo[1], other_repo[2]) != (self.owner, self.name):
            return 404, {}, NOT_FOUND  # another repository: GitHub says the same for private ones
        with self._lock:
            self.unknown_paths.append(path)
        return 404, {}, NOT_FOUND

    def _page(self, path: str, query: dict[str, str], items: list[dict[str, Any]]):
        per_page = min(int(query.get("per_page", 30)), 100)
        page = int(query.get("page", 1))
        last = max(1, -(-len(items) // per_page))
        headers = {}
        links = []
        if page < last:
            links.append(f'<{self._page_url(path, query, page + 1)}>; rel="next"')
            links.append(f'<{self._page_url(path, query, last)}>; rel="last"')
        if page > 1:
            links.append(f'<{self._page_url(path, query, 1)}>; rel="first"')
            links.append(f'<{self._page_url(path, query, page - 1)}>; rel="prev"')
        if links:
            headers["Link"] = ", ".join(links)
        return 200, headers, items[(page - 1) * per_page : page * per_page]

    def _page_url(self, path: str, query: dict[str, str], page: int) -> str:
        return f"{self.url}{path}?{urlencode({**query, 'page': page})}"

    def _issue_list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        threads = list(self.threads.values())
        state = query.get("state", "open")
        if state != "all":
            threads = [thread for thread in threads if thread.state == state]
        if "since" in query:
            threads = [thread for thread in threads if thread.updated_at >= query["since"]]
        # GitHub's default order: newest created first.
        threads.sort(key=lambda thread: (thread.created_at, thread.number), reverse=True)
        return [self._issue(thread) for thread in threads]

    def _repo(self) -> dict[str, Any]:
        full_name = f"{self.owner}/{self.name}"
        return {
            "id": 1296269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": self.name,
            "full_name": full_name,
            "private": False,
            "owner": self._user(self.owner),
            "html_url": f"https://github.com/{full_name}",
            "url": f"{self.url}/repos/{full_name}",
            "issues_url": f"{self.url}/repos/{full_name}/issues{{/number}}",
            "default_branch": "main",
            "has_issues": True,
            "open_issues_count": sum(thread.state == "open" for thread in self.threads.values()),
        }

    def _user(self, login: str) -> dict[str, Any]:
        return {
            "login": login,
            "id": abs(hash(login)) % 10_000_000,
            "type": "User",
            "url": f"{self.url}/users/{login}",
            "html_url": f"https://github.com/{login}",
        }

    def _issue(self, thread: Thread) -> dict[str, Any]:
        base = f"{self.url}/repos/{self.owner}/{self.name}"
        html = f"https://github.com/{self.owner}/{self.name}"
        issue: dict[str, Any] = {
            "id": 1_000_000 + thread.number,
            "node_id": f"I_kwDO{thread.number}",
            "url": f"{base}/issues/{thread.number}",
            "repository_url": base,
            "comments_url": f"{base}/issues/{thread.number}/comments",
            "html_url": f"{html}/{'pull' if thread.is_pr else 'issues'}/{thread.number}",
            "number": thread.number,
            "state": thread.state,
            "state_reason": "completed" if thread.state == "closed" else None,
            "title": thread.title,
            "body": thread.body,
            "user": self._user(thread.author),
            "labels": [
                {"id": 208045946 + i, "name": name, "color": "f29513", "default": False}
                for i, name in enumerate(thread.labels)
            ],
            "assignee": None,
            "assignees": [],
            "milestone": None,
            "locked": False,
            "comments": len(thread.comments),
            "created_at": thread.created_at,
            "updated_at": thread.updated_at,
            "closed_at": thread.closed_at,
            "author_association": "CONTRIBUTOR",
        }
        if thread.is_pr:
            issue["draft"] = False
            issue["pull_request"] = {
                "url": f"{base}/pulls/{thread.number}",
                "html_url": f"{html}/pull/{thread.number}",
                "diff_url": f"{html}/pull/{thread.number}.diff",
                "patch_url": f"{html}/pull/{thread.number}.patch",
                "merged_at": thread.merged_at,
            }
        return issue

    def _pull(self, thread: Thread) -> dict[str, Any]:
        pull = self._issue(thread)
        pull.pop("pull_request")
        pull.update(
            {
                "url": f"{self.url}/repos/{self.owner}/{self.name}/pulls/{thread.number}",
                "merged_at": thread.merged_at,
                "merged": thread.merged_at is not None,
                "review_comments": len(thread.review_comments),
                "head": {"ref": f"fix-{thread.number}", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"},
                "base": {"ref": "main", "sha": "e5bd3914e2e596debea16f433f57875b5b90bcd6"},
            }
        )
        return pull

    def _comment(self, thread: Thread, index: int) -> dict[str, Any]:
        login, created_at, body = thread.comments[index]
        comment_id = thread.number * 1000 + index
        return {
            "id": comment_id,
            "node_id": f"IC_kwDO{comment_id}",
            "url": f"{self.url}/repos/{self.owner}/{self.name}/issues/comments/{comment_id}",
            "html_url": f"https://github.com/{self.owner}/{self.name}/issues/{thread.number}"
            f"#issuecomment-{comment_id}",
            "body": body,
            "user": self._user(login),
            "created_at": created_at,
            "updated_at": created_at,
            "author_association": "MEMBER",
        }

    def _review_comment(self, thread: Thread, index: int) -> dict[str, Any]:
        login, created_at, body, path, line, diff_hunk = thread.review_comments[index]
        comment_id = thread.number * 1000 + 500 + index
        return {
            "id": comment_id,
            "node_id": f"PRRC_kwDO{comment_id}",
            "url": f"{self.url}/repos/{self.owner}/{self.name}/pulls/comments/{comment_id}",
            "pull_request_review_id": 42,
            "diff_hunk": diff_hunk,
            "path": path,
            "commit_id": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "original_commit_id": "9c48853fa3dc5c1c3d6f1f1cd1f2743e72652840",
            "user": self._user(login),
            "body": body,
            "created_at": created_at,
            "updated_at": created_at,
            "html_url": f"https://github.com/{self.owner}/{self.name}/pull/{thread.number}"
            f"#discussion_r{comment_id}",
            "line": line,
            "original_line": line,
            "side": "RIGHT",
            "author_association": "MEMBER",
        }


def _handler_for(fake: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as PyGithub's requests session expects

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            status, headers, body = fake.answer(parts.path, query, self.headers.get("Authorization"))
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            if not any(key.lower().startswith("x-ratelimit-") for key in headers):
                self.send_header("X-RateLimit-Limit", "5000")
                self.send_header("X-RateLimit-Remaining", "4999")
                self.send_header("X-RateLimit-Reset", str(int(time.time()) + 3600))
                self.send_header("X-RateLimit-Resource", "core")
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the fake records requests itself; stderr noise would hide test output

    return Handler
