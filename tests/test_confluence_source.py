"""The confluence source against a Confluence REST stand-in on 127.0.0.1 (see confluence_fake.py)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confluence_fake import FakeConfluence, Page, Space
from repotune.errors import RepotuneError
from repotune.records import Kind, record_id
from repotune.sources import ratelimit
from repotune.sources.base import IngestStats
from repotune.sources.confluence import confluence_revision, iter_confluence
from service_fake import basic

PAT = "NjM4MjQ1NTk1NDQ2OrvW3bq+Lk2pSHEI5GKuMHk3Q0pm"
EMAIL, API_TOKEN = "ci-bot@example.com", "ATATT3xFfGF0T7xXq2t-r9dJbJ9aAn1Zm3"

FIXTURES = Path(__file__).parent / "fixtures" / "confluence"
# Storage-format bodies as Confluence writes them: macros, panels, a table, an image, tasks, mentions.
ARCHITECTURE = (FIXTURES / "architecture.xhtml").read_text()
RUNBOOK = (FIXTURES / "runbook.xhtml").read_text()

FILLERS = range(1, 56)  # with the four pages above, 59 pages: three result pages of (at most) 25


def _pages() -> list[Page]:
    pages = [
        Page("65601", "Engineering", "", "2023-02-01T09:00:00.000Z", "2023-02-01T09:00:00.000Z"),
        Page(
            "65602",
            "Architecture",
            ARCHITECTURE,
            "2023-03-01T10:00:00.000Z",
            "2024-05-02T16:12:44.512Z",
            version=7,
            ancestors=["65601"],
            labels=["architecture", "orders"],
        ),
        Page(
            "65603",
            "Storage layer",
            "<p>Orders are partitioned by <code>created_at</code> month.</p>",
            "2023-03-05T10:00:00.000Z",
            "2023-04-01T08:00:00.000Z",
            ancestors=["65601", "65602"],
        ),
        Page(
            "65604",
            "Runbook: database failover",
            RUNBOOK,
            "2023-06-01T10:00:00.000Z",
            "2024-06-10T11:00:00.000Z",
            version=3,
            ancestors=["65601"],
            labels=["runbook"],
            comments=[
                ("Grace Hopper", "2024-06-11T08:30:00.000Z", "<p>Step 2 also needs the read-only DSN.</p>"),
                (
                    "Alan Turing",
                    "2024-06-12T09:00:00.000Z",
                    "<p>Done, thanks <ac:link><ri:user ri:userkey='8a7f'/></ac:link>.</p>",
                ),
            ],
        ),
    ]
    for n in FILLERS:
        pages.append(
            Page(
                str(70000 + n),
                f"Decision record {n:03d}",
                f"<p>We chose option {n} because it keeps the write path synchronous.</p>",
                f"2023-07-{1 + n % 28:02d}T{n % 24:02d}:00:00.000Z",
                f"2023-{1 + n % 12:02d}-15T00:00:00.000Z",
                ancestors=["65601"],
            )
        )
    return pages


SPACES = [Space("ENG", "Engineering"), Space("HR", "People", forbidden=True)]


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(ratelimit, "_sleep", sleeps.append)
    for name in ("CONFLUENCE_URL", "CONFLUENCE_USER", "CONFLUENCE_TOKEN", "CONFLUENCE_PAT"):
        monkeypatch.delenv(name, raising=False)
    return sleeps


@pytest.fixture
def datacenter(monkeypatch):
    monkeypatch.setenv("CONFLUENCE_PAT", PAT)
    with FakeConfluence(SPACES, _pages(), accepted={f"Bearer {PAT}"}) as server:
        monkeypatch.setenv("CONFLUENCE_URL", server.site)
        yield server


@pytest.fixture
def cloud(monkeypatch):
    monkeypatch.setenv("CONFLUENCE_USER", EMAIL)
    monkeypatch.setenv("CONFLUENCE_TOKEN", API_TOKEN)
    with FakeConfluence(SPACES, _pages(), cloud=True, accepted={basic(EMAIL, API_TOKEN)}) as server:
        monkeypatch.setenv("CONFLUENCE_URL", server.site)
        yield server


def _read(space: str = "ENG", **kwargs):
    stats = kwargs.pop("stats", IngestStats())
    records = list(iter_confluence(space, stats=stats, **kwargs))
    return {record.meta["title"]: record for record in records}, stats


@pytest.mark.integration
def test_data_center_pages_with_a_personal_access_token(datacenter):
    lines: list[str] = []
    records, stats = _read(log=lines.append)

    assert len(records) == 3 + len(FILLERS)  # the body-less "Engineering" page is skipped
    assert stats.kept == {"wiki_page": len(records)}
    assert stats.skipped == {"empty_page": 1, "attachment": 2}  # an image and a linked PDF
    assert datacenter.unknown_paths == []
    assert {r.authorization for r in datacenter.requests} == {f"Bearer {PAT}"}
    listing = [r for r in datacenter.requests if r.path == "/confluence/rest/api/content"]
    # The client asked for 50 a page, the server capped it at 25: every next link was followed.
    assert [r.query.get("start", "0") for r in listing] == ["0", "25", "50"]
    assert listing[0].query["limit"] == "50"
    assert set(listing[0].query["expand"].split(",")) >= {
        "body.storage",
        "ancestors",
        "metadata.labels",
        "version",
        "history",
    }
    assert any("59 pages read" in line or "58 pages read" in line for line in lines)

    page = records["Architecture"]
    assert page.kind == Kind.WIKI_PAGE
    assert (page.source, page.file_path, page.language) == ("confluence:ENG", None, "markdown")
    assert page.id == record_id("confluence:ENG", Kind.WIKI_PAGE, "65602")
    assert page.content.startswith("# Architecture\n\n## Overview\n\nThe **orders** service writes to ")
    assert "[PostgreSQL](https://www.postgresql.org/)" in page.content
    assert "; see Storage layer, or ask @user.\n" in page.content
    assert "> **Info: Before you deploy**\n>\n> Migrations run in the `pre-deploy` hook" in page.content
    assert (
        "```python\ndef connect(dsn: str) -> Connection:\n"
        "    # autocommit off: every handler runs in one transaction\n"
        "    return psycopg.connect(dsn, autocommit=False)\n```"
    ) in page.content
    assert "| Table | Owner |\n| --- | --- |\n| orders | checkout |\n| payments | billing |" in page.content
    assert "- Primary in *eu-west-1*\n  - replica lag under 5 s\n- Nightly backups" in page.content
    assert "- [x] Write the runbook\n- [ ] Alert on replica lag" in page.content
    assert "deploy.png" not in page.content and "ac:" not in page.content
    assert page.meta == {
        "page_id": "65602",
        "title": "Architecture",
        "space": "ENG",
        "breadcrumb": ["Engineering", "Engineering", "Architecture"],
        "labels": ["architecture", "orders"],
        "created_at": "2023-03-01T10:00:00.000Z",
        "updated_at": "2024-05-02T16:12:44.512Z",
        "version": 7,
        "url": f"{datacenter.site}/display/ENG/Architecture",
    }
    assert records["Storage layer"].meta["breadcrumb"] == [
        "Engineering",
        "Engineering",
        "Architecture",
        "Storage layer",
    ]

    runbook = records["Runbook: database failover"].content
    assert "> **Warning**\n>\n> Failing over drops in-flight payments" in runbook
    # A code macro inside a list item stays inside it, indented under the item's text.
    assert (
        "1. Promote the replica:\n\n   ```bash\n   pg_ctl promote -D /var/lib/postgresql/16/main\n   ```"
        in runbook
    )
    assert "**Why not automatic?**\n\nSplit-brain risk" in runbook
    assert "Tracked in OPS-118." in runbook and "Checklist" in runbook
    assert "## Comments" not in runbook  # comments are opt-in

    # Authors and editors never reach a record, in text or meta.
    everything = "\n".join(r.content + repr(r.meta) for r in records.values())
    for name in ("Ada Lovelace", "Grace Hopper", "Alan Turing", "5b10ac8d82e05b22cc7d4ef5"):
        assert name not in everything


@pytest.mark.integration
def test_cloud_with_email_and_api_token_follows_cursors_and_reads_since(cloud):
    since = datetime(2024, 5, 1, tzinfo=UTC)
    records, _ = _read(since=since)

    assert set(records) == {"Architecture", "Runbook: database failover"}
    searches = [r for r in cloud.requests if r.path == "/wiki/rest/api/content/search"]
    assert len(searches) == 1
    # A day earlier in CQL (time zones, minutes), exact filtering on the client.
    assert 'lastmodified >= "2024/04/30 00:00"' in searches[0].query["cql"]
    assert 'space = "ENG"' in searches[0].query["cql"]
    assert {r.authorization for r in cloud.requests} == {basic(EMAIL, API_TOKEN)}
    assert records["Architecture"].meta["url"] == f"{cloud.site}/spaces/ENG/pages/65602"

    everything, _ = _read()
    assert len(everything) == 3 + len(FILLERS)
    pages = [r for r in cloud.requests if r.path == "/wiki/rest/api/content"]
    assert len(pages) == 3
    assert "cursor" in pages[1].query and "start" not in pages[1].query  # Cloud's opaque cursor
    assert cloud.unknown_paths == []


@pytest.mark.integration
def test_comments_are_appended_without_their_authors(datacenter):
    records, _ = _read(comments=True)

    runbook = records["Runbook: database failover"]
    assert runbook.content.endswith(
        "## Comments\n\n**Comment on 2024-06-11:**\n\nStep 2 also needs the read-only DSN.\n\n"
        "**Comment on 2024-06-12:**\n\nDone, thanks @user.\n"
    )
    assert runbook.meta["comments"] == 2
    assert "Grace Hopper" not in runbook.content and "Alan Turing" not in runbook.content
    comment_requests = [r for r in datacenter.requests if r.path.endswith("/child/comment")]
    assert len(comment_requests) == 3 + len(FILLERS) + 1  # every page, the skipped empty one too


@pytest.mark.integration
def test_records_stream_before_the_next_result_page_is_fetched(datacenter):
    records = iter_confluence("ENG", stats=IngestStats())
    next(records)

    assert not any(r.query.get("start") == "25" for r in datacenter.requests)
    records.close()


@pytest.mark.integration
def test_rate_limit_is_waited_out_visibly_and_the_request_repeated(datacenter, fast):
    datacenter.fail_next(
        "/confluence/rest/api/content", (429, {"Retry-After": "7"}, {"message": "Rate limited"})
    )
    lines: list[str] = []

    records, _ = _read(log=lines.append)

    assert len(records) == 3 + len(FILLERS)
    assert fast == [7.0]
    assert "Confluence rate limit reached (HTTP 429); waiting 7 s" in lines
    first = [
        r for r in datacenter.requests if r.path == "/confluence/rest/api/content" and "start" not in r.query
    ]
    assert len(first) == 2


@pytest.mark.integration
def test_long_rate_limit_is_a_clear_error_without_sleeping(datacenter, fast):
    datacenter.fail_next(
        "/confluence/rest/api/space/ENG", (429, {"Retry-After": "3600"}, {"message": "Rate limited"})
    )

    with pytest.raises(RepotuneError) as raised:
        _read(max_wait_s=60)

    assert str(raised.value) == (
        "Confluence rate limit (HTTP 429): asked to wait 3600 s, more than 60 s; retry later"
    )
    assert fast == []


@pytest.mark.integration
def test_missing_and_forbidden_spaces_are_one_line_errors(datacenter):
    for space in ("NOPE", "HR"):
        with pytest.raises(RepotuneError) as raised:
            _read(space)
        assert str(raised.value) == (
            f"confluence:{space}: no space with key '{space}' at {datacenter.site}, "
            "or the account cannot see it"
        )


@pytest.mark.integration
def test_rejected_or_missing_credentials_name_the_variables(datacenter, monkeypatch):
    monkeypatch.setenv("CONFLUENCE_PAT", "expired-token")
    with pytest.raises(RepotuneError) as raised:
        _read()
    assert str(raised.value) == (
        "confluence:ENG: Confluence rejected the credentials (401): the token is wrong, expired or revoked; "
        "check CONFLUENCE_PAT"
    )
    assert "expired-token" not in str(raised.value)

    monkeypatch.delenv("CONFLUENCE_PAT")
    with pytest.raises(
        RepotuneError, match=r"needs credentials \(401\); set CONFLUENCE_USER and CONFLUENCE_TOKEN"
    ):
        _read()

    monkeypatch.setenv("CONFLUENCE_TOKEN", API_TOKEN)
    with pytest.raises(RepotuneError, match=r"CONFLUENCE_TOKEN is an API token and needs CONFLUENCE_USER"):
        _read()


@pytest.mark.integration
def test_a_server_that_is_not_confluence_is_named(datacenter):
    with pytest.raises(RepotuneError) as raised:
        _read(url=datacenter.url)  # the context path left out: nothing answers there
    assert str(raised.value) == (
        f"confluence:ENG: {datacenter.url} did not answer like the Confluence REST API "
        "(HTTP 404, text/html at rest/api/space/ENG); check the URL"
    )


@pytest.mark.integration
def test_unreachable_site_fails_fast():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RepotuneError) as raised:
        _read(url=f"http://127.0.0.1:{port}/wiki", timeout_s=2)
    assert str(raised.value) == f"cannot reach Confluence at http://127.0.0.1:{port}/wiki: connection refused"


@pytest.mark.integration
def test_revision_moves_with_an_edit(datacenter):
    before = confluence_revision("ENG")
    assert before == "confluence-20240610T110000Z-n59"
    datacenter.pages["65603"].modified = "2024-07-01T00:00:00.000Z"
    assert confluence_revision("ENG") == "confluence-20240701T000000Z-n59"
