"""Tracking against a real `mlflow server`, and a server that dies mid-run without stopping training."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tests.mlflow_server import MlflowServer, free_port, running_mlflow_server

from repotune.errors import RepotuneError
from repotune.tracking import (
    PARENT_RUN_TAG,
    SUMMARY_RUN_ID_KEY,
    TRAIN_RUN_TAG,
    MlflowTracker,
    NullTracker,
    Tracker,
    data_provenance,
    evaluate_run,
    flatten,
    jsonl_dataset,
    make_tracker,
    recipe_label,
    repository_label,
    split_datasets,
    stage_run,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Lora:
    rank: int = 8
    alpha: float = 16.0


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def warnings_from_tracking(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "repotune.tracking" and r.levelno == logging.WARNING]


def test_logs_params_metrics_tags_and_artifacts(mlflow_url: str, tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text('{"loss": 1.0}\n')
    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "config.json").write_text("{}\n")
    (tmp_path / "model" / "sub" / "weights.bin").write_bytes(b"\x00" * 16)

    tracker = make_tracker(mlflow_url, "repotune-tests")
    assert isinstance(tracker, MlflowTracker) and isinstance(tracker, Tracker)
    tracker.check()
    with tracker.start_run("tiny-run", {"source": "github:org/repo"}) as run_id:
        assert run_id is not None and tracker.run_id == run_id
        tracker.log_params({"recipe": {"lr": 2e-4, "lora": Lora()}, "base": "tiny", "notes": "x" * 7000})
        for step, loss in enumerate([2.0, 1.5, 1.25]):
            tracker.log_metrics({"train/loss": loss}, step=step)
        tracker.log_metrics({"eval/loss": 1.1})
        tracker.set_tags({"stage": "train"})
        tracker.log_artifact(tmp_path / "summary.json")
        tracker.log_artifact(tmp_path / "model")
        tracker.log_artifact(tmp_path / "summary.json", artifact_path="reports")
    assert tracker.run_id is None

    client = MlflowClient(mlflow_url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-run"
    assert run.data.params["recipe.lr"] == "0.0002"
    assert run.data.params["recipe.lora.rank"] == "8"
    assert run.data.params["recipe.lora.alpha"] == "16.0"
    assert run.data.params["base"] == "tiny"
    assert len(run.data.params["notes"]) == 6000  # MLflow's limit; longer values are truncated
    assert run.data.tags["source"] == "github:org/repo" and run.data.tags["stage"] == "train"
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.5), (2, 1.25)]
    assert run.data.metrics["eval/loss"] == 1.1
    top = {a.path for a in client.list_artifacts(run_id)}
    assert top == {"summary.json", "model", "reports"}
    model = {a.path for a in client.list_artifacts(run_id, "model")}
    assert model == {"model/config.json", "model/sub"}
    downloaded = Path(client.download_artifacts(run_id, "model/sub/weights.bin", str(tmp_path / "dl")))
    assert downloaded.read_bytes() == b"\x00" * 16


def test_a_failing_run_is_marked_failed(mlflow_url: str) -> None:
    tracker = MlflowTracker(mlflow_url, "repotune-tests")
    with pytest.raises(ValueError, match="boom"), tracker.start_run("failing") as run_id:
        raise ValueError("boom")
    assert MlflowClient(mlflow_url).get_run(run_id).info.status == "FAILED"


def test_server_dying_mid_run_costs_seconds_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = MlflowServer(tmp_path / "mlflow")
    try:
        server.wait_healthy()
        tracker = make_tracker(server.url, "repotune-tests")
        with caplog.at_level(logging.WARNING), tracker.start_run("doomed"):
            tracker.log_metrics({"train/loss": 2.0}, step=0)
            server.kill()
            started = time.perf_counter()
            for step in range(1, 21):
                tracker.log_metrics({"train/loss": 2.0 / step}, step=step)
                if step == 10:
                    tracker.log_params({"step": step})
            tracker.log_artifact(tmp_path / "mlflow" / "server.log")
            elapsed = time.perf_counter() - started
    finally:
        server.kill()
    assert elapsed < 10.0
    warnings = warnings_from_tracking(caplog)
    assert len(warnings) == 1
    assert server.url in warnings[0].getMessage()


def test_unreachable_server_fails_check_and_start_with_the_uri() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    tracker = make_tracker(url, "repotune-tests")
    started = time.perf_counter()
    with pytest.raises(RepotuneError, match=f"cannot reach the MLflow tracking server at {url}"):
        tracker.check()
    with pytest.raises(RepotuneError, match=url), tracker.start_run("never"):
        pass
    assert time.perf_counter() - started < 10.0


@pytest.mark.parametrize(("uri", "rank"), [(None, 0), ("", 0), ("http://127.0.0.1:1", 1)])
def test_null_tracker_when_off_or_not_rank_zero(uri: str | None, rank: int, tmp_path: Path) -> None:
    tracker = make_tracker(uri, "repotune-tests", rank=rank)
    assert isinstance(tracker, NullTracker) and isinstance(tracker, Tracker)
    tracker.check()
    (tmp_path / "eval.jsonl").write_text('{"content": "x"}\n')
    with tracker.start_run("nothing", {"a": 1}) as run_id:
        tracker.log_params({"a": {"b": 1}})
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_artifact(tmp_path)
        tracker.set_tags({"x": "y"})
        tracker.log_dataset(split_datasets(tmp_path)["evaluation"], "evaluation")
        assert tracker.log_model(tmp_path) is None
    assert run_id is None and tracker.run_id is None


def test_flatten_nested_mappings_and_dataclasses() -> None:
    nested = {"a": {"b": 1, "c": {"d": None}}, "lora": Lora(rank=4), "empty": {}, "list": [1, 2]}
    assert flatten(nested) == {
        "a.b": 1,
        "a.c.d": None,
        "lora.rank": 4,
        "lora.alpha": 16.0,
        "empty": {},
        "list": [1, 2],
    }


SHA = "3f2c1ab" + "0" * 33


def cleaned_folder(root: Path, source: str = "github:org/myrepo", commit: str | None = SHA) -> Path:
    """A clean stage's output as far as tracking reads it: the two splits and stats.json's source."""
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text('{"content": "def add(a, b): ..."}\n{"content": "x = 1"}\n')
    (root / "eval.jsonl").write_text('{"content": "def mul(a, b): ..."}\n')
    stats = {"kept": 3, "source": {"source": source, "source_type": "github", "commit": commit}}
    (root / "stats.json").write_text(json.dumps(stats))
    return root


def test_runs_are_named_by_repository_commit_and_recipe_linked_and_list_their_datasets(
    mlflow_url: str, tmp_path: Path
) -> None:
    data = cleaned_folder(tmp_path / "data")
    tracker = MlflowTracker(mlflow_url, "repotune-lineage")
    with tracker.start_run(*stage_run("train", data_provenance(data), recipe_label("smollm2-135m", "lora"))):
        for context, dataset in split_datasets(data).items():
            tracker.log_dataset(dataset, context)
        train_id = tracker.run_id
    assert train_id is not None
    # What evaluation reads back from the model folder's train_summary.json.
    summary = {
        "base_model": "smollm2-135m",
        "method": "lora",
        "data": {**data_provenance(data), "train_records": 2},
        SUMMARY_RUN_ID_KEY: train_id,
    }
    with tracker.start_run(*evaluate_run(summary)) as evaluate_id:
        tracker.log_dataset(split_datasets(data)["evaluation"], "evaluation")

    client = MlflowClient(mlflow_url)
    train, evaluate = client.get_run(train_id), client.get_run(evaluate_id)
    assert train.info.run_name == "myrepo@3f2c1ab · smollm2-135m lora · train"
    assert evaluate.info.run_name == "myrepo@3f2c1ab · smollm2-135m lora · evaluate"
    for run in (train, evaluate):
        assert run.data.tags["dataset.source"] == "github:org/myrepo"
        assert run.data.tags["dataset.commit"] == SHA
    assert evaluate.data.tags[PARENT_RUN_TAG] == evaluate.data.tags[TRAIN_RUN_TAG] == train_id
    assert PARENT_RUN_TAG not in train.data.tags
    # How the MLflow UI finds the runs nested under the train run.
    children = client.search_runs([train.info.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{train_id}'")
    assert [child.info.run_id for child in children] == [evaluate_id]

    def inputs(run) -> dict[str, tuple]:
        found = {}
        for item in run.inputs.dataset_inputs:
            context = {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]
            dataset = item.dataset
            found[context] = (dataset.name, dataset.digest, dataset.source_type, json.loads(dataset.source))
            found[context + ".rows"] = json.loads(dataset.profile)["num_rows"]
        return found

    tree = {"url": f"https://github.com/org/myrepo/tree/{SHA}"}
    digest = hashlib.sha256((data / "train.jsonl").read_bytes()).hexdigest()[:16]
    assert inputs(train) == {
        "training": ("myrepo@3f2c1ab/train", digest, "http", tree),
        "training.rows": 2,
        "evaluation": ("myrepo@3f2c1ab/eval", jsonl_dataset(data / "eval.jsonl", {}).digest, "http", tree),
        "evaluation.rows": 1,
    }
    assert inputs(evaluate) == {key: value for key, value in inputs(train).items() if "evaluation" in key}


def test_an_untracked_training_leaves_the_evaluation_unlinked(tmp_path: Path) -> None:
    summary = {"base_model": "/models/Qwen/Qwen2.5-Coder-0.5B/", "method": "full", "data": {}}
    summary[SUMMARY_RUN_ID_KEY] = None
    assert evaluate_run(summary) == (
        "data · Qwen2.5-Coder-0.5B full · evaluate",
        {"repotune.stage": "evaluate"},
    )
    assert data_provenance(tmp_path) == {} and split_datasets(tmp_path) == {}


@pytest.mark.parametrize(
    ("source", "commit", "label", "dataset_source"),
    [
        ("github:org/myrepo", SHA, "myrepo@3f2c1ab", f"https://github.com/org/myrepo/tree/{SHA}"),
        (
            "https://git.example.com/team/tool.git",
            SHA,
            "tool@3f2c1ab",
            "https://git.example.com/team/tool.git",
        ),
        ("git@github.com:org/thing.git", None, "thing", "git@github.com:org/thing.git"),
        ("/home/me/src/project.tar.gz", None, "project", "/home/me/src/project.tar.gz"),
    ],
)
def test_datasets_name_their_repository_and_point_at_its_source(
    tmp_path: Path, source: str, commit: str | None, label: str, dataset_source: str
) -> None:
    data = cleaned_folder(tmp_path / "data", source, commit)
    provenance = data_provenance(data)
    assert repository_label(provenance) == label
    dataset = split_datasets(data)["training"]
    assert (dataset.name, dataset.source, dataset.records, dataset.commit) == (
        f"{label}/train",
        dataset_source,
        2,
        commit,
    )
    entity = dataset.to_mlflow()._to_mlflow_entity()
    assert entity.digest == dataset.digest and json.loads(entity.profile)["num_rows"] == 2
    if not dataset_source.startswith("https://"):
        assert (entity.source_type, json.loads(entity.source)) == ("code", {"tags": {"source": source}})


def test_logging_a_model_leaves_no_warning_or_progress_bar_in_the_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """An evaluate step's log shows no MLflow nudge towards type hints on predict() (which would drop
    the signature's params) and no 'Downloading artifacts' bar from copying the model's files."""
    import warnings

    from tests.serving_helpers import make_serving_model

    folder = make_serving_model(tmp_path / "model", fim=False)
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "quiet")
    capfd.readouterr()
    warnings.onceregistry.clear()  # MLflow shows the nudge once a process: this test sees it again
    with warnings.catch_warnings(record=True) as caught, tracker.start_run("evaluate"):
        warnings.simplefilter("always")
        assert tracker.log_model(folder) is not None
    assert [str(w.message) for w in caught if "type hints" in str(w.message)] == []
    printed = capfd.readouterr()
    assert "Downloading artifacts" not in printed.err + printed.out
