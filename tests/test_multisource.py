"""One dataset from several sources: a repository with its wiki and its tracker.

The sources' own readers are tested in test_*_source.py; here: what several of them do together (the
manifest's counts per source, a resolved Jira issue kept with its fixing commit on one side of the
split, the cache key over every source, the settings on the command line and in the pipeline), and
one run of a git repository, a Confluence space and a Jira project (the stand-in servers) through
ingest, clean and a few steps of training the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import repotune.ingest
from confluence_fake import FakeConfluence, Space
from conftest import git, write_tree
from jira_fake import FakeJira
from repotune.clean.split import EVAL, TRAIN, assign, assign_temporal, held_out_by_ingest, record_date
from repotune.clean.split import SplitConfig as SplitSettings
from repotune.data.transforms import issue_messages
from repotune.errors import RepotuneError
from repotune.ingest import IngestConfig, IngestLayout
from repotune.ingest.links import FixIndex
from repotune.records import Kind, Record, read_records
from repotune.sources.revision import combine, dataset_key, resolve_revisions, split_revision
from repotune.sources.settings import ServiceSettings, sources_of
from service_fake import basic
from test_confluence_source import PAT, _pages
from test_jira_source import API_TOKEN, EMAIL, _issues

SERVICE_ENV = ("CONFLUENCE_URL", "CONFLUENCE_USER", "CONFLUENCE_TOKEN", "CONFLUENCE_PAT")
SERVICE_ENV += ("JIRA_URL", "JIRA_USER", "JIRA_TOKEN", "JIRA_PAT", "NOTION_TOKEN")


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)


def _issue(key: str, created: str, **meta) -> Record:
    content = (
        f"# Checkout fails\n\nIssue {key} · Bug · Done\nOpened by @user-1 on {created[:10]}\n\nIt fails.\n\n"
        f"### @user-2 on {created[:10]}\n\nReproduced.\n"
    )
    return Record(
        content=content,
        kind=Kind.ISSUE,
        source="jira:PAY",
        id=key,
        language="markdown",
        meta={"key": key, "title": "Checkout fails", "author": "user-1", "created_at": created, **meta},
    )


def _commit(sha: str, message: str, date: str, **meta) -> Record:
    diff = "diff --git a/pay.py b/pay.py\n--- a/pay.py\n+++ b/pay.py\n@@ -1 +1 @@\n-old\n+new"
    return Record(
        content=f"{message}\n\n{diff}",
        kind=Kind.COMMIT,
        source="repo",
        id=sha,
        revision=sha,
        meta={"sha": sha, "date": date, "files": ["pay.py"], **meta},
    )


def test_a_resolved_issue_gets_its_fixing_commit_as_the_answer_of_its_thread() -> None:
    index = FixIndex()
    fix = _commit(
        "a" * 40, "PAY-7: retry an expired card once\n\nThe gateway says 402.", "2024-03-01T10:00:00Z"
    )
    unrelated = _commit("b" * 40, "Tidy the README", "2024-03-02T10:00:00Z")
    for record in (fix, unrelated):
        index.see(record)
    assert fix.meta["issue_keys"] == ["PAY-7"] and "issue_keys" not in unrelated.meta

    linked = index.link(_issue("PAY-7", "2024-01-02T09:00:00Z", resolution="Fixed"))
    assert linked.meta["fixed_by"] == ["a" * 40]
    assert "diff --git" not in linked.content  # the diff stays in the commit's own record
    messages = issue_messages(linked)
    assert messages[-1] == {
        "role": "assistant",
        "content": f"Reproduced.\n\nFixed in commit {'a' * 12}:\n\nPAY-7: retry an expired card once\n\n"
        "The gateway says 402.\n\nFiles changed: pay.py",
    }
    assert index.linked == 1

    # an open issue is not fixed yet, whatever a commit says; an issue no commit names stays as it is
    still_open = _issue("PAY-7", "2024-01-02T09:00:00Z", status_category="indeterminate")
    assert index.link(still_open).content == _issue("PAY-7", "2024-01-02T09:00:00Z").content
    assert "fixed_by" not in index.link(_issue("PAY-8", "2024-01-02T09:00:00Z", resolution="Fixed")).meta


def test_the_issue_and_its_fix_land_on_the_same_side_of_either_split() -> None:
    # temporal split: the fix came after the cut, so the issue (created before it) is held out with it
    index = FixIndex()
    index.see(_commit("c" * 40, "Fix PAY-7", "2024-03-01T10:00:00Z", after_cut=True))
    issue = index.link(_issue("PAY-7", "2024-01-02T09:00:00Z", resolution="Fixed"))
    cut_date = "2024-02-01T00:00:00+00:00"
    assert assign_temporal(Kind.ISSUE, record_date(issue), held_out_by_ingest(issue), cut_date) == EVAL
    unlinked = _issue("PAY-9", "2024-01-02T09:00:00Z", resolution="Fixed")
    assert assign_temporal(Kind.ISSUE, record_date(unlinked), held_out_by_ingest(unlinked), cut_date) == TRAIN

    # file split: the issue is dated by its newest fix, so the date cutoff treats both alike
    index = FixIndex()
    index.see(_commit("d" * 40, "PAY-7 part 1", "2024-02-01T10:00:00Z"))
    index.see(_commit("e" * 40, "PAY-7 part 2", "2024-03-01T10:00:00Z"))
    issue = index.link(_issue("PAY-7", "2024-01-02T09:00:00Z", resolution="Fixed"))
    assert issue.meta["fixed_by"] == ["d" * 40, "e" * 40] and record_date(issue) == "2024-03-01T10:00:00Z"
    config = SplitSettings(eval_fraction=0.5)
    for cutoff in ("2024-03-01T10:00:00Z", "2024-03-02T00:00:00Z"):
        fix_side = assign(Kind.COMMIT, None, "2024-03-01T10:00:00Z", "e", cutoff, config)
        assert assign(Kind.ISSUE, None, record_date(issue), "PAY-7", cutoff, config) == fix_side


def test_the_cache_key_covers_every_source(make_repo, tmp_path: Path) -> None:
    repo = make_repo([("First", {"a.py": "x = 1\n"}, "2024-01-01T10:00:00+00:00")])
    folder = tmp_path / "notes"
    write_tree(folder, {"notes.md": "# Notes\n"})
    sha = git(repo, "rev-parse", "HEAD").strip()

    both = resolve_revisions([str(repo), str(folder)])
    assert split_revision(both, 2)[0] == sha and split_revision(both, 2)[1].startswith("tree-")
    assert resolve_revisions([str(repo)]) == sha  # one source: its revision, as it always was
    (folder / "notes.md").write_text("# Notes, edited\n")
    os.utime(folder / "notes.md", ns=(1, 1))
    changed = resolve_revisions([str(repo), str(folder)])
    assert changed != both and split_revision(changed, 2)[0] == sha

    assert dataset_key(sha) == sha
    assert dataset_key(both).startswith("sources-") and dataset_key(both) != dataset_key(changed)
    assert combine(["abc"]) == "abc" and split_revision("a b c", 3) == ["a", "b", "c"]
    with pytest.raises(RepotuneError, match="names 2 sources' revisions, not 3"):
        split_revision("a b", 3)


def test_the_rules_of_several_sources() -> None:
    out = Path("out")
    assert IngestConfig(source=("only",), output=out).source == "only"
    assert IngestConfig(source=["repo", "jira:PAY"], output=out).sources == ("repo", "jira:PAY")
    with pytest.raises(RepotuneError, match=r"source 'repo' is given twice"):
        IngestConfig(source=("repo", "repo"), output=out)
    with pytest.raises(RepotuneError, match=r"several git URLs in one dataset"):
        IngestConfig(source=("https://h/a.git", "https://h/b.git"), output=out)
    with pytest.raises(RepotuneError, match=r"^--ref applies only to a git URL source$"):
        IngestConfig(source=("repo", "jira:PAY"), output=out, ref="main")
    with pytest.raises(
        RepotuneError, match=r"^--jira-jql applies only to a jira: source, and to exactly one"
    ):
        IngestConfig(source=("jira:A", "jira:B"), output=out, jira_jql="project = A")
    with pytest.raises(RepotuneError, match=r"^--cut applies only to a source with git history"):
        IngestConfig(source=("confluence:ENG", "jira:PAY"), output=out, cut="10%")
    # each source gets the settings that are its own
    config = IngestConfig(
        source=("https://h/a.git", "jira:PAY"), output=out, ref="v1", jira_jql="x", cut="10%"
    )
    assert (config.only("https://h/a.git").ref, config.only("https://h/a.git").jira_jql) == ("v1", None)
    assert (config.only("jira:PAY").ref, config.only("jira:PAY").jira_jql, config.only("jira:PAY").cut) == (
        None,
        "x",
        None,
    )
    pinned = IngestConfig.pinned(("jira:PAY", "https://h/a.git"), f"jira-x {'f' * 40}", out)
    assert pinned.ref == "f" * 40

    assert sources_of("repo", []) == ("repo",) and sources_of("repo", ["jira:PAY", ""]) == (
        "repo",
        "jira:PAY",
    )
    settings = ServiceSettings.from_parameters({"jira_jql": "project = PAY", "confluence_url": ""})
    assert settings.parameters() == {"jira_jql": "project = PAY"}
    with pytest.raises(RepotuneError, match=r"source_settings: unknown setting 'jira_token'"):
        ServiceSettings.from_parameters({"jira_token": "x"})
    with pytest.raises(RepotuneError, match=r"--jira-url: the URL carries credentials"):
        ServiceSettings(jira_url="https://me:secret@jira.example.com")


def test_the_pipeline_takes_a_typed_list_of_sources() -> None:
    import yaml

    from repotune.pipelines.local import RunConfig

    spec = next(
        yaml.safe_load_all((Path(__file__).parents[1] / "pipelines" / "repotune-cpu.yaml").read_text())
    )
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["more_sources"]["parameterType"] == "LIST"
    assert inputs["more_sources"]["description"].startswith("More sources for the same dataset")
    assert inputs["source_settings"]["parameterType"] == "STRUCT"
    for task in ("resolve-source", "ingest"):
        wired = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
        assert wired["more_sources"]["componentInputParameter"] == "more_sources", task

    config = RunConfig(source=("repo", "confluence:ENG"), services=ServiceSettings(jira_jql="project = PAY"))
    arguments = config.arguments()
    assert arguments["more_sources"] == ["confluence:ENG"]
    assert arguments["source_settings"] == {"jira_jql": "project = PAY"}
    assert json.dumps(arguments)  # what KFP sends must be plain JSON


def _repository(root: Path) -> Path:
    """A small project whose history fixes the Jira issue PAY-7."""
    root.mkdir()
    git(root, "init", "--quiet", "--initial-branch=main")
    steps = [
        (
            "Add the payment client",
            {"pay/client.py": "def charge(card, amount):\n    return gateway(card, amount)\n"},
        ),
        ("Document checkout", {"README.md": "# Shop\n\nCheckout charges the card through `pay.client`.\n"}),
        (
            "PAY-7: retry a card the gateway calls expired\n\nThe gateway answers 402 for such a card.",
            {"pay/client.py": "def charge(card, amount):\n    return gateway(card, amount, retry=1)\n"},
        ),
    ]
    for day, (message, files) in enumerate(steps, start=1):
        write_tree(root, files)
        git(root, "add", "--all")
        git(root, "commit", "--quiet", "--message", message, date=f"2024-02-0{day}T10:00:00+00:00")
    return root


@pytest.mark.integration
def test_a_repository_a_wiki_and_a_tracker_in_one_dataset(tmp_path: Path, monkeypatch) -> None:
    repo = _repository(tmp_path / "shop")
    monkeypatch.setenv("CONFLUENCE_PAT", PAT)
    monkeypatch.setenv("JIRA_USER", EMAIL)
    monkeypatch.setenv("JIRA_TOKEN", API_TOKEN)
    with (
        FakeConfluence([Space("ENG", "Engineering")], _pages(), accepted={f"Bearer {PAT}"}) as wiki,
        FakeJira(
            {"PAY": "Payments"}, _issues(cloud=True), cloud=True, accepted={basic(EMAIL, API_TOKEN)}
        ) as jira,
    ):
        # the tracker first: ingest still reads it after the history it is matched against
        config = IngestConfig(
            source=("jira:PAY", str(repo), "confluence:ENG"),
            output=tmp_path / "in",
            confluence_url=wiki.site,
            jira_url=jira.url,
        )
        result = repotune.ingest.run(config)
    manifest = json.loads(IngestLayout(tmp_path / "in").manifest.read_text())
    by_source = {entry["source"]: entry for entry in manifest["sources"]}
    assert list(by_source) == ["jira:PAY", str(repo), "confluence:ENG"]  # the order given
    assert by_source["jira:PAY"]["kept"] == {"issue": 45} and by_source["jira:PAY"]["linked_to_commits"] == 1
    assert by_source["confluence:ENG"]["kept"] == {"wiki_page": 58}
    assert by_source[str(repo)]["kept"] == {"code": 1, "commit": 3, "doc": 1}
    assert by_source[str(repo)]["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert manifest["source_type"] == "multiple" and manifest["commit"] == by_source[str(repo)]["commit"]
    assert manifest["records"] == result.records == 45 + 58 + 5
    assert manifest["kept"] == {"code": 1, "commit": 3, "doc": 1, "issue": 45, "wiki_page": 58}
    # three commits are too short a history for a cut: the file split, for the repository's reason
    assert manifest["split"]["mode"] == "files" and "3 commits of history" in manifest["split"]["reason"]

    records = list(read_records(IngestLayout(tmp_path / "in").records))
    assert {r.source for r in records} == {"jira:PAY", "shop", "confluence:ENG"}
    pay7 = next(r for r in records if r.meta.get("key") == "PAY-7")
    assert pay7.meta["fixed_by"] == [by_source[str(repo)]["commit"]]
    assert "PAY-7: retry a card the gateway calls expired" in issue_messages(pay7)[-1]["content"]
    assert PAT not in json.dumps(manifest) and API_TOKEN not in json.dumps(manifest)


def _repotune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "repotune.cli", *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        check=False,
    )


@pytest.mark.integration
def test_ingest_clean_train_over_a_repository_a_confluence_space_and_a_jira_project(tmp_path: Path) -> None:
    """Ingest (the command) over three sources, then clean and a few steps of training the tiny model;
    the clean report counts each source."""
    repo = _repository(tmp_path / "shop")
    with (
        FakeConfluence([Space("ENG", "Engineering")], _pages(), accepted={f"Bearer {PAT}"}) as wiki,
        FakeJira(
            {"PAY": "Payments"}, _issues(cloud=True), cloud=True, accepted={basic(EMAIL, API_TOKEN)}
        ) as jira,
    ):
        env = {"CONFLUENCE_PAT": PAT, "JIRA_USER": EMAIL, "JIRA_TOKEN": API_TOKEN}
        done = _repotune(
            "ingest", str(repo), "confluence:ENG", "jira:PAY", "-o", str(tmp_path / "in"),
            "--confluence-url", wiki.site, "--jira-url", jira.url, "--confluence-comments", env=env,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "ingested 108 records" in said
    assert f"  {repo}: 5 records (1 code, 3 commit, 1 doc)" in said
    assert "  confluence:ENG: 58 records (58 wiki_page)" in said
    assert "  jira:PAY: 45 records (45 issue); 1 resolved issues kept with their fixing commits" in said
    assert PAT not in said and API_TOKEN not in said

    # clean and train in this process: what their commands do, without two more interpreters' imports
    from repotune import clean, train

    clean.run(clean.CleanConfig(input=tmp_path / "in", output=tmp_path / "data", workers=1))
    stats = json.loads((tmp_path / "data" / "stats.json").read_text())
    assert set(stats["by_source"]) == {"shop", "confluence:ENG", "jira:PAY"}
    for counts in stats["by_source"].values():
        assert counts["train"] > 0
    assert sum(n["train"] + n["eval"] for n in stats["by_source"].values()) == stats["kept"]["total"]
    report = (tmp_path / "data" / "report.md").read_text()
    assert "## By source" in report
    for name, counts in stats["by_source"].items():
        assert f"| `{name}` | {counts['train']} | {counts['eval']} |" in report

    recipe, _ = train.resolve_recipe(
        "tiny-cpu", {"max_steps": 2, "save_every_steps": 2, "micro_batch_size": 2}
    )
    result = train.run(
        train.TrainConfig(data=tmp_path / "data", output=tmp_path / "model", recipe=recipe),
        log=lambda _: None,
    )
    assert result.steps == 2 and result.eval_loss is not None
    assert json.loads((tmp_path / "model" / "train_summary.json").read_text())["steps"] == 2


def test_the_upload_api_starts_a_run_over_several_sources(tmp_path: Path, monkeypatch) -> None:
    """A run request names more registered sources and wiki/tracker sources by name; the server's
    environment supplies their sites and credentials, and the run's command reads them all."""
    from fastapi.testclient import TestClient

    from repotune.api.app import create_app
    from repotune.api.db import Database
    from repotune.api.recipes import choose_recipe
    from repotune.api.runs import Runs
    from repotune.api.settings import ApiSettings
    from repotune.api.store import SourceStore
    from repotune.train import shipped_recipes_dir

    settings = ApiSettings(
        store=str(tmp_path / "s"),
        work_dir=tmp_path / "w",
        db_path=tmp_path / "db",
        tokens=("t",),
        recipe_dirs=(shipped_recipes_dir(),),
    )
    db = Database(settings.db_path)
    runs = Runs(settings, db, SourceStore(settings, db))
    registered = [
        {"id": "1" * 64, "kind": "github", "github": "team/app"},
        {"id": "2" * 64, "kind": "git", "repo_url": "https://example.com/team/app.git", "ref": "main"},
    ]
    recipe = choose_recipe("tiny-cpu", (shipped_recipes_dir(),))
    argv = runs.command(registered, recipe, {}, tmp_path / "run" / "output", ["confluence:ENG", "jira:PAY"])
    assert argv[argv.index("--") :] == [
        "--", "github:team/app", "https://example.com/team/app.git", "confluence:ENG", "jira:PAY",
    ]  # fmt: skip
    assert argv[argv.index("--ref") + 1] == "main"  # the git repository's ref, whichever source is first

    def error(response, status: int, code: str) -> str:
        assert response.status_code == status, response.text
        assert response.json()["error"]["code"] == code, response.text
        return response.json()["error"]["message"]

    with TestClient(create_app(settings), headers={"Authorization": "Bearer t"}) as client:
        source = client.post("/v1/sources", json={"github": "team/app"})
        assert source.status_code == 201, source.text
        first = source.json()["id"]
        body = {"source_id": first, "recipe": "tiny-cpu"}
        message = error(
            client.post("/v1/runs", json={**body, "services": ["jira:PAY"]}), 409, "source_not_configured"
        )
        assert message.startswith("jira:PAY: this server has no JIRA_URL set")
        error(client.post("/v1/runs", json={**body, "more_source_ids": ["0" * 64]}), 404, "source_not_found")
        error(client.post("/v1/runs", json={**body, "more_source_ids": [first]}), 422, "invalid_request")
        for bad in ("https://evil.example.com", "confluence:../x", "jira:PAY?jql=x", "file:/etc"):
            error(client.post("/v1/runs", json={**body, "services": [bad]}), 422, "invalid_request")
        error(client.post("/v1/runs", json={**body, "services": ["jira:A"] * 9}), 422, "invalid_request")
        schema = client.get("/openapi.json").json()["components"]["schemas"]["RunRequest"]["properties"]
        assert {"more_source_ids", "services"} <= set(schema)


@pytest.mark.integration
def test_submit_sends_every_source_to_the_kfp_api() -> None:
    from tests.kfp_api import running_kfp_api

    from repotune.pipelines.config import SubmitConfig
    from repotune.pipelines.submit import submit_run

    config = SubmitConfig(
        source=("https://git.example.com/team/app.git", "confluence:ENG", "jira:PAY"), host="x"
    )
    assert config.name().startswith("repotune-team-app-")
    with running_kfp_api() as kfp:
        run_id = submit_run(kfp.url, config.arguments(), "repotune-app-2", recipe="tiny-cpu")
        parameters = kfp.runs[run_id]["runtime_config"]["parameters"]
    assert parameters["source"] == "https://git.example.com/team/app.git"
    assert parameters["more_sources"] == ["confluence:ENG", "jira:PAY"]


@pytest.mark.integration
def test_the_resolve_and_ingest_steps_take_several_sources_under_kfp_local(
    tmp_path: Path, monkeypatch
) -> None:
    """The two steps as KFP runs them (kfp.local, each in its own process): the list and dict
    parameters arrive, the revision covers both sources, and the dataset's key is one path segment."""
    from kfp import dsl, local

    from repotune.components import steps
    from repotune.sources.revision import split_revision

    repo = _repository(tmp_path / "shop")
    monkeypatch.setenv("JIRA_USER", EMAIL)
    monkeypatch.setenv("JIRA_TOKEN", API_TOKEN)
    monkeypatch.chdir(tmp_path)
    resolve_op = dsl.component(steps.resolve_source, base_image="python:3.11", install_kfp_package=False)
    ingest_op = dsl.component(steps.ingest, base_image="python:3.11", install_kfp_package=False)
    # a workspace of the test's own: kfp.local removes the one it makes only after a whole pipeline
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               workspace_root=str(tmp_path / "kfp-workspace"))  # fmt: skip
    with FakeJira(
        {"PAY": "Payments"}, _issues(cloud=True), cloud=True, accepted={basic(EMAIL, API_TOKEN)}
    ) as jira:
        settings = {"jira_url": jira.url}
        resolved = resolve_op(source=str(repo), ref="", more_sources=["jira:PAY"], source_settings=settings)
        revision = resolved.output
        ingested = ingest_op(source=str(repo), more_sources=["jira:PAY"], revision=revision, include="",
                             max_commits=0, source_settings=settings, artifacts_root="")  # fmt: skip
    sha, jira_revision = split_revision(revision, 2)
    assert sha == git(repo, "rev-parse", "HEAD").strip() and jira_revision.startswith("jira-")
    records = ingested.outputs["records"]
    assert records.metadata["sources"] == [str(repo), "jira:PAY"]
    assert records.metadata["commit"].startswith("sources-") and records.metadata["records"] == 50
    manifest = json.loads((Path(records.path) / "manifest.json").read_text())
    assert [entry["records"] for entry in manifest["sources"]] == [5, 45]
