"""The github source against a GitHub REST stand-in on 127.0.0.1 (see github_fake.py)."""

from __future__ import annotations

import re
import socket
import time
from datetime import UTC, datetime

import pytest

from github_fake import FakeGitHub, Thread, primary_rate_limit, secondary_rate_limit
from repotune.errors import RepotuneError
from repotune.records import Kind, record_id
from repotune.sources import github as github_source
from repotune.sources import ratelimit
from repotune.sources.base import IngestStats
from repotune.sources.github import iter_github, linked_issues

REPO = "acme/widgets"
SOURCE = f"github:{REPO}"
HUNK = (
    "@@ -40,3 +40,5 @@ def parse(text):\n     tokens = split(text)\n+    if not tokens:\n+        return []"
)
FILLERS = range(4, 131)  # with #1-#3, 130 threads: two pages of 100
FILLER_PRS = {n for n in FILLERS if n % 10 == 0}


def _threads() -> list[Thread]:
    threads = [
        Thread(
            number=1,
            title="Parser crashes on empty input",
            body="`parse('')` raises IndexError.",
            author="alice",
            created_at="2024-01-02T09:00:00Z",
            updated_at="2024-01-05T10:00:00Z",
            state="closed",
            closed_at="2024-01-05T10:00:00Z",
            labels=["bug", "parser"],
            comments=[
                ("bob", "2024-01-03T08:00:00Z", "Reproduced on main."),
                ("alice", "2024-01-04T08:00:00Z", "Same with whitespace only."),
            ],
        ),
        Thread(
            number=2,
            title="Whitespace-only input is not rejected",
            body=None,
            author="carol",
            created_at="2024-01-02T12:00:00Z",
            updated_at="2024-01-05T10:00:00Z",
            state="closed",
            closed_at="2024-01-05T10:00:00Z",
        ),
        Thread(
            number=3,
            title="Handle empty input in the parser",
            body="Fixes #1, closes ACME/Widgets#2 and https://github.com/acme/widgets/issues/1.\n"
            "Refs #7; fixes other/repo#4.",
            author="bob",
            created_at="2024-01-03T15:00:00Z",
            updated_at="2024-01-05T10:00:00Z",
            is_pr=True,
            state="closed",
            closed_at="2024-01-05T10:00:00Z",
            merged_at="2024-01-05T10:00:00Z",
            labels=["bug"],
            comments=[("alice", "2024-01-04T09:00:00Z", "Thanks, looks good.")],
            review_comments=[
                ("alice", "2024-01-04T07:00:00Z", "Return a tuple here?", "src/parser.py", 42, HUNK),
                (
                    "bob",
                    "2024-01-04T07:30:00Z",
                    "A list matches the rest of the API.",
                    "src/parser.py",
                    42,
                    HUNK,
                ),
            ],
        ),
    ]
    for n in FILLERS:
        month = 1 + n % 12
        threads.append(
            Thread(
                number=n,
                title=f"Filler thread {n}",
                body=f"Body of {n}.",
                author="dave",
                created_at=f"2024-02-{1 + n // 24:02d}T{n % 24:02d}:00:00Z",  # one an hour
                updated_at=f"2024-{month:02d}-15T00:00:00Z",
                is_pr=n in FILLER_PRS,
            )
        )
    return threads


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    """No real sleeping, no PyGithub request spacing, and no token from the environment."""
    sleeps: list[float] = []
    monkeypatch.setattr(ratelimit, "_sleep", sleeps.append)
    monkeypatch.setattr(github_source, "_SECONDS_BETWEEN_REQUESTS", None)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    return sleeps


@pytest.fixture
def fake():
    with FakeGitHub("acme", "widgets", _threads()) as server:
        yield server


def _read(fake: FakeGitHub, **kwargs):
    stats = kwargs.pop("stats", IngestStats())
    records = list(iter_github(REPO, stats=stats, base_url=fake.url, **kwargs))
    return {record.meta["number"]: record for record in records}, stats


@pytest.mark.integration
def test_reads_every_issue_and_pull_request_across_pages(fake):
    lines: list[str] = []
    records, stats = _read(fake, log=lines.append)

    assert sorted(records) == list(range(1, 131))
    prs = {3} | FILLER_PRS
    assert {n for n, record in records.items() if record.kind == Kind.PULL_REQUEST} == prs
    assert stats.kept == {"issue": 130 - len(prs), "pull_request": len(prs)}
    issue_pages = [r for r in fake.requests if r.path == "/repos/acme/widgets/issues"]
    assert [r.query.get("page", "1") for r in issue_pages] == ["1", "2"]
    assert issue_pages[0].query["state"] == "all"
    assert issue_pages[0].query["per_page"] == "100"
    assert fake.unknown_paths == []
    # Comments only where the count says there are some; review comments only for pull requests.
    assert "/repos/acme/widgets/issues/2/comments" not in fake.paths()
    assert "/repos/acme/widgets/pulls/1/comments" not in fake.paths()
    assert "/repos/acme/widgets/pulls/3/comments" in fake.paths()
    assert any("130 issues and pull requests read" in line for line in lines)

    issue = records[1]
    assert issue.kind == Kind.ISSUE
    assert issue.id == record_id(SOURCE, Kind.ISSUE, "1")
    assert (issue.source, issue.file_path, issue.revision) == (SOURCE, None, None)
    assert issue.content.startswith(
        "# Parser crashes on empty input\n\nIssue #1 · closed · labels: bug, parser"
    )
    assert "`parse('')` raises IndexError." in issue.content
    assert "### @bob on 2024-01-03\n\nReproduced on main." in issue.content
    assert issue.content.index("@bob on") < issue.content.index("@alice on 2024-01-04")
    assert issue.meta == {
        "number": 1,
        "title": "Parser crashes on empty input",
        "state": "closed",
        "labels": ["bug", "parser"],
        "author": "alice",
        "created_at": "2024-01-02T09:00:00Z",
        "updated_at": "2024-01-05T10:00:00Z",
        "closed_at": "2024-01-05T10:00:00Z",
        "comments": 2,
        "url": "https://github.com/acme/widgets/issues/1",
        "comment_times": ["2024-01-03T08:00:00Z", "2024-01-04T08:00:00Z"],
        "linked_prs": [3],
    }
    assert records[2].meta["linked_prs"] == [3]
    assert records[2].content.startswith("# Whitespace-only input is not rejected\n\nIssue #2 · closed\n")

    pr = records[3]
    assert pr.kind == Kind.PULL_REQUEST
    assert pr.id == record_id(SOURCE, Kind.PULL_REQUEST, "3")
    assert "Pull request #3 · merged · labels: bug" in pr.content
    assert "### @alice on 2024-01-04 · review comment on src/parser.py:42" in pr.content
    assert "```diff\n+        return []\n```\n\nReturn a tuple here?" in pr.content
    assert "@@ -40,3" not in pr.content  # only the commented line of the hunk
    # Review and conversation comments in time order.
    assert (
        pr.content.index("Return a tuple") < pr.content.index("A list matches") < pr.content.index("Thanks")
    )
    assert pr.meta["linked_issues"] == [1, 2]
    assert pr.meta["merged_at"] == "2024-01-05T10:00:00Z"
    assert pr.meta["comments"] == 1
    assert pr.meta["review_comments"] == 2
    # Each comment's time, in the thread's order: a temporal split cuts the thread at the cut's moment.
    times = pr.meta["comment_times"]
    assert len(times) == 3 and all(len(t) == len("2024-01-04T10:00:00Z") for t in times)
    assert [t[:10] for t in times] == re.findall(r"^### @\S+ on (\S+)", pr.content, re.MULTILINE)
    assert pr.meta["url"] == "https://github.com/acme/widgets/pull/3"


@pytest.mark.integration
def test_kinds_picks_pull_requests_only(fake):
    records, stats = _read(fake, kinds=frozenset({Kind.PULL_REQUEST}))

    assert set(records) == {3} | FILLER_PRS
    assert all(record.kind == Kind.PULL_REQUEST for record in records.values())
    assert stats.kept == {"pull_request": len(records)}
    assert "/repos/acme/widgets/issues/1/comments" not in fake.paths()


@pytest.mark.integration
def test_kinds_without_issues_or_prs_makes_no_request(fake):
    records, _ = _read(fake, kinds=frozenset({Kind.CODE}))
    assert records == {}
    assert fake.requests == []


@pytest.mark.integration
def test_since_is_sent_and_only_recent_threads_come_back(fake):
    since = datetime(2024, 6, 1, tzinfo=UTC)
    records, _ = _read(fake, since=since)

    issue_pages = [r for r in fake.requests if r.path == "/repos/acme/widgets/issues"]
    assert issue_pages[0].query["since"] == "2024-06-01T00:00:00Z"
    expected = {n for n in FILLERS if 1 + n % 12 >= 6}
    assert set(records) == expected


@pytest.mark.integration
def test_records_stream_before_the_next_page_is_fetched(fake):
    records = iter_github(REPO, stats=IngestStats(), base_url=fake.url)
    first = next(records)

    assert first.meta["number"] == 130  # newest created first, as GitHub orders them
    assert not any(r.query.get("page") == "2" for r in fake.requests)
    records.close()


@pytest.mark.integration
def test_rate_limit_is_waited_out_visibly_and_the_same_page_retried(fake, fast):
    fake.fail_next("/repos/acme/widgets/issues", primary_rate_limit(reset_in_s=5))
    fake.fail_next("/repos/acme/widgets/pulls/3/comments", secondary_rate_limit(retry_after_s=3))
    lines: list[str] = []

    records, _ = _read(fake, log=lines.append, max_wait_s=60)

    assert len(records) == 130
    assert records[3].meta["review_comments"] == 2
    assert len(fast) == 2
    assert 4 <= fast[0] <= 7  # the reset header is whole seconds, read a moment after it was sent
    assert fast[1] == 3
    waits = [line for line in lines if "rate limit" in line]
    assert waits[0].startswith("GitHub rate limit reached (core: 0 of 60 left); waiting ")
    assert waits[0].endswith(" s until reset")
    assert waits[1] == "GitHub secondary rate limit reached (core); waiting 3 s"
    first_pages = [
        r for r in fake.requests if r.path == "/repos/acme/widgets/issues" and "page" not in r.query
    ]
    assert len(first_pages) == 2  # the refused page, then the same page again


@pytest.mark.integration
def test_rate_limit_resetting_later_than_max_wait_raises_without_sleeping(fake, fast):
    fake.fail_next("/repos/acme/widgets", primary_rate_limit(reset_in_s=3600))

    started = time.monotonic()
    with pytest.raises(RepotuneError) as raised:
        _read(fake, max_wait_s=60)

    message = str(raised.value)
    assert message.startswith("GitHub rate limit exhausted (core, 60/hour); resets at ")
    assert " UTC, in 60 min; set GITHUB_TOKEN or retry later" in message
    assert "\n" not in message
    assert fast == []
    assert time.monotonic() - started < 5


@pytest.mark.integration
def test_rate_limit_retries_are_bounded(fake, fast):
    fake.fail_next("/repos/acme/widgets/issues", primary_rate_limit(reset_in_s=1), times=50)

    with pytest.raises(RepotuneError, match=r"still reached after 10 waits"):
        _read(fake)
    assert len(fast) == 10


@pytest.mark.integration
def test_missing_repository_is_a_clear_error(fake):
    with pytest.raises(RepotuneError) as raised:
        list(iter_github("acme/missing", stats=IngestStats(), base_url=fake.url))
    assert str(raised.value) == "github:acme/missing not found (a private repository needs GITHUB_TOKEN)"


@pytest.mark.integration
def test_bad_credentials_are_a_clear_error_and_the_token_is_sent(monkeypatch):
    with FakeGitHub("acme", "widgets", _threads()[:3], token="s3cret") as fake:
        with pytest.raises(RepotuneError, match=r"github:acme/widgets: .*\(401\); check GITHUB_TOKEN"):
            list(iter_github(REPO, stats=IngestStats(), base_url=fake.url, token="wrong"))

        monkeypatch.setenv("GITHUB_TOKEN", "s3cret")
        records = list(iter_github(REPO, stats=IngestStats(), base_url=fake.url))

    assert len(records) == 3
    assert fake.requests[-1].authorization == "token s3cret"


@pytest.mark.integration
def test_unreachable_server_fails_fast_naming_the_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"

    started = time.monotonic()
    with pytest.raises(RepotuneError) as raised:
        list(iter_github(REPO, stats=IngestStats(), base_url=base_url, timeout_s=2))

    assert str(raised.value) == f"cannot reach GitHub at {base_url}: connection refused"
    assert time.monotonic() - started < 5


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Fixes #12", [12]),
        ("fixed: #3 and RESOLVES #4, closes #3", [3, 4]),
        ("Closes acme/widgets#9; closes other/repo#10", [9]),
        ("resolve https://github.com/Acme/Widgets/issues/5", [5]),
        ("see #12, prefixes #13, fix#14", []),
        ("Fixes #8 (this pull request itself is #8)", []),
    ],
)
def test_linked_issues_follows_github_closing_keywords(body, expected):
    assert linked_issues(body, REPO, number=8) == expected
