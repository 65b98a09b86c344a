"""`notion:` (everything shared with the integration), `notion:PAGE_ID` or `notion:DATABASE_ID`.

One Markdown record per page (a database row is a page too), through the official client
``notion-client`` at API version 2025-09-03 (databases hold data sources; rows are queried from
``data_sources/{id}/query``):

- ``notion:`` uses ``POST search`` for pages, newest edit first, so ``since`` stops the listing early;
- ``notion:PAGE_ID`` reads that page and follows its child pages and child databases, depth first;
- ``notion:DATABASE_ID`` reads the rows of every data source of that database (``since`` is a
  ``last_edited_time`` filter there) and follows child pages inside rows.

A page's content is its block tree (``GET blocks/{id}/children``, ``start_cursor``/``has_more``
paging, children of nested blocks read recursively) rendered as Markdown: headings, paragraphs with
bold/italic/strikethrough/code/links, nested bulleted and numbered lists, to-dos, quotes, callouts,
toggles, code blocks with their language, tables, dividers, equations. A database row starts with its
properties (status, tags, dates...), minus people, emails and phone numbers. Images, files and
videos have no text: each is counted under ``attachment``. People mentioned become ``@user``.

The token comes from ``NOTION_TOKEN`` only. The client's own retries (silent sleeps) are off: a 429
is waited out visibly or refused (``repotune.sources.ratelimit``). One page's blocks are in memory at
a time; the pages still to visit are a list of ids.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, as_utc, record_id, utc_moment
from repotune.sources.atlassian import stamp
from repotune.sources.base import IngestStats
from repotune.sources.ratelimit import RateLimitWaits

PREFIX = "notion:"
_PAGE_SIZE = 100  # the most Notion returns per request
_PROGRESS_EVERY = 50
_MAX_DEPTH = 12  # nested blocks deeper than this are cut (Notion's editor rarely goes past 5)
_ID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_ATTACHMENTS = frozenset({"image", "video", "file", "pdf", "audio"})
_DROPPED = frozenset({"table_of_contents", "breadcrumb", "template", "link_to_page"})  # no text of their own
_LIMIT = "rate_limited, about 3 requests/s per integration"


def iter_notion(
    target: str,
    *,
    stats: IngestStats,
    base_url: str | None = None,
    since: datetime | None = None,
    kinds: frozenset[Kind] | None = None,
    max_wait_s: float = 60.0,
    log: Callable[[str], None] | None = None,
    timeout_s: int = 30,
) -> Iterator[Record]:
    """Yield one ``wiki_page`` record per Notion page under ``target`` (see the module docstring).

    ``target`` is a page or database id (with or without dashes, or a notion.so URL ending in one),
    or empty for every page the integration can see. ``base_url`` is the API root (tests point it at
    a stand-in); ``since`` keeps pages edited at or after that time (naive means UTC).
    """
    target_id = _target_id(target)
    if kinds is not None and Kind.WIKI_PAGE not in kinds:
        return
    say = log or _no_log
    source = f"{PREFIX}{target.strip()}"
    api = _Api(source, base_url, max_wait_s, say, timeout_s)
    since_utc = as_utc(since) if since is not None else None
    walker = _Walker(api, source, stats, since_utc)
    try:
        if target_id is None:
            say(f"{source}: reading every page shared with the integration")
            pages = walker.search()
        else:
            pages = walker.tree(target_id)
        read = 0
        for record in pages:
            read += 1
            if read % _PROGRESS_EVERY == 0:
                say(f"{source}: {read} pages read")
            stats.kept[str(Kind.WIKI_PAGE)] += 1
            yield record
        say(f"{source}: {read} pages read")
    finally:
        api.close()


def notion_revision(target: str, base_url: str | None = None, timeout_s: int = 30) -> str:
    """The newest edit among the pages the integration can see, for a pipeline cache key.

    Workspace-wide even for one page or database: a superset, so a change under ``target`` always
    gives a new revision (and a change elsewhere does too, at the cost of a cache miss).
    """
    api = _Api(f"{PREFIX}{target.strip()}", base_url, 60.0, _no_log, timeout_s)
    try:
        answer = api.call(
            api.client.search,
            filter={"property": "object", "value": "page"},
            sort={"direction": "descending", "timestamp": "last_edited_time"},
            page_size=1,
        )
    finally:
        api.close()
    results = answer.get("results") or []
    newest = utc_moment(results[0].get("last_edited_time")) if results else None
    return f"notion-{stamp(newest)}"


def _target_id(target: str) -> str | None:
    text = target.strip()
    if not text:
        return None
    # A notion.so URL ends in the id (after the page's title slug).
    candidate = re.split(r"[/?#]", text.split("?")[0].rstrip("/"))[-1][-32:] if "notion." in text else text
    if not _ID_RE.match(candidate):
        raise RepotuneError(
            f"notion:{target}: expected notion:PAGE_OR_DATABASE_ID (32 hex digits) or notion:"
        )
    return candidate.replace("-", "").lower()


class _Api:
    """notion-client calls with rate-limit waits and one-line errors."""

    def __init__(
        self, source: str, base_url: str | None, max_wait_s: float, log: Callable[[str], None], timeout_s: int
    ) -> None:
        from notion_client import Client  # imported when used

        token = os.environ.get("NOTION_TOKEN") or None
        if token is None:
            raise RepotuneError(
                f"{source}: set NOTION_TOKEN to the token of a Notion integration that can read it"
            )
        self.source = source
        self.base_url = (base_url or "https://api.notion.com").rstrip("/")
        self.waits = RateLimitWaits(max_wait_s, log)
        # notion-client logs every failed request at WARNING to stdout; errors are reported here instead.
        quiet = logging.getLogger("repotune.notion_client")
        if not quiet.handlers:
            quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
        self.client = Client(
            auth=token,
            base_url=self.base_url,
            timeout_ms=timeout_s * 1000,
            retry=False,
            logger=quiet,
            log_level=logging.CRITICAL,
        )

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        endpoint: Callable[..., Any],
        *args: Any,
        not_found: str | None = None,
        missing_ok: bool = False,
        **kwargs: Any,
    ) -> Any:
        """``endpoint(*args, **kwargs)``'s answer; ``None`` for a missing object when ``missing_ok``."""
        from notion_client import APIResponseError
        from notion_client.errors import HTTPResponseError, RequestTimeoutError

        while True:
            try:
                answer = endpoint(*args, **kwargs)
            except APIResponseError as exc:
                code = getattr(exc.code, "value", exc.code)
                if code == "rate_limited":
                    self.waits.retry_after("Notion", exc.headers, limit=_LIMIT, hint="retry later")
                    continue
                # Asking for a page by a database's id is a validation error (or not found): not ours.
                if missing_ok and code in ("object_not_found", "validation_error"):
                    return None
                raise self._error(exc, code, not_found) from None
            except HTTPResponseError as exc:  # an error without Notion's JSON error body
                raise RepotuneError(
                    f"{self.source}: {self.base_url} did not answer like the Notion API "
                    f"(HTTP {exc.status}); check the URL"
                ) from None
            except RequestTimeoutError:
                raise RepotuneError(
                    f"{self.source}: Notion at {self.base_url} did not answer within the timeout"
                ) from None
            except httpx.TransportError as exc:
                raise RepotuneError(f"cannot reach Notion at {self.base_url}: {_reason(exc)}") from None
            except ValueError:  # a 200 whose body is not JSON
                raise RepotuneError(
                    f"{self.source}: {self.base_url} did not answer like the Notion API"
                ) from None
            if not isinstance(answer, dict) or "object" not in answer:
                raise RepotuneError(f"{self.source}: {self.base_url} did not answer like the Notion API")
            return answer

    def _error(self, exc: Any, code: str, not_found: str | None) -> RepotuneError:
        message = " ".join(str(exc).split())[:200]
        if code == "unauthorized":
            return RepotuneError(
                f"{self.source}: Notion rejected NOTION_TOKEN (401): the token is wrong, expired or revoked"
            )
        if code == "restricted_resource":
            return RepotuneError(
                f"{self.source}: the integration may not read this (403: {message}); give it the "
                "'Read content' capability"
            )
        if code == "object_not_found" and not_found is not None:
            return RepotuneError(not_found)
        return RepotuneError(f"{self.source}: Notion answered {exc.status} ({code}: {message})")

    def paged(self, endpoint: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            extra = {"start_cursor": cursor} if cursor else {}
            answer = self.call(endpoint, *args, page_size=_PAGE_SIZE, **extra, **kwargs)
            yield from answer.get("results") or []
            cursor = answer.get("next_cursor")
            if not answer.get("has_more") or not cursor:
                return


class _Walker:
    def __init__(self, api: _Api, source: str, stats: IngestStats, since: datetime | None) -> None:
        self.api = api
        self.source = source
        self.stats = stats
        self.since = since
        self.titles: dict[str, tuple[str, dict[str, Any] | None]] = {}  # id -> (title, parent), breadcrumbs
        self.seen: set[str] = set()

    def search(self) -> Iterator[Record]:
        for page in self.api.paged(
            self.api.client.search,
            filter={"property": "object", "value": "page"},
            sort={"direction": "descending", "timestamp": "last_edited_time"},
        ):
            edited = utc_moment(page.get("last_edited_time"))
            if self.since is not None and edited is not None and edited < self.since:
                return  # newest first: everything after this is older
            if page.get("in_trash") or page.get("archived") or not self._first_visit(page["id"]):
                continue
            record = self._page(page, self._breadcrumb(page.get("parent")), children=None)
            if record is not None:
                yield record

    def tree(self, target_id: str) -> Iterator[Record]:
        not_found = (
            f"{self.source}: no page or database with id {target_id} is shared with the integration; "
            "share it (••• > Connections) or check the id"
        )
        client = self.api.client
        page = self.api.call(client.pages.retrieve, target_id, missing_ok=True)
        if page is not None:
            stack: list[tuple[str, Any, list[str]]] = [("page", page, self._breadcrumb(page.get("parent")))]
        else:
            database = self.api.call(client.databases.retrieve, target_id, not_found=not_found)
            stack = [("database", database, self._breadcrumb(database.get("parent")))]
        while stack:
            kind, item, crumbs = stack.pop()
            if isinstance(item, str):  # a child found in a page: fetched when its turn comes
                endpoint = client.pages.retrieve if kind == "page" else client.databases.retrieve
                item = self.api.call(endpoint, item, missing_ok=True)
                if item is None:
                    self.stats.skip("not_shared")
                    continue
            if not self._first_visit(item["id"]) or item.get("in_trash") or item.get("archived"):
                continue
            if kind == "page":
                found: list[tuple[str, str]] = []
                record = self._page(item, crumbs, found)
                if record is not None:
                    yield record
                below = [*crumbs, _page_title(item)]
                # Depth first, in document order.
                stack.extend((child_kind, child_id, below) for child_kind, child_id in reversed(found))
                continue
            title = _plain(item.get("title")).strip() or "Untitled"
            below = [*crumbs, title]
            for row in self._rows(item):
                if not self._first_visit(row["id"]) or row.get("in_trash") or row.get("archived"):
                    continue
                found = []
                record = self._page(row, below, found, database=title)
                if record is not None:
                    yield record
                row_crumbs = [*below, _page_title(row)]
                stack.extend((child_kind, child_id, row_crumbs) for child_kind, child_id in reversed(found))

    def _first_visit(self, object_id: str) -> bool:
        key = object_id.replace("-", "")
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def _rows(self, database: dict[str, Any]) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {}
        if self.since is not None:
            body["filter"] = {
                "timestamp": "last_edited_time",
                "last_edited_time": {"on_or_after": self.since.isoformat().replace("+00:00", "Z")},
            }
        for data_source in database.get("data_sources") or []:
            yield from self.api.paged(self.api.client.data_sources.query, data_source["id"], **body)

    def _page(
        self,
        page: dict[str, Any],
        crumbs: list[str],
        children: list[tuple[str, str]] | None,
        database: str | None = None,
    ) -> Record | None:
        """One page as a record; child pages and databases found in it are appended to ``children``."""
        page_id = page["id"]
        title = _page_title(page)
        edited = utc_moment(page.get("last_edited_time"))
        found: list[tuple[str, str]] = []
        lines = self._blocks(page_id, 0, found)
        if children is not None:
            children.extend(found)
        if self.since is not None and edited is not None and edited < self.since:
            self.stats.skip("unchanged")
            return None
        properties = (
            _properties(page)
            if (page.get("parent") or {}).get("type") in ("data_source_id", "database_id")
            else []
        )
        body = "\n".join(lines).strip()
        if properties:
            body = ("\n".join(properties) + "\n\n" + body).strip()
        if not body:
            self.stats.skip("empty_page")
            return None
        parent = page.get("parent") or {}
        meta: dict[str, Any] = {
            "page_id": page_id,
            "title": title,
            "breadcrumb": [*crumbs, title],
            "parent": parent.get("type"),
            "created_at": page.get("created_time"),
            "updated_at": page.get("last_edited_time"),
            "url": page.get("url"),
        }
        if database is not None:
            meta["database"] = database
        return Record(
            content=f"# {title}\n\n{body}\n",
            kind=Kind.WIKI_PAGE,
            source=self.source,
            id=record_id(self.source, Kind.WIKI_PAGE, page_id),
            language="markdown",
            meta=meta,
        )

    def _blocks(self, block_id: str, depth: int, found: list[tuple[str, str]]) -> list[str]:
        """Markdown lines for the children of ``block_id``; blocks are separated by blank lines."""
        lines: list[str] = []
        number = 0
        previous = None
        for block in self.api.paged(self.api.client.blocks.children.list, block_id):
            kind = block.get("type")
            number = number + 1 if kind == "numbered_list_item" and previous == "numbered_list_item" else 1
            rendered = self._block(block, depth, number, found)
            if not rendered:
                continue  # child pages, dropped blocks: no gap where they were
            is_item = kind in ("bulleted_list_item", "numbered_list_item", "to_do")
            if lines and not (is_item and previous == kind):
                lines.append("")  # a blank line between blocks, but not inside a run of list items
            lines.extend(rendered)
            previous = kind
        return lines

    def _children(self, block: dict[str, Any], depth: int, found: list[tuple[str, str]]) -> list[str]:
        if not block.get("has_children"):
            return []
        if depth + 1 > _MAX_DEPTH:
            self.stats.skip("too_deep")
            return []
        return self._blocks(block["id"], depth + 1, found)

    def _block(
        self, block: dict[str, Any], depth: int, number: int, found: list[tuple[str, str]]
    ) -> list[str]:
        kind = block.get("type") or ""
        data = block.get(kind) or {}
        text = _rich(data.get("rich_text"))
        if kind == "paragraph":
            return [text, *self._children(block, depth, found)] if text or block.get("has_children") else []
        if kind in ("heading_1", "heading_2", "heading_3"):
            return [f"{'#' * (int(kind[-1]) + 1)} {text}", *self._children(block, depth, found)]
        if kind in ("bulleted_list_item", "numbered_list_item", "to_do", "toggle"):
            if kind == "numbered_list_item":
                marker = f"{number}. "
            elif kind == "to_do":
                marker = "- [x] " if data.get("checked") else "- [ ] "
            else:
                marker = "- "
            indent = " " * (len(marker) if kind != "to_do" else 2)
            nested = self._children(block, depth, found)
            return [marker + text, *(indent + line if line else "" for line in nested)]
        if kind in ("quote", "callout"):
            icon = (data.get("icon") or {}).get("emoji") if kind == "callout" else None
            inner = [f"{icon} {text}" if icon else text, *self._children(block, depth, found)]
            return [f"> {line}" if line else ">" for line in inner]
        if kind == "code":
            language = (data.get("language") or "").replace("plain text", "").strip()
            return [f"```{language}", _rich(data.get("rich_text"), plain=True), "```"]
        if kind == "equation":
            return [f"$$ {data.get('expression', '')} $$"]
        if kind == "divider":
            return ["---"]
        if kind == "table":
            return self._table(block, data)
        if kind == "child_page":
            found.append(("page", block["id"]))
            return []
        if kind == "child_database":
            found.append(("database", block["id"]))
            return []
        if kind in _ATTACHMENTS:
            self.stats.skip("attachment")
            caption = _rich(data.get("caption"))
            return [f"*{caption}*"] if caption else []
        if kind in ("bookmark", "embed", "link_preview"):
            caption = _rich(data.get("caption"))
            url = data.get("url") or ""
            return [f"[{caption}]({url})" if caption and url else url or caption]
        if kind == "synced_block":
            original = (data.get("synced_from") or {}).get("block_id")
            if original:
                return self._blocks(original, depth + 1, found) if depth + 1 <= _MAX_DEPTH else []
            return self._children(block, depth, found)
        if kind in ("column_list", "column"):
            return self._children(block, depth, found)
        if kind in _DROPPED:
            return []
        self.stats.skip("unsupported_block")
        return []

    def _table(self, block: dict[str, Any], data: dict[str, Any]) -> list[str]:
        rows = [
            [
                _rich(cell).replace("|", "\\|").replace("\n", " ")
                for cell in (row.get("table_row") or {}).get("cells") or []
            ]
            for row in self.api.paged(self.api.client.blocks.children.list, block["id"])
            if row.get("type") == "table_row"
        ]
        if not rows:
            return []
        width = max(int(data.get("table_width") or 0), *(len(row) for row in rows))
        rows = [row + [""] * (width - len(row)) for row in rows]
        header, body = (rows[0], rows[1:]) if data.get("has_column_header") else ([""] * width, rows)
        return [
            "| " + " | ".join(header) + " |",
            "|" + " --- |" * width,
            *("| " + " | ".join(r) + " |" for r in body),
        ]

    def _breadcrumb(self, parent: dict[str, Any] | None) -> list[str]:
        """Titles of the ancestors above a page, outermost first (each looked up once per run)."""
        titles: list[str] = []
        for _ in range(_MAX_DEPTH):
            if not parent:
                break
            kind = parent.get("type")
            if kind == "page_id":
                object_id, lookup = parent["page_id"], "page"
            elif kind in ("data_source_id", "database_id"):
                object_id = parent.get("database_id") or parent.get("data_source_id")
                lookup = "database" if parent.get("database_id") else "data_source"
            else:  # workspace, or a block (the block's page is not worth the extra requests)
                break
            if object_id not in self.titles:
                self.titles[object_id] = self._lookup(lookup, object_id)
            title, parent = self.titles[object_id]
            titles.append(title)
        return list(reversed(titles))

    def _lookup(self, kind: str, object_id: str) -> tuple[str, dict[str, Any] | None]:
        try:
            if kind == "page":
                page = self.api.call(self.api.client.pages.retrieve, object_id)
                return _page_title(page), page.get("parent")
            endpoint = (
                self.api.client.databases.retrieve
                if kind == "database"
                else self.api.client.data_sources.retrieve
            )
            found = self.api.call(endpoint, object_id)
            return _plain(found.get("title")), found.get("parent")
        except RepotuneError as exc:
            if "401" in str(exc) or "rate limit" in str(exc):
                raise
            return "", None  # an ancestor the integration cannot see: the breadcrumb stops there


def _page_title(page: dict[str, Any]) -> str:
    for value in (page.get("properties") or {}).values():
        if isinstance(value, dict) and value.get("type") == "title":
            return _plain(value.get("title")).strip() or "Untitled"
    return "Untitled"


def _plain(rich: list[dict[str, Any]] | None) -> str:
    return "".join(part.get("plain_text", "") for part in rich or [])


def _rich(rich: list[dict[str, Any]] | None, plain: bool = False) -> str:
    """Rich text as Markdown: annotations (bold, italic, strikethrough, code), links; people as @user."""
    out = []
    for part in rich or []:
        if part.get("type") == "mention" and (part.get("mention") or {}).get("type") == "user":
            out.append("@user")
            continue
        text = part.get("plain_text", "")
        if plain or not text.strip():
            out.append(text)
            continue
        if part.get("type") == "equation":
            out.append(f"${text}$")
            continue
        notes = part.get("annotations") or {}
        core = text.strip()
        lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
        if notes.get("code"):
            core = f"`{core}`"
        if notes.get("bold"):
            core = f"**{core}**"
        if notes.get("italic"):
            core = f"*{core}*"
        if notes.get("strikethrough"):
            core = f"~~{core}~~"
        href = part.get("href")
        if href and part.get("type") != "mention":
            core = f"[{core}]({href})"
        out.append(lead + core + trail)
    return "".join(out)


def _properties(page: dict[str, Any]) -> list[str]:
    """A database row's properties as ``Name: value`` lines; people, emails and phones left out."""
    lines = []
    for name, value in (page.get("properties") or {}).items():
        rendered = _property(value) if isinstance(value, dict) else ""
        if rendered:
            lines.append(f"- {name}: {rendered}")
    return lines


def _property(value: dict[str, Any]) -> str:
    kind = value.get("type")
    data = value.get(kind)
    if kind == "rich_text":
        return _rich(data)
    if kind in ("select", "status"):
        return (data or {}).get("name", "")
    if kind == "multi_select":
        return ", ".join(option.get("name", "") for option in data or [])
    if kind == "number":
        return "" if data is None else f"{data:g}"
    if kind == "checkbox":
        return "yes" if data else "no"
    if kind == "url":
        return data or ""
    if kind == "date" and data:
        return data.get("start", "") + (f" → {data['end']}" if data.get("end") else "")
    if kind == "unique_id" and data:
        return f"{data.get('prefix') or ''}{'-' if data.get('prefix') else ''}{data.get('number')}"
    if kind == "formula" and data:
        inner = data.get(data.get("type"))
        return "" if inner is None or isinstance(inner, dict) else str(inner)
    # title (the heading already), people, email, phone_number, files, relation, rollup, timestamps: left out
    return ""


def _reason(exc: Exception) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    return " ".join(text.split())[:80] or type(exc).__name__


def _no_log(_: str) -> None:
    pass
