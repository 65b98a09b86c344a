"""Evaluate on tiny models trained for real: every metric scored, reports written, the registry moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import git, write_tree
from tests.test_train import PROJECT, TINY

from repotune import clean, evaluate, ingest
from repotune.clean import CleanConfig
from repotune.clean.split import SplitConfig
from repotune.errors import RepotuneError
from repotune.evaluate import EvaluateConfig, EvaluateResult, Policy, ScoringConfig
from repotune.ingest import IngestConfig
from repotune.train.finetune import run_training
from repotune.train.recipe import load_recipe

# Small samples, short blocks: enough examples (>= 20) for confidence intervals, seconds per model.
QUICK = ScoringConfig(
    seq_len=32, max_blocks=48, line_samples=20, fim_samples=20, max_new_tokens=8, forgetting_files=3
)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A cleaned project with enough held out (30% of files, newest commits) to score with CIs."""
    root = tmp_path_factory.mktemp("eval-project")
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    for day, (path, text) in enumerate(sorted(PROJECT.items()), start=1):
        write_tree(repo, {path: text})
        git(repo, "add", "--all")
        git(
            repo,
            "commit",
            "-qm",
            f"Add {path}\n\nPrices for module {day}.",
            date=f"2024-01-{day:02d}T00:00:00+00:00",
        )
    ingest.run(IngestConfig(source=str(repo), output=root / "ingest"))
    clean.run(
        CleanConfig(
            input=root / "ingest", output=root / "clean", split=SplitConfig(eval_fraction=0.3), workers=1
        )
    )
    return root / "clean"


def _train(project: Path, out: Path, steps: int) -> Path:
    run_training(
        project, out, load_recipe(TINY, {"max_steps": steps, "save_every_steps": 1000}), log=lambda _: None
    )
    return out


@pytest.fixture(scope="module")
def trained(project: Path, tmp_path_factory) -> Path:
    return _train(project, tmp_path_factory.mktemp("models") / "m20", 20)


def evaluate_model(model: Path, data: Path, output: Path, **settings) -> EvaluateResult:
    log = settings.pop("log", lambda _: None)
    return evaluate.run(EvaluateConfig(model=model, data=data, output=output, **settings), log=log)


@pytest.mark.integration
def test_every_metric_for_base_and_candidate_and_reports(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    result = evaluate_model(trained, project, tmp_path / "eval", scoring=QUICK, log=lambda _: None)
    base, candidate = result.models["base"], result.models["candidate"]
    for name in ("perplexity", "forgetting_perplexity", "line_exact_match", "line_edit_similarity",
                 "commit_rouge_l", "commit_chrf"):  # fmt: skip
        assert name in base and name in candidate, name
    # FIM is scored only for a model that has FIM tokens: the trained one, not the base.
    assert "fim_edit_similarity" in candidate and "fim_edit_similarity" not in base
    assert candidate["perplexity"].n >= 20 and candidate["perplexity"].ci_low is not None
    assert candidate["perplexity"].value < base["perplexity"].value  # it learned the project
    assert candidate["line_exact_match"].n == 20
    report = (tmp_path / "eval" / "report.md").read_text().splitlines()
    assert report[2].startswith(("**The candidate wins", "**The candidate is not promoted"))
    assert "<svg" in (tmp_path / "eval" / "report.html").read_text()
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["decision"]["promote"] is result.decision.promote
    assert EvaluateResult.load(tmp_path / "eval") == result  # what metrics.json says is what was returned

    again = evaluate_model(trained, project, tmp_path / "again", scoring=QUICK, log=lambda _: None)
    assert again.models == result.models  # seeds fixed: the same numbers every time


def test_bad_evaluation_input_is_named(project: Path, trained: Path, tmp_path: Path) -> None:
    with pytest.raises(RepotuneError, match=r"no eval\.jsonl"):
        evaluate_model(trained, tmp_path, tmp_path / "o", scoring=QUICK)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text("")
    with pytest.raises(RepotuneError, match="nothing held out"):
        evaluate_model(trained, tmp_path / "data", tmp_path / "o", scoring=QUICK)
    with pytest.raises(RepotuneError, match="holds no model"):
        evaluate_model(tmp_path, project, tmp_path / "o", scoring=QUICK)


@pytest.mark.integration
def test_an_unreachable_registry_fails_and_decides_nothing(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    from tests.mlflow_server import free_port

    with pytest.raises(RepotuneError, match=r"127\.0\.0\.1"):
        evaluate_model(
            trained, project, tmp_path / "o", scoring=QUICK, tracking_uri=f"http://127.0.0.1:{free_port()}"
        )
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.slow
def test_the_better_run_becomes_champion_and_a_worse_one_does_not(
    project: Path, trained: Path, tmp_path: Path
) -> None:
    from tests.mlflow_server import running_mlflow_on_s3
    from tests.s3_server import running_s3_server, s3_environment

    from repotune.evaluate.registry import Registry
    from repotune.storage import client_from_env

    policy = Policy(require_significance=False, max_forgetting_regression=None)
    better = _train(project, tmp_path / "m60", 60)
    worse = _train(project, tmp_path / "m2", 2)
    with running_s3_server() as endpoint:
        with s3_environment(endpoint):
            client_from_env().make_bucket("models")
        with running_mlflow_on_s3(tmp_path / "mlflow", endpoint, "s3://models/mlflow") as url:

            def evaluate(model: Path, name: str) -> EvaluateResult:
                return evaluate_model(
                    model,
                    project,
                    tmp_path / name,
                    scoring=QUICK,
                    policy=policy,
                    tracking_uri=url,
                    log=lambda _: None,
                )

            first = evaluate(trained, "e1")
            assert first.decision.promote, first.decision.reasons
            second = evaluate(better, "e2")
            assert "champion" in second.models  # the champion was scored on the same samples
            assert second.decision.promote, second.decision.reasons
            third = evaluate(worse, "e3")
            assert not third.decision.promote

            registry = Registry(url, "repotune")
            assert registry.champion().version == second.registered_version
            assert [c.version for c in registry.history()] == [
                first.registered_version,
                second.registered_version,
            ]
            versions = {v.version for v in registry._client.search_model_versions("name='repotune'")}
            assert versions == {
                first.registered_version,
                second.registered_version,
                third.registered_version,
            }


@pytest.mark.integration
def test_evaluate_from_the_command_line(project: Path, trained: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "repotune.cli", "evaluate", str(trained), str(project),
         "-o", str(tmp_path / "e"), "--line-samples", "4", "--fim-samples", "2", "--max-blocks", "8"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| perplexity | lower |" in done.stderr
    assert (tmp_path / "e" / "report.html").is_file()
