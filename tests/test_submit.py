"""`repotune submit` on a cluster, through the real kfp SDK against the KFP API stand-in: the run uses the
ServiceAccount the manifests bind, a KFP backend too old for the compiled pipeline is refused before
anything is created, and a team's own images reach every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.version import Version
from tests.kfp_api import running_kfp_api

from repotune import images
from repotune.deploy import DeploySettings, Runtime
from repotune.deploy.render import render_serving_runtime
from repotune.errors import RepotuneError
from repotune.pipelines.submit import (
    COMPILED,
    MIN_KFP_BACKEND,
    PLATFORM_FIELDS_SINCE,
    SERVICE_ACCOUNT,
    compile_pipeline,
    minimum_backend,
    platform_fields,
    submit_run,
)
from repotune.train import resolve_recipe
from repotune.train.cluster_job import render_pytorchjob

ROOT = Path(__file__).resolve().parent.parent
ARGUMENTS = {"source": "https://git.example.com/team/app.git", "ref": "main"}
TEAM = "registry.example.com/ml-platform/repotune"


def executor_images(spec: dict) -> dict[str, str]:
    spec = spec.get("pipeline_spec", spec)  # with a platform spec, the SDK nests both
    return {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def test_the_minimum_backend_is_what_the_committed_pipelines_use():
    for name in COMPILED:
        documents = list(yaml.safe_load_all((ROOT / "pipelines" / name).read_text()))
        fields = platform_fields(documents)
        assert "secretAsEnv.optional" in fields, name  # kfp-kubernetes >= 2.15 writes it every time
        assert fields <= PLATFORM_FIELDS_SINCE.keys(), name
        assert minimum_backend(fields) == Version(MIN_KFP_BACKEND) == Version("2.15.0")
    with pytest.raises(RepotuneError, match=r"field\(s\) securityContext with no known minimum"):
        minimum_backend({"secretAsEnv", "securityContext"})
    # README tells a platform engineer the same number
    assert f"KFP {MIN_KFP_BACKEND}" in (ROOT / "README.md").read_text()


@pytest.mark.integration
def test_a_run_uses_the_pipeline_runner_account_in_the_profile_namespace():
    with running_kfp_api(tag_name="2.15.0") as kfp:
        run_id = submit_run(kfp.url, dict(ARGUMENTS), "repotune-app-1", namespace="team-a")
        run = kfp.runs[run_id]
        assert run["service_account"] == SERVICE_ACCOUNT == "repotune-pipeline-runner"
        assert run["runtime_config"]["parameters"] == ARGUMENTS
        assert kfp.experiments[run["experiment_id"]]["namespace"] == "team-a"
        assert set(executor_images(run["pipeline_spec"]).values()) == {images.cpu_image()}

        # KFP's own default account, for a cluster that binds the Roles to it instead
        other = submit_run(kfp.url, dict(ARGUMENTS), "repotune-app-2", service_account=None)
        assert kfp.runs[other].get("service_account") is None


@pytest.mark.integration
@pytest.mark.parametrize(
    ("tag_name", "message"),
    [
        ("2.3.0", "the KFP backend at {url} is 2.3.0; this pipeline needs KFP 2.15.0 or later"),
        ("2.14.3", "the KFP backend at {url} is 2.14.3; this pipeline needs KFP 2.15.0 or later"),
        ("unknown", "the KFP backend at {url} does not report its version (healthz tag_name 'unknown')"),
    ],
)
def test_an_old_or_unversioned_backend_is_refused_before_anything_is_created(tag_name, message):
    with running_kfp_api(tag_name=tag_name) as kfp:
        with pytest.raises(RepotuneError) as refused:
            submit_run(kfp.url, dict(ARGUMENTS), "repotune-app-1")
        assert str(refused.value).startswith(message.format(url=kfp.url))
        assert "--skip-kfp-version-check" in str(refused.value)
        assert "\n" not in str(refused.value)
        assert kfp.runs == {} and kfp.experiments == {}

        # the override, for a backend the user knows to carry the fix
        run_id = submit_run(kfp.url, dict(ARGUMENTS), "repotune-app-1", check_version=False)
        assert kfp.runs[run_id]["service_account"] == SERVICE_ACCOUNT


@pytest.mark.integration
@pytest.mark.parametrize("tag_name", ["2.15.0", "v2.15.1", "2.17.3"])
def test_a_new_enough_backend_is_accepted(tag_name):
    with running_kfp_api(tag_name=tag_name) as kfp:
        assert submit_run(kfp.url, dict(ARGUMENTS), "repotune-app-1") in kfp.runs


def test_compile_and_submit_put_a_teams_own_images_in_every_step(tmp_path, monkeypatch):
    monkeypatch.delenv(images.IMAGE_ENV, raising=False)
    monkeypatch.delenv(images.CUDA_IMAGE_ENV, raising=False)
    chosen = images.for_run(f"{TEAM}:1.4.2")
    path = compile_pipeline(tmp_path / "gpu.yaml", "qwen2.5-coder-1.5b-gpu", images=chosen)
    spec = next(yaml.safe_load_all(path.read_text()))
    found = executor_images(spec)
    gpu = ("exec-train", "exec-score-base", "exec-evaluate")  # the recipe asks for GPUs
    assert {found[name] for name in gpu} == {f"{TEAM}-cuda:1.4.2"}
    assert {image for name, image in found.items() if name not in gpu} == {f"{TEAM}:1.4.2"}
    assert images.cpu_image() == images.CPU_IMAGE  # the choice held for that compile only

    with running_kfp_api() as kfp:
        run_id = submit_run(
            kfp.url, dict(ARGUMENTS), "repotune-app-1", recipe="smollm2-135m-cpu", images=chosen
        )
        assert set(executor_images(kfp.runs[run_id]["pipeline_spec"]).values()) == {f"{TEAM}:1.4.2"}


def test_steps_that_create_pods_name_the_images_the_pipeline_was_compiled_with(tmp_path, monkeypatch):
    # The deploy step applies the repotune-predictor ServingRuntime and a multi-node train step a
    # PyTorchJob, each naming an image resolved inside the step's pod: without the compiled-in images
    # there, they would pull the project's own from ghcr.io, not the team's registry.
    monkeypatch.delenv(images.IMAGE_ENV, raising=False)
    monkeypatch.delenv(images.CUDA_IMAGE_ENV, raising=False)
    chosen = images.for_run(f"{TEAM}:1.4.2")
    path = compile_pipeline(tmp_path / "gpu.yaml", "qwen2.5-coder-1.5b-gpu", images=chosen)
    executors = next(yaml.safe_load_all(path.read_text()))["deploymentSpec"]["executors"]
    for name in ("exec-deploy", "exec-train"):
        env = {e["name"]: e["value"] for e in executors[name]["container"].get("env", [])}
        assert env == {images.IMAGE_ENV: f"{TEAM}:1.4.2", images.CUDA_IMAGE_ENV: f"{TEAM}-cuda:1.4.2"}, name

    # what those steps then render, in a pod with that environment
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    recipe = resolve_recipe("qwen2.5-coder-1.5b-gpu")[0]
    runtime = render_serving_runtime(
        DeploySettings(name="chat", namespace="team-a", runtime=Runtime.REPOTUNE, resources=recipe.resources)
    )
    assert runtime["spec"]["containers"][0]["image"] == f"{TEAM}-cuda:1.4.2"
    job = render_pytorchjob(
        recipe, name="j", namespace="team-a", data_uri="s3://runs/d", output_uri="s3://runs/m"
    )
    pods = [spec["template"]["spec"] for spec in job["spec"]["pytorchReplicaSpecs"].values()]
    assert {c["image"] for pod in pods for c in pod["containers"]} == {f"{TEAM}-cuda:1.4.2"}
