"""The notion source against a Notion API stand-in on 127.0.0.1 (see notion_fake.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notion_fake import VERSION, FakeNotion, mention, nid, rich
from repotune.errors import RepotuneError
from repotune.records import Kind, record_id
from repotune.sources import ratelimit
from repotune.sources.base import IngestStats
from repotune.sources.notion import iter_notion, notion_revision

TOKEN = "ntn_4417305839826xcGkTAEYKEz3hNwzQk1rTqCD3Xp"


def block(kind: str, *text: dict, children: list | None = None, **data) -> dict:
    payload = (
        {"rich_text": list(text), "color": "default", **data} if kind not in ("divider", "table") else data
    )
    result = {"type": kind, kind: payload}
    if children:
        result["children"] = children
    return result


def row(*cells: str) -> dict:
    return {"type": "table_row", "table_row": {"cells": [[rich(cell)] for cell in cells]}}


def _workspace(fake: FakeNotion) -> dict[str, str]:
    root = fake.add_page(
        "handbook",
        "Engineering Handbook",
        [
            block("heading_1", rich("How we build")),
            block(
                "paragraph",
                rich("Services are "),
                rich("small", bold=True),
                rich(" and "),
                rich("boring", italic=True),
                rich("; call "),
                rich("make deploy", code=True),
                rich(" or read the "),
                rich("style guide", href="https://example.com/style"),
                rich(", ask "),
                mention("Ada Lovelace"),
                rich("."),
            ),
            block(
                "bulleted_list_item",
                rich("Services"),
                children=[
                    block("bulleted_list_item", rich("orders")),
                    block(
                        "bulleted_list_item",
                        rich("payments"),
                        children=[block("to_do", rich("PCI review"), checked=True)],
                    ),
                ],
            ),
            block("numbered_list_item", rich("Open a branch")),
            block(
                "numbered_list_item",
                rich("Write the change"),
                children=[block("numbered_list_item", rich("tests first"))],
            ),
            block("numbered_list_item", rich("Ask for review")),
            block("to_do", rich("Rotate the staging keys"), checked=False),
            block("code", rich('def health():\n    return {"ok": True}'), language="python", caption=[]),
            block("quote", rich("Make it work, make it right, make it fast.")),
            block(
                "callout",
                rich("Deploys freeze on Fridays."),
                icon={"type": "emoji", "emoji": "💡"},
                children=[block("paragraph", rich("Hotfixes need two approvals."))],
            ),
            block(
                "toggle",
                rich("Why Postgres?"),
                children=[block("paragraph", rich("Transactions and JSONB."))],
            ),
            {
                "type": "table",
                "table": {"table_width": 2, "has_column_header": True, "has_row_header": False},
                "children": [row("Service", "Owner"), row("orders", "checkout"), row("payments", "billing")],
            },
            block("divider"),
            {
                "type": "image",
                "image": {
                    "type": "file",
                    "file": {
                        "url": "https://prod-files-secure.s3.us-west-2.amazonaws.com/x.png",
                        "expiry_time": "x",
                    },
                    "caption": [rich("Request path")],
                },
            },
            {"type": "child_page", "child_page": {"title": "On-call"}, "id": nid("oncall")},
            {"type": "child_database", "child_database": {"title": "Decision log"}, "id": nid("decisions")},
            {
                "type": "column_list",
                "column_list": {},
                "children": [
                    {"type": "column", "column": {}, "children": [block("paragraph", rich("Left column."))]},
                    {"type": "column", "column": {}, "children": [block("paragraph", rich("Right column."))]},
                ],
            },
            {"type": "unsupported", "unsupported": {}},
        ],
        edited="2024-05-01T10:00:00.000Z",
    )
    oncall = fake.add_page(
        "oncall",
        "On-call",
        [block("paragraph", rich("Page the secondary after 15 minutes."))],
        parent={"type": "page_id", "page_id": root},
        edited="2024-06-01T10:00:00.000Z",
    )
    database, source = fake.add_database("decisions", "Decision log", root)
    rows = []
    for n, (title, status, edited) in enumerate(
        [
            ("ADR-1 Use Postgres", "Accepted", "2024-02-01T10:00:00.000Z"),
            ("ADR-2 Event bus", "Superseded", "2024-03-01T10:00:00.000Z"),
            ("ADR-3 gRPC inside", "Proposed", "2024-07-01T10:00:00.000Z"),
        ],
        start=1,
    ):
        rows.append(
            fake.add_page(
                f"adr-{n}",
                title,
                [block("paragraph", rich(f"Context and decision {n}."))],
                parent={"type": "data_source_id", "data_source_id": source, "database_id": database},
                edited=edited,
                title_property="Name",
                properties={
                    "Status": {
                        "id": "st",
                        "type": "status",
                        "status": {"id": "1", "name": status, "color": "green"},
                    },
                    "Tags": {
                        "id": "tg",
                        "type": "multi_select",
                        "multi_select": [{"id": "a", "name": "storage", "color": "blue"}],
                    },
                    "Decided": {"id": "dt", "type": "date", "date": {"start": f"2024-0{n}-10", "end": None}},
                    "Owner": {
                        "id": "ow",
                        "type": "people",
                        "people": [{"object": "user", "id": "u1", "name": "Ada"}],
                    },
                    "Contact": {"id": "em", "type": "email", "email": "ada@example.com"},
                },
            )
        )
    fake.rows[source] = rows
    scratch = fake.add_page(
        "scratch", "Scratchpad", [block("paragraph", rich("Loose notes."))], edited="2024-08-01T10:00:00.000Z"
    )
    return {"root": root, "oncall": oncall, "database": database, "scratch": scratch}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(ratelimit, "_sleep", sleeps.append)
    monkeypatch.setenv("NOTION_TOKEN", TOKEN)
    return sleeps


@pytest.fixture
def notion():
    with FakeNotion(TOKEN, page_cap=5) as server:  # five blocks an answer: cursors on every page
        server.ids = _workspace(server)
        yield server


def _read(target: str, server: FakeNotion, **kwargs):
    stats = kwargs.pop("stats", IngestStats())
    records = list(iter_notion(target, stats=stats, base_url=server.url, **kwargs))
    return {record.meta["title"]: record for record in records}, stats


@pytest.mark.integration
def test_a_page_tree_with_its_child_pages_and_database(notion):
    root = notion.ids["root"]
    records, stats = _read(root, notion)

    assert list(records) == [
        "Engineering Handbook",
        "On-call",
        "ADR-1 Use Postgres",
        "ADR-2 Event bus",
        "ADR-3 gRPC inside",
    ]
    assert stats.kept == {"wiki_page": 5}
    assert stats.skipped == {"attachment": 1, "unsupported_block": 1}
    assert notion.unknown_paths == []
    assert {r.headers.get("notion-version") for r in notion.requests} == {VERSION}
    assert {r.authorization for r in notion.requests} == {f"Bearer {TOKEN}"}
    root_pages = [r for r in notion.requests if r.path == f"/v1/blocks/{root}/children"]
    assert len(root_pages) == 4  # 18 blocks, 5 an answer: followed next_cursor three times
    assert "start_cursor" in root_pages[1].query

    page = records["Engineering Handbook"]
    source = f"notion:{root}"
    assert (page.kind, page.source, page.language) == (Kind.WIKI_PAGE, source, "markdown")
    assert page.id == record_id(source, Kind.WIKI_PAGE, root)
    text = page.content
    assert text.startswith("# Engineering Handbook\n\n## How we build\n\n")
    assert (
        "Services are **small** and *boring*; call `make deploy` or read the "
        "[style guide](https://example.com/style), ask @user." in text
    )
    assert "- Services\n  - orders\n  - payments\n    - [x] PCI review" in text
    assert "1. Open a branch\n2. Write the change\n   1. tests first\n3. Ask for review" in text
    assert "- [ ] Rotate the staging keys" in text
    assert '```python\ndef health():\n    return {"ok": True}\n```' in text
    assert "> Make it work, make it right, make it fast." in text
    assert "> 💡 Deploys freeze on Fridays.\n> Hotfixes need two approvals." in text
    assert "- Why Postgres?\n  Transactions and JSONB." in text
    assert "| Service | Owner |\n| --- | --- |\n| orders | checkout |\n| payments | billing |" in text
    assert "*Request path*" in text and "amazonaws" not in text
    assert "---\n\n*Request path*\n\nLeft column.\n\nRight column." in text  # no gap for child pages
    assert "\n\n\n" not in text
    assert "Ada Lovelace" not in text
    assert page.meta["breadcrumb"] == ["Engineering Handbook"]
    assert page.meta["updated_at"] == "2024-05-01T10:00:00.000Z"
    assert page.meta["url"].startswith("https://www.notion.so/Engineering-Handbook-")

    assert records["On-call"].meta["breadcrumb"] == ["Engineering Handbook", "On-call"]
    adr = records["ADR-1 Use Postgres"]
    assert adr.meta["breadcrumb"] == ["Engineering Handbook", "Decision log", "ADR-1 Use Postgres"]
    assert adr.meta["database"] == "Decision log"
    assert adr.content == (
        "# ADR-1 Use Postgres\n\n- Status: Accepted\n- Tags: storage\n- Decided: 2024-01-10\n\n"
        "Context and decision 1.\n"
    )


@pytest.mark.integration
def test_a_database_since_a_date_filters_on_the_server(notion):
    records, _ = _read(
        notion.ids["database"].replace("-", ""), notion, since=datetime(2024, 6, 1, tzinfo=UTC)
    )

    assert list(records) == ["ADR-3 gRPC inside"]
    query = next(r for r in notion.requests if r.path.endswith("/query"))
    assert query.body["filter"] == {
        "timestamp": "last_edited_time",
        "last_edited_time": {"on_or_after": "2024-06-01T00:00:00Z"},
    }
    # The page-by-id probe came first and was answered "this is a database".
    assert notion.requests[0].path == f"/v1/pages/{notion.ids['database'].replace('-', '')}"


@pytest.mark.integration
def test_everything_shared_through_search_newest_first(notion):
    records, _ = _read("", notion)
    assert set(records) == {
        "Engineering Handbook",
        "On-call",
        "ADR-1 Use Postgres",
        "ADR-2 Event bus",
        "ADR-3 gRPC inside",
        "Scratchpad",
    }
    assert records["ADR-2 Event bus"].meta["breadcrumb"] == [
        "Engineering Handbook",
        "Decision log",
        "ADR-2 Event bus",
    ]
    assert records["Scratchpad"].source == "notion:"

    before = len(notion.requests)
    recent, _ = _read("", notion, since=datetime(2024, 6, 1, tzinfo=UTC))
    assert set(recent) == {"Scratchpad", "ADR-3 gRPC inside", "On-call"}
    searches = [r for r in notion.requests[before:] if r.path == "/v1/search"]
    assert len(searches) == 1  # newest first: the listing stopped at the first older page
    assert searches[0].body["sort"] == {"direction": "descending", "timestamp": "last_edited_time"}


@pytest.mark.integration
def test_rate_limit_waits_then_refuses(notion, fast):
    limited = (
        429,
        {"Retry-After": "2"},
        {"object": "error", "status": 429, "code": "rate_limited", "message": "x"},
    )
    notion.fail_next(f"/v1/blocks/{notion.ids['oncall']}/children", limited)
    lines: list[str] = []
    records, _ = _read(notion.ids["root"], notion, log=lines.append)
    assert len(records) == 5
    assert fast == [2.0]
    assert (
        "Notion rate limit reached (rate_limited, about 3 requests/s per integration); waiting 2 s" in lines
    )

    notion.fail_next("/v1/search", (429, {"Retry-After": "120"}, limited[2]))
    with pytest.raises(
        RepotuneError, match=r"^Notion rate limit \(rate_limited, .*\): asked to wait 120 s, more"
    ):
        _read("", notion)


@pytest.mark.integration
def test_bad_input_is_one_line(notion, monkeypatch):
    missing = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    with pytest.raises(RepotuneError) as raised:
        _read(missing, notion)
    assert str(raised.value) == (
        f"notion:{missing}: no page or database with id {missing} is shared with the integration; "
        "share it (••• > Connections) or check the id"
    )

    with pytest.raises(RepotuneError, match=r"^notion:not-an-id: expected notion:PAGE_OR_DATABASE_ID"):
        _read("not-an-id", notion)

    monkeypatch.setenv("NOTION_TOKEN", "ntn_revoked")
    with pytest.raises(RepotuneError) as raised:
        _read("", notion)
    assert (
        str(raised.value)
        == "notion:: Notion rejected NOTION_TOKEN (401): the token is wrong, expired or revoked"
    )

    monkeypatch.delenv("NOTION_TOKEN")
    with pytest.raises(RepotuneError, match=r"set NOTION_TOKEN"):
        _read("", notion)


@pytest.mark.integration
def test_a_server_that_is_not_notion_is_named(notion):
    from jira_fake import FakeJira

    with FakeJira({}, []) as other, pytest.raises(RepotuneError) as raised:
        list(iter_notion("", stats=IngestStats(), base_url=other.url))
    assert (
        str(raised.value)
        == f"notion:: {other.url} did not answer like the Notion API (HTTP 404); check the URL"
    )


@pytest.mark.integration
def test_revision_is_the_newest_edit(notion):
    assert notion_revision("", base_url=notion.url) == "notion-20240801T100000Z"
