"""A small threaded HTTP server on 127.0.0.1 that the Confluence, Jira and Notion stand-ins build on.

It records every request (method, path, query, JSON body, headers), can answer the next requests for
a path with a scripted response (a 429 with ``Retry-After``, a 500), checks the ``Authorization``
header against the credentials it accepts, and logs paths no route knows, so a test notices when a
client starts calling something new.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = tuple[int, dict[str, str], Any]  # status, headers, body (dict/list as JSON, str as text/html)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def basic(user: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


class FakeService:
    """Subclasses implement ``route``; ``accepted`` holds the Authorization values let in (None: any)."""

    def __init__(self, accepted: set[str] | None = None) -> None:
        self.accepted = accepted
        self.requests: list[Request] = []
        self.unknown_paths: list[str] = []
        self._scripted: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def fail_next(self, path: str, response: Answer, times: int = 1) -> None:
        """Answer the next ``times`` requests for ``path`` (no query) with ``response`` instead."""
        self._scripted.setdefault(path, []).extend([response] * times)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    def unauthorized(self) -> Answer:
        return 401, {}, {"message": "Unauthorized"}

    def route(self, request: Request) -> Answer | None:
        raise NotImplementedError

    def answer(self, request: Request) -> Answer:
        with self._lock:
            self.requests.append(request)
            scripted = self._scripted.get(request.path)
            if scripted:
                return scripted.pop(0)
        if self.accepted is not None and request.authorization not in self.accepted:
            return self.unauthorized()
        answer = self.route(request)
        if answer is None:
            with self._lock:
                self.unknown_paths.append(request.path)
            return 404, {"Content-Type": "text/html"}, "<html><body>Not Found</body></html>"
        return answer


def _handler_for(fake: FakeService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as requests' and httpx's sessions expect

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {key.lower(): value for key, value in self.headers.items()}
            status, extra, payload = fake.answer(Request(self.command, parts.path, query, body, headers))
            if isinstance(payload, str):
                data, kind = payload.encode(), extra.pop("Content-Type", "text/html; charset=utf-8")
            else:
                data, kind = json.dumps(payload).encode(), "application/json;charset=UTF-8"
            self.send_response(status)
            self.send_header("Content-Type", extra.pop("Content-Type", kind))
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded; stderr noise would hide test output

    return Handler
