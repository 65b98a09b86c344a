"""`repotune ingest` over the wiki, tracker and diagram sources: manifests, errors, and secrets kept out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from confluence_fake import FakeConfluence, Space
from jira_fake import FakeJira
from notion_fake import FakeNotion
from repotune.errors import RepotuneError
from repotune.ingest import IngestConfig, run_ingest
from repotune.records import Kind, parse_include
from service_fake import basic
from test_confluence_source import PAT, _pages
from test_jira_source import API_TOKEN, EMAIL, _issues
from test_notion_source import TOKEN, _workspace

ENV_NAMES = (
    "CONFLUENCE_URL",
    "CONFLUENCE_USER",
    "CONFLUENCE_TOKEN",
    "CONFLUENCE_PAT",
    "JIRA_URL",
    "JIRA_USER",
)
ENV_NAMES += ("JIRA_TOKEN", "JIRA_PAT", "NOTION_TOKEN")


def _ingest(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    return subprocess.run(
        [sys.executable, "-m", "repotune.cli", "ingest", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        check=False,
    )


def _everything_written(out: Path, done: subprocess.CompletedProcess[str] | None = None) -> str:
    texts = [path.read_text() for path in out.iterdir() if path.is_file()]
    if done is not None:
        texts += [done.stdout, done.stderr]
    return "\n".join(texts)


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.integration
def test_confluence_space_through_the_command_keeps_the_token_out(tmp_path):
    with FakeConfluence([Space("ENG", "Engineering")], _pages(), accepted={f"Bearer {PAT}"}) as server:
        env = {"CONFLUENCE_URL": server.site, "CONFLUENCE_PAT": PAT}
        out = tmp_path / "out"
        done = _ingest("confluence:ENG", "-o", str(out), env=env)

        assert done.returncode == 0, done.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["source"] == "confluence:ENG"
        assert manifest["source_type"] == "confluence"
        assert manifest["site"] == server.site
        assert manifest["kept"] == {"wiki_page": 58}
        assert manifest["skipped"] == {"attachment": 2, "empty_page": 1}
        assert manifest["records"] == 58
        assert "ingested 58 records: 58 wiki_page" in done.stdout + done.stderr
        assert PAT not in _everything_written(out, done)

        wrong = _ingest(
            "confluence:ENG", "-o", str(tmp_path / "wrong"), env={**env, "CONFLUENCE_PAT": "leaked-pat"}
        )
        assert wrong.returncode == 2
        message = (wrong.stdout + wrong.stderr).strip()
        assert message == (
            "error: confluence:ENG: Confluence rejected the credentials (401): "
            "the token is wrong, expired or revoked; check CONFLUENCE_PAT"
        )
        assert "Traceback" not in message and "leaked-pat" not in message
        assert not (tmp_path / "wrong" / "records.jsonl").exists()

        with pytest.raises(
            RepotuneError, match=r"^a confluence: source has only wiki_pages; add --include wiki$"
        ):
            run_ingest(IngestConfig("confluence:ENG", tmp_path / "code", kinds=parse_include("code")))


@pytest.mark.integration
def test_jira_and_notion_ingest_keep_their_tokens_out(tmp_path, monkeypatch):
    monkeypatch.setenv("JIRA_USER", EMAIL)
    monkeypatch.setenv("JIRA_TOKEN", API_TOKEN)
    with FakeJira(
        {"PAY": "Payments"}, _issues(cloud=True), cloud=True, accepted={basic(EMAIL, API_TOKEN)}
    ) as jira:
        manifest = run_ingest(IngestConfig(source="jira:PAY", output=tmp_path / "jira", jira_url=jira.url))
    assert (manifest["source_type"], manifest["kept"], manifest["site"]) == ("jira", {"issue": 45}, jira.url)
    assert API_TOKEN not in _everything_written(tmp_path / "jira") and EMAIL not in _everything_written(
        tmp_path / "jira"
    )

    monkeypatch.setenv("NOTION_TOKEN", TOKEN)
    with FakeNotion(TOKEN) as notion:
        ids = _workspace(notion)
        config = IngestConfig(
            source=f"notion:{ids['root']}", output=tmp_path / "notion", notion_url=notion.url
        )
        manifest = run_ingest(config, log=lambda line: None)
    assert manifest["kept"] == {"wiki_page": 5}
    assert manifest["skipped"] == {"attachment": 1, "unsupported_block": 1}
    assert TOKEN not in _everything_written(tmp_path / "notion")


def test_config_checks_and_include_names():
    assert parse_include("wiki,diagrams") == frozenset({Kind.WIKI_PAGE, Kind.DIAGRAM})
    with pytest.raises(RepotuneError, match=r"--jira-jql applies only to a jira: source"):
        IngestConfig(source="confluence:ENG", output=Path("out"), jira_jql="project = X")
    with pytest.raises(
        RepotuneError, match=r"^Confluence: no site URL; set confluence_url or CONFLUENCE_URL$"
    ):
        run_ingest(IngestConfig(source="confluence:ENG", output=Path("/nonexistent-never-written")))


@pytest.mark.integration
def test_a_repository_with_diagrams(tmp_path):
    (tmp_path / "repo" / "docs").mkdir(parents=True)
    (tmp_path / "repo" / "docs" / "flow.mmd").write_text("graph LR\n  web[Web] --> api[API]\n")
    (tmp_path / "repo" / "main.py").write_text("print('hello')\n")
    config = IngestConfig(
        source=str(tmp_path / "repo"), output=tmp_path / "out", kinds=parse_include("code,diagrams")
    )
    manifest = run_ingest(config)
    assert manifest["kept"] == {"code": 1, "diagram": 1}
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    diagram = next(r for r in records if r["kind"] == "diagram")
    assert diagram["file_path"] == "docs/flow.mmd"
    assert diagram["content"] == "Mermaid diagram\nComponents: Web, API\nWeb -> API\n"


@pytest.mark.integration
def test_the_pipeline_cache_key_of_a_wiki_space(monkeypatch):
    from repotune.sources.revision import resolve_revision, source_slug

    with FakeConfluence([Space("ENG", "Engineering")], _pages(), accepted={f"Bearer {PAT}"}) as server:
        monkeypatch.setenv("CONFLUENCE_URL", server.site)
        monkeypatch.setenv("CONFLUENCE_PAT", PAT)
        assert resolve_revision("confluence:ENG") == "confluence-20240610T110000Z-n59"
    assert (source_slug("confluence:ENG"), source_slug("jira:PAY"), source_slug("notion:")) == (
        "confluence-eng",
        "jira-pay",
        "notion",
    )
