"""A Notion API (v1, version 2025-09-03) stand-in on 127.0.0.1.

Objects follow Notion's reference: pages with ``properties`` and ``parent`` (``page_id``,
``data_source_id`` with ``database_id``, ``workspace``), blocks with ``has_children`` and a payload
under their ``type``, databases listing their ``data_sources``, list answers with ``results``,
``next_cursor`` and ``has_more``, errors as ``{"object": "error", "status", "code", "message"}``.
Pages come at most ``page_cap`` per answer, so paging by ``start_cursor`` is exercised on short
fixtures. Asking ``GET /v1/pages/ID`` for a database answers 400 ``validation_error`` as Notion does.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from service_fake import Answer, FakeService, Request

VERSION = "2025-09-03"
USER = {"object": "user", "id": "c2f20311-9e54-4d11-8c79-7398424ae41e"}


def rich(text: str, *, bold=False, italic=False, strike=False, code=False, href=None) -> dict[str, Any]:
    return {
        "type": "text",
        "text": {"content": text, "link": {"url": href} if href else None},
        "annotations": {
            "bold": bold,
            "italic": italic,
            "strikethrough": strike,
            "underline": False,
            "code": code,
            "color": "default",
        },
        "plain_text": text,
        "href": href,
    }


def mention(name: str) -> dict[str, Any]:
    return {
        "type": "mention",
        "mention": {
            "type": "user",
            "user": {"object": "user", "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name))},
        },
        "annotations": rich("")["annotations"],
        "plain_text": f"@{name}",
        "href": None,
    }


def nid(name: str) -> str:
    """A stable Notion-style id (a UUID with dashes) for a fixture name."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


class FakeNotion(FakeService):
    def __init__(self, token: str, *, page_cap: int = 100) -> None:
        super().__init__({f"Bearer {token}"})
        self.page_cap = page_cap
        self.pages: dict[str, dict[str, Any]] = {}
        self.databases: dict[str, dict[str, Any]] = {}
        self.data_sources: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[dict[str, Any]]] = {}  # block or page id -> child blocks
        self.rows: dict[str, list[str]] = {}  # data source id -> page ids

    def unauthorized(self) -> Answer:
        return 401, {}, self._error(401, "unauthorized", "API token is invalid.")

    def _error(self, status: int, code: str, message: str) -> dict[str, Any]:
        return {
            "object": "error",
            "status": status,
            "code": code,
            "message": message,
            "request_id": str(uuid.uuid4()),
        }

    def add_page(
        self,
        name: str,
        title: str,
        blocks: list[dict[str, Any]],
        *,
        parent: dict[str, Any] | None = None,
        edited: str = "2024-05-01T10:00:00.000Z",
        properties: dict[str, Any] | None = None,
        title_property: str = "title",
    ) -> str:
        page_id = nid(name)
        props = {title_property: {"id": "title", "type": "title", "title": [rich(title)]}}
        props.update(properties or {})
        self.pages[page_id] = {
            "object": "page",
            "id": page_id,
            "created_time": "2024-01-15T08:00:00.000Z",
            "last_edited_time": edited,
            "created_by": USER,
            "last_edited_by": USER,
            "cover": None,
            "icon": {"type": "emoji", "emoji": "📘"},
            "parent": parent or {"type": "workspace", "workspace": True},
            "archived": False,
            "in_trash": False,
            "is_locked": False,
            "properties": props,
            "url": f"https://www.notion.so/{title.replace(' ', '-')}-{page_id.replace('-', '')}",
            "public_url": None,
        }
        self.children[page_id] = [self._attach(block, page_id) for block in blocks]
        return page_id

    def add_database(
        self, name: str, title: str, parent_page: str, rows: list[str] | None = None
    ) -> tuple[str, str]:
        database_id, source_id = nid(name), nid(name + "/source")
        self.databases[database_id] = {
            "object": "database",
            "id": database_id,
            "title": [rich(title)],
            "description": [],
            "parent": {"type": "page_id", "page_id": parent_page},
            "is_inline": True,
            "in_trash": False,
            "created_time": "2024-01-10T08:00:00.000Z",
            "last_edited_time": "2024-04-01T08:00:00.000Z",
            "data_sources": [{"id": source_id, "name": title}],
            "url": f"https://www.notion.so/{database_id.replace('-', '')}",
        }
        self.data_sources[source_id] = {
            "object": "data_source",
            "id": source_id,
            "title": [rich(title)],
            "parent": {"type": "database_id", "database_id": database_id},
            "database_parent": {"type": "page_id", "page_id": parent_page},
            "properties": {},
        }
        self.rows[source_id] = list(rows or [])
        return database_id, source_id

    def _attach(self, block: dict[str, Any], parent_id: str) -> dict[str, Any]:
        children = block.pop("children", None)
        block.setdefault("id", str(uuid.uuid4()))
        block.update(
            {
                "object": "block",
                "parent": {"type": "page_id", "page_id": parent_id}
                if parent_id in self.pages
                else {"type": "block_id", "block_id": parent_id},
                "created_time": "2024-01-15T08:00:00.000Z",
                "last_edited_time": "2024-05-01T10:00:00.000Z",
                "created_by": USER,
                "last_edited_by": USER,
                "archived": False,
                "in_trash": False,
                "has_children": bool(children) or block.get("has_children", False),
            }
        )
        if children:
            self.children[block["id"]] = [self._attach(child, block["id"]) for child in children]
        return block

    def route(self, request: Request) -> Answer | None:
        path, query, body = request.path, request.query, request.body or {}
        if request.headers.get("notion-version") != VERSION:
            return 400, {}, self._error(400, "missing_version", "Notion-Version header failed validation.")
        match = re.fullmatch(r"/v1/pages/([0-9a-f-]+)", path)
        if match and request.method == "GET":
            object_id = _dashed(match[1])
            if object_id in self.pages:
                return 200, {}, self.pages[object_id]
            if object_id in self.databases:
                return (
                    400,
                    {},
                    self._error(
                        400,
                        "validation_error",
                        f"Provided ID {object_id} is a database, not a page. "
                        f"Use the retrieve database API instead, `/v1/databases/{object_id}`.",
                    ),
                )
            return 404, {}, self._missing("page", object_id)
        match = re.fullmatch(r"/v1/databases/([0-9a-f-]+)", path)
        if match and request.method == "GET":
            object_id = _dashed(match[1])
            if object_id in self.databases:
                return 200, {}, self.databases[object_id]
            return 404, {}, self._missing("database", object_id)
        match = re.fullmatch(r"/v1/data_sources/([0-9a-f-]+)", path)
        if match and request.method == "GET" and _dashed(match[1]) in self.data_sources:
            return 200, {}, self.data_sources[_dashed(match[1])]
        match = re.fullmatch(r"/v1/data_sources/([0-9a-f-]+)/query", path)
        if match and request.method == "POST" and _dashed(match[1]) in self.rows:
            rows = [self.pages[p] for p in self.rows[_dashed(match[1])]]
            bound = ((body.get("filter") or {}).get("last_edited_time") or {}).get("on_or_after")
            if bound:
                rows = [r for r in rows if r["last_edited_time"] >= bound]
            return (
                200,
                {},
                self._list(rows, body.get("start_cursor"), body.get("page_size"), "page_or_data_source"),
            )
        match = re.fullmatch(r"/v1/blocks/([0-9a-f-]+)/children", path)
        if match and request.method == "GET":
            object_id = _dashed(match[1])
            if object_id not in self.children:
                return 404, {}, self._missing("block", object_id)
            return (
                200,
                {},
                self._list(
                    self.children[object_id], query.get("start_cursor"), query.get("page_size"), "block"
                ),
            )
        if path == "/v1/search" and request.method == "POST":
            wanted = (body.get("filter") or {}).get("value")
            if wanted not in (None, "page", "data_source"):
                return (
                    400,
                    {},
                    self._error(
                        400, "validation_error", 'body.filter.value should be "page" or "data_source"'
                    ),
                )
            items: list[dict[str, Any]] = []
            if wanted in (None, "page"):
                items.extend(p for p in self.pages.values())
            if wanted in (None, "data_source"):
                items.extend(self.data_sources.values())
            sort = body.get("sort") or {}
            items.sort(
                key=lambda item: item.get("last_edited_time", ""),
                reverse=sort.get("direction") == "descending",
            )
            return (
                200,
                {},
                self._list(items, body.get("start_cursor"), body.get("page_size"), "page_or_data_source"),
            )
        return None

    def _missing(self, kind: str, object_id: str) -> dict[str, Any]:
        return self._error(
            404,
            "object_not_found",
            f"Could not find {kind} with ID: {object_id}. "
            "Make sure the relevant pages and databases are shared with your integration.",
        )

    def _list(self, items: list[dict[str, Any]], cursor: str | None, size: Any, kind: str) -> dict[str, Any]:
        ids = [item["id"] for item in items]
        start = ids.index(cursor) if cursor in ids else 0
        limit = min(int(size or 100), 100, self.page_cap)
        chunk = items[start : start + limit]
        more = start + limit < len(items)
        return {
            "object": "list",
            "results": chunk,
            "next_cursor": items[start + limit]["id"] if more else None,
            "has_more": more,
            "type": kind,
            kind: {},
            "request_id": str(uuid.uuid4()),
        }


def _dashed(object_id: str) -> str:
    return str(uuid.UUID(object_id))
