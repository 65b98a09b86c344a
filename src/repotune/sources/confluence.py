"""`confluence:SPACE`: the pages of one Confluence space, one Markdown record per page.

Requests go through ``atlassian-python-api``'s ``Confluence`` client (see ``sources/atlassian.py`` for
authentication, rate limits and errors) to the REST API that Cloud (``/wiki/rest/api``) and Data
Center/Server (``/rest/api``) share:

- ``GET rest/api/space/{KEY}`` first: it fails early, and clearly, on a wrong key, URL or token;
- the pages: ``GET rest/api/content?spaceKey=KEY&type=page`` for a full read, or
  ``GET rest/api/content/search?cql=...`` with a ``lastmodified`` clause for an incremental one
  (``since``), each with ``expand=body.storage,ancestors,metadata.labels,version,history,space``;
- optionally each page's comments: ``GET rest/api/content/{id}/child/comment``.

Pages are read by following each answer's ``_links.next``, which carries ``start``/``limit`` on Data
Center and an opaque ``cursor`` on Cloud; the client never computes offsets, so a server that returns
fewer results than asked (Confluence caps ``limit``, lower when bodies are expanded) loses nothing.
One page of results is in memory at a time.

Authors (``history.createdBy``, ``version.by``) are never read into records, and mentions of people
in bodies become ``@user``. Images and attachments have no text: each is counted under the skip
reason ``attachment``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, as_utc, record_id, utc_moment
from repotune.sources.atlassian import AtlassianClient, credentials, stamp
from repotune.sources.base import IngestStats
from repotune.sources.xhtml import storage_to_markdown

PREFIX = "confluence:"
EXPAND = "body.storage,ancestors,metadata.labels,version,history,space"
_PAGE_SIZE = 50
_COMMENT_PAGE_SIZE = 100
_PROGRESS_EVERY = 100
_SPACE_KEY_RE = re.compile(r"^~?[A-Za-z0-9_.-]+$")


def iter_confluence(
    space: str,
    *,
    stats: IngestStats,
    url: str | None = None,
    since: datetime | None = None,
    kinds: frozenset[Kind] | None = None,
    comments: bool = False,
    max_wait_s: float = 60.0,
    log: Callable[[str], None] | None = None,
    timeout_s: int = 30,
    page_size: int = _PAGE_SIZE,
) -> Iterator[Record]:
    """Yield one ``wiki_page`` record per page of ``space``, as result pages arrive.

    ``url`` is the site (Cloud: ``https://SITE.atlassian.net/wiki``); ``None`` reads ``CONFLUENCE_URL``.
    ``since`` keeps pages modified at or after that time (naive means UTC). ``comments`` appends each
    page's comments. A rate limit asking for a wait up to ``max_wait_s`` seconds is waited out (and
    said through ``log``); a longer one raises ``RepotuneError``. ``timeout_s`` bounds each request.
    """
    if not _SPACE_KEY_RE.match(space):
        raise RepotuneError(f"confluence:{space}: expected confluence:SPACE_KEY (e.g. confluence:ENG)")
    if kinds is not None and Kind.WIKI_PAGE not in kinds:
        return
    say = log or _no_log
    source = f"{PREFIX}{space}"
    client = _client(source, url, max_wait_s, say, timeout_s)
    try:
        space_info = client.get(
            f"rest/api/space/{space}",
            not_found=f"{source}: no space with key {space!r} at {client.url}, or the account cannot see it",
        )
        if "key" not in space_info:
            raise RepotuneError(f"{source}: {client.url} did not answer like the Confluence REST API")
        space_name = space_info.get("name") or space
        if since is not None:
            since = as_utc(since)
            # CQL compares in the server's (or the user's) time zone and to the minute: ask from a day
            # earlier, then keep exactly what changed since `since`.
            after = (since - timedelta(days=1)).strftime("%Y/%m/%d %H:%M")
            path = "rest/api/content/search"
            params = {
                "cql": f'space = "{space}" and type = page and lastmodified >= "{after}" order by created',
                "expand": EXPAND,
                "limit": page_size,
            }
            say(f"{source}: reading pages modified since {since:%Y-%m-%d %H:%M} UTC")
        else:
            path = "rest/api/content"
            params = {
                "spaceKey": space,
                "type": "page",
                "status": "current",
                "expand": EXPAND,
                "limit": page_size,
            }
            say(f"{source}: reading pages of {space_name!r}")

        seen: set[str] = set()  # a page created mid-run shifts offsets; skip what was already read
        read = 0
        for page in _paged(client, path, params, source):
            page_id = str(page.get("id"))
            if page_id in seen:
                stats.skip("duplicate")
                continue
            seen.add(page_id)
            modified = utc_moment((page.get("version") or {}).get("when"))
            if since is not None and modified is not None and modified < since:
                continue
            read += 1
            if read % _PROGRESS_EVERY == 0:
                say(f"{source}: {read} pages read")
            record = _page_record(client, page, source, space, space_name, comments, stats)
            if record is None:
                continue
            stats.kept[str(Kind.WIKI_PAGE)] += 1
            yield record
        say(f"{source}: {read} pages read")
    finally:
        client.close()


def confluence_revision(space: str, url: str | None = None, timeout_s: int = 30) -> str:
    """The space's state for a pipeline cache key: its newest page modification and its page count.

    An edit, a new page or a deleted page gives a new revision; nothing else does.
    """
    source = f"{PREFIX}{space}"
    client = _client(source, url, 60.0, _no_log, timeout_s)
    try:
        answer = client.get(
            "rest/api/content/search",
            {
                "cql": f'space = "{space}" and type = page order by lastmodified desc',
                "expand": "version",
                "limit": 1,
            },
            not_found=f"{source}: no space with key {space!r} at {client.url}, or the account cannot see it",
        )
    finally:
        client.close()
    results = answer.get("results") or []
    newest = utc_moment((results[0].get("version") or {}).get("when")) if results else None
    total = answer.get("totalSize", answer.get("size", len(results)))
    return f"confluence-{stamp(newest)}-n{total}"


def _client(source: str, url: str | None, max_wait_s: float, log: Callable[[str], None], timeout_s: int):
    from atlassian import Confluence  # imported when used: the package is slow to import

    creds = credentials("CONFLUENCE", "Confluence", url, "confluence_url")
    # advanced_mode: raw responses (statuses read in AtlassianClient); retry_with_header off: the
    # library would otherwise sleep through a 429 silently.
    client = Confluence(
        creds.url, timeout=timeout_s, advanced_mode=True, retry_with_header=False, **creds.client_kwargs()
    )
    return AtlassianClient("Confluence", source, creds, client, max_wait_s, log)


def _paged(
    client: AtlassianClient, path: str, params: dict[str, Any], source: str
) -> Iterator[dict[str, Any]]:
    """Items of a Confluence list endpoint, following ``_links.next`` (offsets or Cloud cursors)."""
    not_found = f"{source}: {client.url}/{path} not found; check confluence_url / CONFLUENCE_URL"
    answer = client.get(path, params, not_found=not_found)
    while True:
        results = answer.get("results")
        if not isinstance(results, list):
            raise RepotuneError(
                f"{source}: {client.url} did not answer like the Confluence REST API (no results)"
            )
        yield from results
        next_link = (answer.get("_links") or {}).get("next")
        if not next_link:
            return
        # `next` is relative to the site's context path (/wiki on Cloud), which the configured URL holds.
        absolute = next_link if next_link.startswith("http") else client.url + "/" + next_link.lstrip("/")
        answer = client.get(absolute, absolute=True, not_found=not_found)


def _page_record(
    client: AtlassianClient,
    page: dict[str, Any],
    source: str,
    space: str,
    space_name: str,
    with_comments: bool,
    stats: IngestStats,
) -> Record | None:
    page_id = str(page["id"])
    title = (page.get("title") or "").strip()
    storage = ((page.get("body") or {}).get("storage") or {}).get("value") or ""
    body = storage_to_markdown(storage, stats.skipped)
    comment_count = 0
    if with_comments:
        rendered = []
        for comment in _paged(
            client,
            f"rest/api/content/{page_id}/child/comment",
            {"expand": "body.storage,version", "depth": "all", "limit": _COMMENT_PAGE_SIZE},
            source,
        ):
            text = storage_to_markdown(
                ((comment.get("body") or {}).get("storage") or {}).get("value") or "", stats.skipped
            )
            if text:
                when = ((comment.get("version") or {}).get("when") or "")[:10] or "unknown date"
                rendered.append(f"**Comment on {when}:**\n\n{text}")
        comment_count = len(rendered)
        if rendered:
            body = (body + "\n\n## Comments\n\n" + "\n\n".join(rendered)).strip()
    if not body:
        stats.skip("empty_page")
        return None
    ancestors = [a.get("title") or "" for a in page.get("ancestors") or [] if isinstance(a, dict)]
    labels = [
        label.get("name")
        for label in ((page.get("metadata") or {}).get("labels") or {}).get("results") or []
        if isinstance(label, dict) and label.get("name")
    ]
    version = page.get("version") or {}
    webui = (page.get("_links") or {}).get("webui")
    meta: dict[str, Any] = {
        "page_id": page_id,
        "title": title,
        "space": space,
        "breadcrumb": [space_name, *ancestors, title],
        "labels": labels,
        "created_at": (page.get("history") or {}).get("createdDate"),
        "updated_at": version.get("when"),
        "version": version.get("number"),
        "url": client.url + webui if webui else None,
    }
    if with_comments:
        meta["comments"] = comment_count
    return Record(
        content=f"# {title}\n\n{body}\n",
        kind=Kind.WIKI_PAGE,
        source=source,
        id=record_id(source, Kind.WIKI_PAGE, page_id),
        language="markdown",
        meta=meta,
    )


def _no_log(_: str) -> None:
    pass
