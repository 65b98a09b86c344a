"""`jira:PROJECT` (or a JQL query): Jira issues, one record per issue, in the GitHub thread layout.

Requests go through ``atlassian-python-api``'s ``Jira`` client (see ``sources/atlassian.py`` for
authentication, rate limits and errors):

- ``GET rest/api/2/serverInfo`` first: it tells Cloud from Data Center (``deploymentType``) and a Jira
  from something else; then ``GET rest/api/{2,3}/project/KEY`` fails early on a wrong key or token;
- Cloud: ``GET rest/api/3/search/jql`` (``Jira.enhanced_jql``), paged by ``nextPageToken`` until a page
  comes without one; bodies are ADF (JSON documents), rendered by ``repotune.sources.adf``;
- Data Center: ``GET rest/api/2/search`` (``Jira.jql``), paged by ``startAt``/``maxResults`` against
  ``total``; bodies are wiki markup, rendered by ``jira2markdown``;
- comments come with the issue (``fields.comment``); when an issue has more than the search returned,
  the rest are read from ``rest/api/{2,3}/issue/KEY/comment``.

A record's text is ``threads.thread_markdown``'s layout, so a Jira issue becomes the same
conversation example as a GitHub issue (``repotune.data.transforms.issue_messages``). People appear
as stable pseudonyms (``@user-1a2b3c4d``), never by name. The meta keeps what a later step needs to
pair a resolved issue with the commit that fixed it: ``key``, ``type``, ``resolution`` and
``resolved_at``; ``issue_keys`` finds keys in a commit message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from repotune.errors import RepotuneError
from repotune.records import Kind, Record, as_utc, record_id, utc_moment
from repotune.sources.adf import adf_to_markdown, wiki_to_markdown
from repotune.sources.atlassian import AtlassianClient, credentials, stamp
from repotune.sources.base import IngestStats
from repotune.sources.threads import ThreadComment, day, pseudonym, thread_markdown

PREFIX = "jira:"
FIELDS = (
    "summary,description,comment,status,issuetype,priority,labels,components,issuelinks,"
    "resolution,resolutiondate,created,updated,reporter,fixVersions"
)
_PAGE_SIZE = 50
_COMMENT_PAGE_SIZE = 100
_PROGRESS_EVERY = 100
_PROJECT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
# A Jira issue key: the project key (a letter, then letters, digits or _), a dash, the number.
_ISSUE_KEY = re.compile(r"(?<![A-Za-z0-9_-])([A-Z][A-Z0-9_]+-[1-9][0-9]*)(?![A-Za-z0-9-])")


def iter_jira(
    project: str,
    *,
    stats: IngestStats,
    url: str | None = None,
    jql: str | None = None,
    since: datetime | None = None,
    kinds: frozenset[Kind] | None = None,
    max_wait_s: float = 60.0,
    log: Callable[[str], None] | None = None,
    timeout_s: int = 30,
    page_size: int = _PAGE_SIZE,
) -> Iterator[Record]:
    """Yield one ``issue`` record per Jira issue of ``project`` (or of ``jql``), as pages arrive.

    ``url`` is the site; ``None`` reads ``JIRA_URL``. ``jql`` replaces ``project = KEY`` as the query
    (``project`` may then be empty). ``since`` keeps issues updated at or after that time (naive means
    UTC). Rate limits, timeouts and errors as in ``iter_confluence``.
    """
    project = project.strip().upper()
    if project and not _PROJECT_RE.match(project):
        raise RepotuneError(f"jira:{project}: expected jira:PROJECT_KEY (e.g. jira:ENG)")
    if not project and not (jql and jql.strip()):
        raise RepotuneError("jira: name a project (jira:PROJECT_KEY) or set jira_jql")
    if kinds is not None and Kind.ISSUE not in kinds:
        return
    say = log or _no_log
    source = f"{PREFIX}{project}"
    client, cloud = _client(source, url, max_wait_s, say, timeout_s)
    api = 3 if cloud else 2
    try:
        if project:
            client.get(
                f"rest/api/{api}/project/{project}",
                not_found=f"{source}: no project with key {project!r} at {client.url}, "
                "or the account cannot browse it",
            )
        query = _query(project, jql, since)
        say(f"{source}: reading issues ({query})")
        since_utc = as_utc(since) if since is not None else None
        seen: set[str] = set()
        read = 0
        for issue in _search(client, cloud, query, page_size, source):
            key = issue.get("key")
            if not key or key in seen:
                stats.skip("duplicate")
                continue
            seen.add(key)
            fields = issue.get("fields") or {}
            updated = utc_moment(fields.get("updated"))
            if since_utc is not None and updated is not None and updated < since_utc:
                continue
            read += 1
            if read % _PROGRESS_EVERY == 0:
                say(f"{source}: {read} issues read")
            comments = _comments(client, api, key, fields.get("comment") or {}, source)
            record = _record(client, issue, comments, source, cloud, stats)
            stats.kept[str(Kind.ISSUE)] += 1
            yield record
        say(f"{source}: {read} issues read")
    finally:
        client.close()


def jira_revision(project: str, url: str | None = None, jql: str | None = None, timeout_s: int = 30) -> str:
    """The project's state for a pipeline cache key: the newest issue update (and the count, on DC)."""
    project = project.strip().upper()
    source = f"{PREFIX}{project}"
    client, cloud = _client(source, url, 60.0, _no_log, timeout_s)
    query = _query(project, jql, None, order="ORDER BY updated DESC")
    try:
        page = _search_page(client, cloud, query, 1, None, 0, source, fields="updated")
    finally:
        client.close()
    issues = page.get("issues") or []
    newest = utc_moment((issues[0].get("fields") or {}).get("updated")) if issues else None
    total = page.get("total")
    return f"jira-{stamp(newest)}" + (f"-n{total}" if total is not None else "")


def issue_keys(text: str, projects: frozenset[str] | None = None) -> list[str]:
    """Jira issue keys in ``text`` (a commit message), in order, once each; only ``projects`` if given."""
    found: list[str] = []
    for key in _ISSUE_KEY.findall(text):
        if (projects is None or key.rsplit("-", 1)[0] in projects) and key not in found:
            found.append(key)
    return found


def _client(source: str, url: str | None, max_wait_s: float, log: Callable[[str], None], timeout_s: int):
    from atlassian import Jira  # imported when used: the package is slow to import

    creds = credentials("JIRA", "Jira", url, "jira_url")
    jira = Jira(
        creds.url, timeout=timeout_s, advanced_mode=True, retry_with_header=False, **creds.client_kwargs()
    )
    client = AtlassianClient("Jira", source, creds, jira, max_wait_s, log)
    try:
        info = client.get(
            "rest/api/2/serverInfo",
            not_found=f"{source}: {creds.url} has no Jira REST API (rest/api/2/serverInfo); "
            "check jira_url / JIRA_URL",
        )
        if "baseUrl" not in info and "version" not in info:
            raise RepotuneError(
                f"{source}: {creds.url} did not answer like the Jira REST API (no serverInfo)"
            )
    except BaseException:
        client.close()
        raise
    cloud = str(info.get("deploymentType", "")).lower() == "cloud"
    jira.cloud = cloud  # the library picks search/jql (Cloud) or search (Data Center) by this flag
    return client, cloud


def _query(
    project: str, jql: str | None, since: datetime | None, order: str = "ORDER BY created DESC"
) -> str:
    base = (jql or "").strip() or f'project = "{project}"'
    match = _ORDER_BY.search(base)
    if match:
        base, order = base[: match.start()].strip(), base[match.start() :].strip()
    if since is not None:
        # JQL compares in the user's time zone, to the minute: ask from a day earlier, filter exactly here.
        after = (as_utc(since) - timedelta(days=1)).strftime("%Y/%m/%d %H:%M")
        base = f'({base}) AND updated >= "{after}"'
    return f"{base} {order}"


def _search(
    client: AtlassianClient, cloud: bool, query: str, page_size: int, source: str
) -> Iterator[dict[str, Any]]:
    token: str | None = None
    start = 0
    while True:
        page = _search_page(client, cloud, query, page_size, token, start, source)
        issues = page.get("issues")
        if not isinstance(issues, list):
            raise RepotuneError(f"{source}: {client.url} did not answer like the Jira search API (no issues)")
        yield from issues
        if cloud:
            # The last page has no nextPageToken (JRACLOUD-92184: the key is absent, not null).
            token = page.get("nextPageToken")
            if not token or page.get("isLast") is True:
                return
        else:
            start = int(page.get("startAt", start)) + len(issues)
            if not issues or start >= int(page.get("total", 0)):
                return


def _search_page(
    client: AtlassianClient,
    cloud: bool,
    query: str,
    page_size: int,
    token: str | None,
    start: int,
    source: str,
    fields: str = FIELDS,
) -> dict[str, Any]:
    jira = client.client
    if cloud:
        send = lambda: jira.enhanced_jql(query, fields=fields, nextPageToken=token, limit=page_size)  # noqa: E731
    else:
        send = lambda: jira.jql(query, fields=fields, start=start, limit=page_size)  # noqa: E731
    return client.call(
        send, where="rest/api/search", not_found=f"{source}: the search found no project ({query})"
    )


def _comments(
    client: AtlassianClient, api: int, key: str, block: dict[str, Any], source: str
) -> list[dict[str, Any]]:
    comments = list(block.get("comments") or [])
    total = int(block.get("total") or len(comments))
    start = len(comments)
    # The search returns only the first comments of a busy issue; read the rest from the issue.
    while start < total:
        page = client.get(
            f"rest/api/{api}/issue/{key}/comment",
            {"startAt": start, "maxResults": _COMMENT_PAGE_SIZE},
            not_found=f"{source}: issue {key} disappeared while it was read",
        )
        more = page.get("comments") or []
        if not more:
            break
        comments.extend(more)
        start += len(more)
    comments.sort(key=lambda c: c.get("created") or "")
    return comments


def _record(
    client: AtlassianClient,
    issue: dict[str, Any],
    comments: list[dict[str, Any]],
    source: str,
    cloud: bool,
    stats: IngestStats,
) -> Record:
    key = issue["key"]
    fields = issue.get("fields") or {}

    def render(body: Any) -> str:
        return (
            adf_to_markdown(body, stats.skipped)
            if cloud or isinstance(body, dict)
            else wiki_to_markdown(body)
        )

    issue_type = _name(fields.get("issuetype"))
    status = _name(fields.get("status"))
    resolution = _name(fields.get("resolution"))
    priority = _name(fields.get("priority"))
    labels = [str(label) for label in fields.get("labels") or []]
    components = [_name(c) for c in fields.get("components") or [] if _name(c)]
    status_line = " · ".join(
        part
        for part in (
            f"Issue {key}",
            issue_type,
            status,
            f"resolution: {resolution}" if resolution else "",
            f"priority: {priority}" if priority else "",
            f"labels: {', '.join(labels)}" if labels else "",
            f"components: {', '.join(components)}" if components else "",
        )
        if part
    )
    links = _links(fields.get("issuelinks") or [])
    body = render(fields.get("description"))
    if links:
        body = (body + "\n\nLinked issues:\n" + "\n".join(f"- {text}" for _, _, text in links)).strip()
    author = pseudonym(source, _account(fields.get("reporter")))
    thread = [
        ThreadComment(
            pseudonym(source, _account(c.get("author"))), day(c.get("created")), render(c.get("body"))
        )
        for c in comments
    ]
    meta: dict[str, Any] = {
        "key": key,
        "title": fields.get("summary") or "",
        "type": issue_type,
        "status": status,
        "status_category": ((fields.get("status") or {}).get("statusCategory") or {}).get("key"),
        "resolution": resolution,
        "resolved_at": fields.get("resolutiondate"),
        "priority": priority,
        "labels": labels,
        "components": components,
        "fix_versions": [_name(v) for v in fields.get("fixVersions") or [] if _name(v)],
        "links": [{"type": kind, "key": other} for kind, other, _ in links],
        "author": author,
        "created_at": fields.get("created"),
        "updated_at": fields.get("updated"),
        "comments": len(thread),
        # Each comment's time, in the thread's order (the headings carry only its day).
        "comment_times": [c.get("created") for c in comments],
        "url": f"{client.url}/browse/{key}",
    }
    return Record(
        content=thread_markdown(
            fields.get("summary") or "", status_line, author, day(fields.get("created")), body, thread
        ),
        kind=Kind.ISSUE,
        source=source,
        id=record_id(source, Kind.ISSUE, key),
        language="markdown",
        meta=meta,
    )


def _links(links: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(relation, other key, "blocks ENG-7: summary") for each issue link, as Jira words them."""
    out = []
    for link in links:
        link_type = link.get("type") or {}
        if "outwardIssue" in link:
            other, verb = (
                link["outwardIssue"],
                link_type.get("outward") or link_type.get("name") or "relates to",
            )
        elif "inwardIssue" in link:
            other, verb = (
                link["inwardIssue"],
                link_type.get("inward") or link_type.get("name") or "relates to",
            )
        else:
            continue
        other_key = other.get("key")
        if not other_key:
            continue
        summary = ((other.get("fields") or {}).get("summary") or "").strip()
        out.append((verb, other_key, f"{verb} {other_key}" + (f": {summary}" if summary else "")))
    return out


def _name(value: Any) -> str:
    return str(value.get("name") or value.get("value") or "") if isinstance(value, dict) else ""


def _account(user: Any) -> str | None:
    if not isinstance(user, dict):
        return None
    # Cloud has accountId only; Data Center has key (stable) and name (the login, which can change).
    return user.get("accountId") or user.get("key") or user.get("name")


def _no_log(_: str) -> None:
    pass
