"""The jira source against a Jira REST stand-in on 127.0.0.1 (see jira_fake.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from jira_fake import Comment, FakeJira, Issue
from repotune.data.transforms import issue_messages
from repotune.errors import RepotuneError
from repotune.records import Kind, record_id
from repotune.sources import ratelimit
from repotune.sources.base import IngestStats
from repotune.sources.jira import issue_keys, iter_jira, jira_revision
from repotune.sources.threads import pseudonym
from service_fake import basic

PAT = "MDM0MjM5NDc2MDxOTpqJhqMlkeQ0hUqCDk0m"
EMAIL, API_TOKEN = "ci-bot@example.com", "ATATT3xFfGF0aB9cD8eF7gH6iJ5kL4"


def _text(text: str, *marks: dict) -> dict:
    node: dict = {"type": "text", "text": text}
    if marks:
        node["marks"] = list(marks)
    return node


def _para(*content: dict) -> dict:
    return {"type": "paragraph", "content": list(content)}


ADF_DESCRIPTION = {
    "type": "doc",
    "version": 1,
    "content": [
        {"type": "heading", "attrs": {"level": 3}, "content": [_text("Steps to reproduce")]},
        {
            "type": "orderedList",
            "attrs": {"order": 1},
            "content": [
                {
                    "type": "listItem",
                    "content": [
                        _para(_text("Open "), _text("/checkout", {"type": "code"})),
                        {
                            "type": "bulletList",
                            "content": [
                                {"type": "listItem", "content": [_para(_text("with an expired card"))]}
                            ],
                        },
                    ],
                },
                {"type": "listItem", "content": [_para(_text("Press "), _text("Pay ", {"type": "strong"}))]},
            ],
        },
        _para(
            _text("Reported by "),
            {
                "type": "mention",
                "attrs": {"id": "712020:5b10ac8d", "text": "@Margaret Hamilton", "accessLevel": ""},
            },
            _text(", see "),
            _text("the logs", {"type": "link", "attrs": {"href": "https://grafana.example.com/d/pay"}}),
            _text(" "),
            {"type": "emoji", "attrs": {"shortName": ":fire:", "id": "1f525", "text": "🔥"}},
        ),
        {
            "type": "codeBlock",
            "attrs": {"language": "java"},
            "content": [
                _text(
                    "java.lang.NullPointerException\n"
                    "\tat com.acme.pay.CardValidator.check(CardValidator.java:42)"
                )
            ],
        },
        {
            "type": "panel",
            "attrs": {"panelType": "warning"},
            "content": [_para(_text("Affects all EU customers."))],
        },
        {
            "type": "mediaSingle",
            "attrs": {"layout": "center"},
            "content": [
                {
                    "type": "media",
                    "attrs": {
                        "id": "4f8a0b1e-7c3d-4e2f-9a1b-0c8d7e6f5a4b",
                        "type": "file",
                        "collection": "jira-10042-field",
                        "width": 800,
                        "height": 600,
                    },
                }
            ],
        },
        {
            "type": "table",
            "attrs": {"isNumberColumnEnabled": False, "layout": "default"},
            "content": [
                {
                    "type": "tableRow",
                    "content": [
                        {"type": "tableHeader", "attrs": {}, "content": [_para(_text("Browser"))]},
                        {"type": "tableHeader", "attrs": {}, "content": [_para(_text("Result"))]},
                    ],
                },
                {
                    "type": "tableRow",
                    "content": [
                        {"type": "tableCell", "attrs": {}, "content": [_para(_text("Firefox 124"))]},
                        {"type": "tableCell", "attrs": {}, "content": [_para(_text("HTTP 500"))]},
                    ],
                },
            ],
        },
    ],
}

WIKI_DESCRIPTION = """h3. Steps to reproduce
# Open {{/checkout}}
## with an expired card
# Press *Pay*

Reported by [~mhamilton], see [the logs|https://grafana.example.com/d/pay]
{code:java}
java.lang.NullPointerException
	at com.acme.pay.CardValidator.check(CardValidator.java:42)
{code}
{warning}Affects all EU customers.{warning}

||Browser||Result||
|Firefox 124|HTTP 500|
"""


def _issues(cloud: bool) -> list[Issue]:
    def body(wiki: str, words: str) -> object:
        return {"type": "doc", "version": 1, "content": [_para(_text(words))]} if cloud else wiki

    bug = Issue(
        "PAY-7",
        "Checkout fails with an expired card",
        ADF_DESCRIPTION if cloud else WIKI_DESCRIPTION,
        "2024-01-02T09:00:00.000+0000",
        "2024-03-05T10:00:00.000+0000",
        status="Done",
        status_category="done",
        priority="High",
        resolution="Fixed",
        resolved="2024-03-05T10:00:00.000+0000",
        labels=["checkout", "regression"],
        components=["payments-api"],
        reporter="Margaret Hamilton",
        comments=[
            Comment(
                "Linus Torvalds",
                "2024-01-03T08:00:00.000+0000",
                body("Reproduced on *main*.", "Reproduced on main."),
            ),
            Comment(
                "Margaret Hamilton",
                "2024-01-03T09:00:00.000+0000",
                body("Also on staging.", "Also on staging."),
            ),
            Comment("Linus Torvalds", "2024-01-04T10:00:00.000+0000", body("Fix in PR 88.", "Fix in PR 88.")),
            Comment("Barbara Liskov", "2024-01-05T11:00:00.000+0000", body("Verified.", "Verified.")),
            Comment("Margaret Hamilton", "2024-01-06T12:00:00.000+0000", body("Thanks!", "Thanks!")),
        ],
        links=[("Blocks", "outward", "PAY-9"), ("Duplicate", "inward", "PAY-8")],
    )
    issues = [
        bug,
        Issue(
            "PAY-8",
            "Expired card error on pay",
            body("Same as above.", "Same as above."),
            "2024-01-10T09:00:00.000+0000",
            "2024-01-11T09:00:00.000+0000",
            status="Closed",
            resolution="Duplicate",
        ),
        Issue(
            "PAY-9",
            "Release 4.2",
            None,
            "2024-01-12T09:00:00.000+0000",
            "2024-01-12T09:00:00.000+0000",
            issue_type="Task",
            priority=None,
        ),
    ]
    for n in range(10, 52):  # 45 issues in all: three result pages of (at most) 20
        issues.append(
            Issue(
                f"PAY-{n}",
                f"Filler issue {n}",
                body(f"Body of {n}.", f"Body of {n}."),
                f"2024-02-{1 + n % 28:02d}T{n % 24:02d}:00:00.000+0000",
                f"2024-{1 + n % 12:02d}-20T00:00:00.000+0000",
                issue_type="Story",
            )
        )
    return issues


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(ratelimit, "_sleep", sleeps.append)
    for name in ("JIRA_URL", "JIRA_USER", "JIRA_TOKEN", "JIRA_PAT"):
        monkeypatch.delenv(name, raising=False)
    return sleeps


@pytest.fixture
def datacenter(monkeypatch):
    monkeypatch.setenv("JIRA_PAT", PAT)
    with FakeJira({"PAY": "Payments"}, _issues(cloud=False), accepted={f"Bearer {PAT}"}) as server:
        monkeypatch.setenv("JIRA_URL", server.url)
        yield server


@pytest.fixture
def cloud(monkeypatch):
    monkeypatch.setenv("JIRA_USER", EMAIL)
    monkeypatch.setenv("JIRA_TOKEN", API_TOKEN)
    with FakeJira(
        {"PAY": "Payments"}, _issues(cloud=True), cloud=True, accepted={basic(EMAIL, API_TOKEN)}
    ) as server:
        monkeypatch.setenv("JIRA_URL", server.url)
        yield server


def _read(project: str = "PAY", **kwargs):
    stats = kwargs.pop("stats", IngestStats())
    records = list(iter_jira(project, stats=stats, **kwargs))
    return {record.meta["key"]: record for record in records}, stats


@pytest.mark.integration
def test_data_center_issues_through_offsets_with_wiki_markup(datacenter):
    records, stats = _read()

    assert len(records) == 45
    assert stats.kept == {"issue": 45}
    assert datacenter.unknown_paths == []
    assert {r.authorization for r in datacenter.requests} == {f"Bearer {PAT}"}
    searches = [r for r in datacenter.requests if r.path == "/rest/api/2/search"]
    assert [r.query["startAt"] for r in searches] == ["0", "20", "40"]  # capped at 20 though 50 were asked
    assert searches[0].query["jql"] == 'project = "PAY" ORDER BY created DESC'
    # The search carried 2 of PAY-7's 5 comments; the other 3 came from the issue's comment list.
    assert [
        r.query["startAt"] for r in datacenter.requests if r.path == "/rest/api/2/issue/PAY-7/comment"
    ] == ["2"]

    bug = records["PAY-7"]
    source = "jira:PAY"
    reporter = pseudonym(source, "JIRAUSER" + str(abs(hash("Margaret Hamilton")) % 100000))
    assert bug.kind == Kind.ISSUE and bug.id == record_id(source, Kind.ISSUE, "PAY-7")
    assert bug.content.startswith(
        "# Checkout fails with an expired card\n\n"
        "Issue PAY-7 · Bug · Done · resolution: Fixed · priority: High · labels: checkout, regression · "
        f"components: payments-api\nOpened by @{reporter} on 2024-01-02\n\n### Steps to reproduce\n"
    )
    assert "1. Open `/checkout`\n   1. with an expired card\n1. Press **Pay**" in bug.content
    assert "```java\njava.lang.NullPointerException" in bug.content
    assert "Reported by @user, see [the logs](https://grafana.example.com/d/pay)" in bug.content
    assert "|Browser|Result|" in bug.content
    assert (
        "Linked issues:\n- blocks PAY-9: Release 4.2\n- is duplicated by PAY-8: Expired card error on pay"
        in bug.content
    )
    assert bug.content.count("\n### @user-") == 5
    assert bug.meta["key"] == "PAY-7"
    assert (bug.meta["resolution"], bug.meta["resolved_at"], bug.meta["type"]) == (
        "Fixed",
        "2024-03-05T10:00:00.000+0000",
        "Bug",
    )
    assert bug.meta["links"] == [
        {"type": "blocks", "key": "PAY-9"},
        {"type": "is duplicated by", "key": "PAY-8"},
    ]
    assert bug.meta["status_category"] == "done" and bug.meta["comments"] == 5
    times = bug.meta["comment_times"]  # each comment's time, in the thread's order
    assert len(times) == 5 and all(t.startswith("2024-") and "T" in t for t in times)
    assert [t[:10] for t in times] == re.findall(r"^### @\S+ on (\S+)", bug.content, re.MULTILINE)
    assert bug.meta["url"] == f"{datacenter.url}/browse/PAY-7"
    everything = "\n".join(r.content + repr(r.meta) for r in records.values())
    for name in ("Margaret Hamilton", "Linus Torvalds", "Barbara Liskov", "mhamilton", "linus@example.com"):
        assert name not in everything

    # The same conversation example as a GitHub issue: the reporter asks, the others answer.
    messages = issue_messages(bug)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"].startswith(
        "# Checkout fails with an expired card\n\n### Steps to reproduce"
    )
    assert messages[1]["content"] == "Reproduced on **main**."
    assert messages[3]["content"] == "Fix in PR 88.\n\nVerified."


@pytest.mark.integration
def test_cloud_issues_through_next_page_tokens_with_adf(cloud):
    lines: list[str] = []
    records, stats = _read(log=lines.append)

    assert len(records) == 45
    assert stats.skipped == {"attachment": 1}  # the screenshot in PAY-7's description
    assert cloud.unknown_paths == []
    assert "/rest/api/2/search" not in cloud.paths() and "/rest/api/3/search" not in cloud.paths()
    searches = [r for r in cloud.requests if r.path == "/rest/api/3/search/jql"]
    assert len(searches) == 3
    assert "nextPageToken" not in searches[0].query and "nextPageToken" in searches[2].query
    assert "/rest/api/3/project/PAY" in cloud.paths()
    assert [r.query["startAt"] for r in cloud.requests if r.path == "/rest/api/3/issue/PAY-7/comment"] == [
        "2"
    ]
    assert any("45 issues read" in line for line in lines)

    bug = records["PAY-7"].content
    assert (
        "### Steps to reproduce\n\n1. Open `/checkout`\n   - with an expired card\n2. Press **Pay**\n\n"
        in bug
    )
    assert "Reported by @user, see [the logs](https://grafana.example.com/d/pay) 🔥" in bug
    assert (
        "```java\njava.lang.NullPointerException\n"
        "\tat com.acme.pay.CardValidator.check(CardValidator.java:42)\n```" in bug
    )
    assert "> **Warning**\n>\n> Affects all EU customers." in bug
    assert "| Browser | Result |\n| --- | --- |\n| Firefox 124 | HTTP 500 |" in bug
    assert "Margaret Hamilton" not in bug and "712020:" not in bug
    assert records["PAY-9"].content.startswith("# Release 4.2\n\nIssue PAY-9 · Task · Open\nOpened by @")


@pytest.mark.integration
def test_since_and_a_jql_of_ones_own(cloud):
    records, _ = _read(since=datetime(2024, 11, 1, tzinfo=UTC))
    expected = {f"PAY-{n}" for n in range(10, 52) if 1 + n % 12 >= 11}
    assert set(records) == expected
    query = [r for r in cloud.requests if r.path == "/rest/api/3/search/jql"][-1].query["jql"]
    assert query == '(project = "PAY") AND updated >= "2024/10/31 00:00" ORDER BY created DESC'

    records, _ = _read("", jql="project = PAY AND resolution = Fixed ORDER BY updated ASC")
    query = [r for r in cloud.requests if r.path == "/rest/api/3/search/jql"][-1].query["jql"]
    assert query == "project = PAY AND resolution = Fixed ORDER BY updated ASC"
    assert len(records) == 45  # the stand-in reads only the project clause; the query went as written


@pytest.mark.integration
def test_rate_limit_waits_then_names_the_limit(cloud, fast):
    limited = (
        429,
        {"Retry-After": "5", "RateLimit-Reason": "jira-quota-tenant-based"},
        {"errorMessages": []},
    )
    cloud.fail_next("/rest/api/3/search/jql", limited)
    lines: list[str] = []
    records, _ = _read(log=lines.append)
    assert len(records) == 45
    assert fast == [5.0]
    assert "Jira rate limit reached (jira-quota-tenant-based); waiting 5 s" in lines

    cloud.fail_next(
        "/rest/api/3/search/jql", (429, {"Retry-After": "900", "RateLimit-Reason": "jira-burst-based"}, {})
    )
    with pytest.raises(RepotuneError) as raised:
        _read()
    assert str(raised.value) == (
        "Jira rate limit (jira-burst-based): asked to wait 900 s, more than 60 s; retry later"
    )


@pytest.mark.integration
def test_bad_input_is_one_line(datacenter, monkeypatch):
    with pytest.raises(RepotuneError) as raised:
        _read("NOPE")
    assert (
        str(raised.value)
        == f"jira:NOPE: no project with key 'NOPE' at {datacenter.url}, or the account cannot browse it"
    )

    with pytest.raises(RepotuneError, match=r"^jira:PAY-7: expected jira:PROJECT_KEY"):
        _read("PAY-7")

    monkeypatch.setenv("JIRA_PAT", "revoked")
    with pytest.raises(RepotuneError) as raised:
        _read()
    assert str(raised.value) == (
        "jira:PAY: Jira rejected the credentials (401): the token is wrong, expired or revoked; "
        "check JIRA_PAT"
    )


@pytest.mark.integration
def test_a_server_that_is_not_jira_is_named(datacenter):
    from confluence_fake import FakeConfluence

    with FakeConfluence([], []) as other, pytest.raises(RepotuneError) as raised:
        _read(url=other.url)
    assert str(raised.value) == (
        f"jira:PAY: {other.url} did not answer like the Jira REST API "
        "(HTTP 404, text/html at rest/api/2/serverInfo); check the URL"
    )


@pytest.mark.integration
def test_revision_is_the_newest_update_and_the_count(datacenter):
    assert jira_revision("PAY") == "jira-20241220T000000Z-n45"


@pytest.mark.parametrize(
    ("message", "projects", "expected"),
    [
        ("PAY-7: reject expired cards\n\nAlso touches OPS-118.", None, ["PAY-7", "OPS-118"]),
        ("Fix PAY-7, PAY-7 again (see pay-9, PAY-0, XPAY-77)", frozenset({"PAY"}), ["PAY-7"]),
        ("bump UTF-8 and ISO-8859-1 handling", frozenset({"PAY"}), []),
    ],
)
def test_issue_keys_in_commit_messages(message, projects, expected):
    assert issue_keys(message, projects) == expected
