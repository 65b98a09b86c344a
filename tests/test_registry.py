"""The model registry against a real `mlflow server` whose artifacts live in an S3 bucket (SeaweedFS)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
import pytest
from mlflow import MlflowClient
from tests.mlflow_server import running_mlflow_on_s3
from tests.s3_server import closed_port_url, running_s3_server, s3_environment

from repotune.errors import RepotuneError
from repotune.evaluate.arms import Arm
from repotune.evaluate.decide import Decision, Policy, should_promote
from repotune.evaluate.metrics import Metric
from repotune.evaluate.registry import (
    ARM_TAG,
    COMMIT_TAG,
    DATASET_HASH_TAG,
    DECISION_REASONS_TAG,
    DECISION_TAG,
    FIM_TAG,
    HISTORY_TAG,
    MAX_TAG_VALUE_LENGTH,
    PREVIOUS_CHAMPION_TAG,
    RECIPE_HASH_TAG,
    RETRIEVAL_TAG,
    SOURCE_TAG,
    ChampionChange,
    Registry,
    champion_stack,
    metric_tags,
    metrics_from_tags,
    registered_fim,
    registered_retrieval,
)
from repotune.storage import client_from_env
from repotune.tracking import MlflowTracker

BUCKET = "repotune-registry-tests"
ARTIFACTS_PREFIX = "mlflow"


@dataclass(frozen=True)
class Servers:
    mlflow_url: str
    s3_endpoint: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with running_s3_server() as endpoint:
        with s3_environment(endpoint):
            client = client_from_env()
            if not client.bucket_exists(BUCKET):
                client.make_bucket(BUCKET)
        with running_mlflow_on_s3(
            tmp_path_factory.mktemp("mlflow"), endpoint, f"s3://{BUCKET}/{ARTIFACTS_PREFIX}"
        ) as url:
            yield Servers(url, endpoint)


def ppl(value: float, name: str = "perplexity", half_width: float = 0.3, n: int = 50) -> Metric:
    return Metric(name, value, n, value - half_width, value + half_width, higher_is_better=False)


def metrics(perplexity: float) -> dict[str, Metric]:
    return {
        "perplexity": ppl(perplexity),
        # Unchanged general-code perplexity: the default policy's forgetting check passes.
        "forgetting_perplexity": ppl(12.0, "forgetting_perplexity"),
    }


BASE = metrics(10.0)


def train_run(tracker: MlflowTracker, tmp_path: Path, index: int, perplexity: float) -> tuple[str, bytes]:
    """A stand-in training run: a few bytes of "weights" in a `model` folder, and its metrics."""
    weights = f"weights of run {index}\n".encode() + bytes(range(index, index + 8))
    folder = tmp_path / f"run{index}" / "model"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(weights)
    (folder / "config.json").write_text('{"tiny": true}\n')
    with tracker.start_run(f"train-{index}", {SOURCE_TAG: "github:org/repo"}) as run_id:
        tracker.log_metrics({"eval/perplexity": perplexity})
        tracker.log_artifact(folder)
    assert run_id is not None
    return run_id, weights


def provenance(index: int) -> dict[str, str]:
    return {
        SOURCE_TAG: "github:org/repo",
        COMMIT_TAG: f"{index:040x}",
        DATASET_HASH_TAG: f"data-{index}",
        RECIPE_HASH_TAG: "recipe-1",
    }


@pytest.mark.integration
def test_candidates_promote_reject_and_roll_back(servers: Servers, tmp_path: Path) -> None:
    url = servers.mlflow_url
    tracker = MlflowTracker(url, "repotune-registry-tests")
    registry = Registry(url, "repotune-org-repo")
    registry.check()
    assert registry.champion() is None

    # Awkward floats: champion() must give back exactly what was stored, bit for bit.
    candidates = [metrics(8.123456789012345), metrics(6.1 / 1.1), metrics(7.0)]
    versions: list[str] = []
    weights: list[bytes] = []
    decisions: list[Decision] = []
    for index, candidate in enumerate(candidates, start=1):
        run_id, blob = train_run(tracker, tmp_path, index, candidate["perplexity"].value)
        version = registry.register_candidate(run_id, "model", provenance(index), metrics=candidate)
        champion = registry.champion()
        scores = {"base": BASE, "candidate": candidate} | ({"champion": champion.metrics} if champion else {})
        decision = should_promote(scores, Policy(primary="perplexity", secondary=()))
        registry.record_decision(version, decision)
        if decision.promote:
            registry.promote(version, decision)
        versions.append(version)
        weights.append(blob)
        decisions.append(decision)
    v1, v2, v3 = versions

    assert [d.promote for d in decisions] == [True, True, False]
    assert "vs base" in decisions[0].reasons[0] and "vs champion" in decisions[1].reasons[0]
    with pytest.raises(ValueError, match="refuses"):
        registry.promote(v3, decisions[2])

    champion = registry.champion()
    assert champion is not None and champion.version == v2
    assert champion.metrics == candidates[1]
    assert champion.tags[PREVIOUS_CHAMPION_TAG] == v1
    assert champion.tags[COMMIT_TAG] == f"{2:040x}" and champion.tags[DECISION_TAG] == "promote"
    # The arm it was chosen as: what deploy and serving read to turn retrieval on or off.
    assert (champion.tags[ARM_TAG], champion.tags[RETRIEVAL_TAG]) == ("candidate", "false")
    assert champion.model_uri == f"models:/repotune-org-repo/{v2}"
    assert [change.version for change in registry.history()] == [v1, v2]

    client = MlflowClient(url, registry_uri=url)
    first = client.get_model_version("repotune-org-repo", v1)
    assert first.aliases == [] and PREVIOUS_CHAMPION_TAG not in first.tags
    rejected = client.get_model_version("repotune-org-repo", v3)
    assert rejected.tags[DECISION_TAG] == "reject"
    assert rejected.tags[DECISION_REASONS_TAG].startswith(
        "do not promote: candidate: perplexity 7.00 vs champion"
    )
    assert metrics_from_tags(rejected.tags) == candidates[2]
    model_tags = client.get_registered_model("repotune-org-repo").tags
    assert [entry["version"] for entry in json.loads(model_tags[HISTORY_TAG])] == [v1, v2]

    # The weights went through the server into the bucket, and come back from the version's source.
    with s3_environment(servers.s3_endpoint):
        keys = {obj.object_name for obj in client_from_env().list_objects(BUCKET, recursive=True)}
    assert sum(key.endswith("/model/weights.bin") for key in keys) == 3
    assert all(key.startswith(f"{ARTIFACTS_PREFIX}/") for key in keys)
    assert champion.source.startswith("mlflow-artifacts:/")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=champion.source, dst_path=str(tmp_path / "dl2"), tracking_uri=url
    )
    assert (Path(local) / "weights.bin").read_bytes() == weights[1]

    assert registry.rollback() == v1
    champion = registry.champion()
    assert champion is not None and champion.version == v1 and champion.metrics == candidates[0]
    last = registry.history()[-1]
    assert (last.version, last.rollback_from) == (v1, v2)
    folder = registry.download(champion.version, tmp_path / "dl1")
    assert (folder / "weights.bin").read_bytes() == weights[0]
    assert (folder / "config.json").read_text() == '{"tiny": true}\n'
    with pytest.raises(RepotuneError, match="no earlier champion"):
        registry.rollback()

    # Promoting after a rollback records the champion it replaced, and rollback then returns there.
    registry.promote(v2, decisions[1])
    assert registry.champion().tags[PREVIOUS_CHAMPION_TAG] == v1  # type: ignore[union-attr]
    assert registry.rollback() == v1


@pytest.mark.integration
def test_register_is_idempotent_and_decisions_are_truncated(servers: Servers, tmp_path: Path) -> None:
    url = servers.mlflow_url
    registry = Registry(url, "repotune-idempotent")
    assert registry.champion() is None and registry.history() == []
    with pytest.raises(RepotuneError, match="no champion to roll back"):
        registry.rollback()

    run_id, _ = train_run(MlflowTracker(url, "repotune-registry-tests"), tmp_path, 7, 9.0)
    with pytest.raises(RepotuneError, match="no logged model named 'missing' and no artifacts"):
        registry.register_candidate(run_id, "missing", provenance(7))
    first = registry.register_candidate(run_id, "model", provenance(7), metrics=metrics(9.0))
    again = registry.register_candidate(run_id, "model", {**provenance(7), RECIPE_HASH_TAG: "recipe-2"})
    assert again == first
    client = MlflowClient(url, registry_uri=url)
    assert len(client.search_model_versions("name = 'repotune-idempotent'")) == 1
    assert client.get_model_version("repotune-idempotent", first).tags[RECIPE_HASH_TAG] == "recipe-2"

    registry.record_decision(first, Decision(False, ("do not promote: a reason",), Arm("candidate", True)))
    tags = client.get_model_version("repotune-idempotent", first).tags
    assert (tags[ARM_TAG], tags[RETRIEVAL_TAG]) == ("candidate_retrieval", "true")
    assert registered_retrieval(tags) is True  # what deploy and the next evaluation read back
    assert FIM_TAG not in tags and registered_fim(tags) is None  # no FIM spans scored
    registry.record_decision(
        first, Decision(False, ("do not promote: a reason",), Arm("candidate"), fim=False)
    )
    tags = client.get_model_version("repotune-idempotent", first).tags
    assert tags[FIM_TAG] == "false" and registered_fim(tags) is False

    long = Decision(False, tuple(f"do not promote: reason {i} " + "x" * 1000 for i in range(10)))
    registry.record_decision(first, long)
    reasons = client.get_model_version("repotune-idempotent", first).tags[DECISION_REASONS_TAG]
    assert len(reasons) == MAX_TAG_VALUE_LENGTH and reasons.endswith("...")
    assert reasons.startswith("do not promote: reason 0")


@pytest.mark.integration
def test_unreachable_registry_fails_check_fast_naming_the_uri() -> None:
    url = closed_port_url()
    started = time.monotonic()
    with pytest.raises(RepotuneError, match=url):
        Registry(url, "any").check()
    assert time.monotonic() - started < 10


def test_metric_tags_round_trip_with_and_without_intervals() -> None:
    stored = {
        "perplexity": Metric("perplexity", 1 / 3, 40, 0.1, 0.7, higher_is_better=False, confidence=0.9),
        "exact_match": Metric("exact_match", 0.25, 5, None, None, higher_is_better=True),
    }
    tags = metric_tags(stored)
    assert tags["metric.perplexity.value"] == repr(1 / 3)
    assert tags["metric.perplexity.higher_is_better"] == "false"
    assert "metric.exact_match.ci_low" not in tags
    assert metrics_from_tags({**tags, SOURCE_TAG: "x", "metric.note": "ignored"}) == stored

    broken = {key: value for key, value in tags.items() if key != "metric.perplexity.n"}
    with pytest.raises(RepotuneError, match=r"'perplexity' lacks its tag metric.perplexity.n"):
        metrics_from_tags(broken)
    with pytest.raises(RepotuneError, match="malformed"):
        metrics_from_tags({**tags, "metric.perplexity.value": "nan"})
    with pytest.raises(ValueError, match="named 'perplexity'"):
        metric_tags({"ppl": stored["perplexity"]})
    with pytest.raises(RepotuneError, match="not a valid MLflow tag key"):
        metric_tags({"bad?": Metric("bad?", 1.0, 1, None, None, higher_is_better=True)})


def test_champion_stack_pushes_promotions_and_pops_rollbacks() -> None:
    changes = [
        ChampionChange("1", "t1"),
        ChampionChange("2", "t2"),
        ChampionChange("3", "t3"),
        ChampionChange("2", "t4", rollback_from="3"),
        ChampionChange("4", "t5"),
    ]
    assert champion_stack(changes) == ["1", "2", "4"]
    # The oldest entries dropped from a long history: the top is still right.
    assert champion_stack([ChampionChange("2", "t4", rollback_from="3")]) == ["2"]


def test_promote_refuses_a_refusing_decision_before_any_call() -> None:
    registry = Registry(closed_port_url(), "any")
    with pytest.raises(ValueError, match="the caller"):
        registry.promote("1", Decision(False, ("do not promote: the caller must not ask",)))


CODE = {
    "billing/invoice.py": "def compute_total(items):\n    return sum(item.price for item in items)\n",
    "greet/greeter.py": "class Greeter:\n    def greeting(self, name):\n        return 'Hello ' + name\n",
}
"""A small repository whose index a served model carries."""


def ship_an_index(folder: Path) -> None:
    """An index of ``CODE`` in ``folder/retrieval/``, as the pipeline's train step ships it."""
    from repotune.records import Kind, Record
    from repotune.retrieval import RetrievalConfig, RetrievalIndex
    from repotune.retrieval.shipped import add_to_model

    records = [
        Record(content=text, kind=Kind.CODE, source="test", id=path, file_path=path, revision="abc")
        for path, text in CODE.items()
    ]
    RetrievalIndex.build(records, RetrievalConfig(window_lines=4, stride_lines=2)).save(
        folder.parent / "index"
    )
    assert add_to_model(folder.parent / "index", folder) is not None


@pytest.mark.integration
def test_the_champion_loads_as_an_mlflow_model_and_deploys_from_its_folder(
    servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A logged model (the pyfunc flavor over the model folder) registered and promoted: MLflow's own
    `models:/NAME@champion` loads and completes text as evaluation scores it (the file header's token
    never written, the line repeat penalty it was logged with), and KServe's S3 folder holds the
    model files. With the index the model carries, it answers with the context `repotune serve` would
    put in front of the same prompt, as the retrieval arm that was scored."""
    import mlflow.pyfunc
    import openai
    import yaml
    from tests.serving_helpers import make_serving_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repotune.data.transforms import FILENAME_TOKEN, document_start, encode_prompt
    from repotune.decoding import newline_tokens, stop_token_ids, suppressed_token_ids
    from repotune.deploy.uris import resolve_model_uri
    from repotune.evaluate.generate import greedy_lines
    from repotune.evaluate.registry import WEIGHTS_PATH_TAG
    from repotune.serving.server import start_background

    url = servers.mlflow_url
    folder = make_serving_model(tmp_path / "model", fim=False, header=True)
    (folder / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\x00" * 64)
    ship_an_index(folder)
    tracker = MlflowTracker(url, "repotune-registry-tests")
    with tracker.start_run("evaluate") as run_id:
        tracker.log_metrics({"candidate.perplexity": 8.0})
        model_id = tracker.log_model(
            folder, exclude=("checkpoints",), line_repeat_penalty=1.5, retrieval=True
        )
    assert model_id is not None and run_id is not None
    registry = Registry(url, "repotune-flavor")
    version = registry.register_candidate(run_id, "model", provenance(1), metrics=metrics(8.0))
    registry.promote(version, Decision(True, ("promote: test",)))

    champion = registry.champion()
    client = MlflowClient(url, registry_uri=url)
    logged = client.get_logged_model(model_id)  # after registration: its tags name the version
    assert logged.source_run_id == run_id and logged.name == "model"
    assert champion is not None and champion.source == f"models:/{model_id}"
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [
        {"name": "repotune-flavor", "version": version}
    ]
    assert champion.tags[WEIGHTS_PATH_TAG] == "artifacts/model"
    assert champion.files_uri == f"{logged.artifact_location}/artifacts/model"
    assert champion.files_uri.startswith("mlflow-artifacts:/")
    assert {m.key: m.value for m in logged.metrics or []} == {"candidate.perplexity": 8.0}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    # repotune's decoding code went with the model, so an environment without repotune can load it
    stored = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "mlm")))
    assert (stored / "code" / "repotune" / "decoding.py").is_file()
    assert not list((stored / "code").rglob("__pycache__"))
    logged_config = yaml.safe_load((stored / "MLmodel").read_text())["flavors"]["python_function"]["config"]
    assert logged_config == {"line_repeat_penalty": 1.5, "retrieval": True}
    assert "bm25s==" in (stored / "requirements.txt").read_text()  # searching the index needs it
    tokenizer = AutoTokenizer.from_pretrained(folder)
    header = tokenizer.convert_tokens_to_ids(FILENAME_TOKEN)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    # Evaluation, the server and the pyfunc model stop at the same tokens (the chat template's <|im_end|>
    # too, which this tiny model's generation config does not name).
    eos = sorted(stop_token_ids(reference, tokenizer))
    # "": a document's start, as served; no trailing whitespace, which evaluation's prompts never end in
    # (the server's and this model's healing of it is compared with the server below)
    prompts = ["def add(a, b):", "class Greeter:", "x =", ""]

    def preferring_the_header(model: Any) -> Any:
        """As a small model given <filename> blocks of context now and then starts a file header."""

        def prefer(_module: Any, _inputs: Any, output: Any) -> None:
            output.logits[..., header] += 100.0

        return model.register_forward_hook(prefer)

    def scored(line_penalty: float) -> list[str]:
        """Evaluation's own greedy decoding (not `generate`) of the prompts, as text."""
        rows = greedy_lines(
            reference, [encode_prompt(tokenizer, p) or document_start(tokenizer) for p in prompts],
            max_new_tokens=8, eos=eos, pad=eos[0],
            done=lambda row, tokens: False, prefill_alone=True, line_penalty=line_penalty,
            newlines=newline_tokens(tokenizer), banned=frozenset(suppressed_token_ids(tokenizer, eos)),
        )  # fmt: skip
        assert all(header not in row.tokens for row in rows)
        return [tokenizer.decode(row.tokens, skip_special_tokens=True) for row in rows]

    hooks = [preferring_the_header(reference)]
    try:
        expected = {penalty: scored(penalty) for penalty in (1.5, 0.0)}
        # the penalty changes what is written (the tiny model ends a document it is asked to start at once)
        assert expected[1.5] != expected[0.0] and all(expected[1.5][:-1])
        for config, penalty in (
            ({"retrieval": False}, 1.5),
            ({"line_repeat_penalty": 0, "retrieval": False}, 0.0),
        ):
            loaded = mlflow.pyfunc.load_model("models:/repotune-flavor@champion", model_config=config)
            assert loaded.unwrap_python_model().eos == eos
            hooks.append(preferring_the_header(loaded.unwrap_python_model().model))
            assert loaded.predict(prompts, params={"max_tokens": 8}) == expected[penalty], penalty
        sampled = loaded.predict(["y"], params={"max_tokens": 8, "temperature": 1.0})
        assert len(sampled) == 1 and sampled[0]  # sampling never picks the header either
    finally:
        for hook in hooks:
            hook.remove()

    # As logged, it retrieves: the same prompts get what the server answers a request that asks for
    # retrieval, at the server's penalty; a prompt that ends in whitespace has it held back and written
    # by the model, as the server does (repotune.serving.healing).
    asked = ["total = compute_total(", "class Greeter:\n    ", "message = Greeter().greeting(", "total = "]
    retrieving = mlflow.pyfunc.load_model(
        "models:/repotune-flavor@champion", model_config={"line_repeat_penalty": 1.0}
    )
    answers = retrieving.predict(asked, params={"max_tokens": 8})
    with start_background(folder, max_tokens=8) as server:
        served = openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0, timeout=60)
        # one request a prompt, so that each is decoded alone, as the pyfunc model decodes it (a batch's
        # rows can differ in the last bits of a logit, which this noise model's near ties turn into tokens)
        replies = [
            served.completions.create(
                model=server.model_name,
                prompt=prompt,
                max_tokens=8,
                temperature=0,
                extra_body={"retrieval": True},
            )
            for prompt in asked
        ]
    assert all(reply.model_extra["retrieval"][0] for reply in replies)  # every prompt got context
    assert answers == [reply.choices[0].text for reply in replies]
    plain = mlflow.pyfunc.load_model(
        "models:/repotune-flavor@champion", model_config={"line_repeat_penalty": 1.0, "retrieval": False}
    )
    assert plain.predict(asked, params={"max_tokens": 8}) != answers  # the context changed what was written

    # What evaluation scores and KServe deploys: the plain Hugging Face folder, without checkpoints.
    local = registry.download(version, tmp_path / "dl")
    assert {p.name for p in local.iterdir()} == {p.name for p in folder.iterdir()} - {"checkpoints"}
    assert (local / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    deployed = resolve_model_uri(
        "models:/repotune-flavor@champion",
        tracking_uri=url,
        artifacts_s3=f"s3://{BUCKET}/{ARTIFACTS_PREFIX}",
    )
    assert deployed.version == version and deployed.commit == f"{1:040x}"
    bucket, key = deployed.storage_uri.removeprefix("s3://").split("/", 1)
    with s3_environment(servers.s3_endpoint):
        s3 = client_from_env()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            size = s3.stat_object(bucket, f"{key}/{name}").size
            assert size == (folder / name).stat().st_size, name


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's own model server (`mlflow models serve`, as MLflow's deployment tools run it) serves
    the champion of a local registry, its index searched: same completions as `mlflow.pyfunc` in
    process. About 20 s."""
    import os
    import signal
    import subprocess
    import sys

    import mlflow.pyfunc
    import requests
    from tests.mlflow_server import free_port
    from tests.serving_helpers import make_serving_model

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = make_serving_model(tmp_path / "model", fim=False)
    ship_an_index(folder)  # searched in the server's process too (bm25s)
    tracker = MlflowTracker(tracking_uri, "serve-tests")
    elsewhere = tmp_path / "a-checkout"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with tracker.start_run("evaluate") as run_id:
        tracker.log_model(folder, retrieval=True)
    # the weights went beside the database, not into ./mlruns of the folder the process ran in
    assert list(elsewhere.iterdir()) == []
    assert list((tmp_path / "mlruns" / "serve-tests").rglob("model.safetensors"))
    registry = Registry(tracking_uri, "repotune-served")
    assert run_id is not None
    registry.promote(registry.register_candidate(run_id, "model", {}), Decision(True, ("promote: test",)))

    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # its uvicorn
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/repotune-served@champion"]
    command += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        request = {"inputs": ["total = compute_total(", "x = "], "params": {"max_tokens": 4}}
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    expected = mlflow.pyfunc.load_model("models:/repotune-served@champion").predict(
        request["inputs"], params=request["params"]
    )
    assert answer.json() == {"predictions": expected}
    unaided = mlflow.pyfunc.load_model("models:/repotune-served@champion", model_config={"retrieval": False})
    assert unaided.predict(request["inputs"], params=request["params"])[0] != expected[0]  # context counted
