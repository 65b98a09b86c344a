"""Multi-node training: the rendered PyTorchJob, its submission to an API server, and the entry point
that every process of the job runs (really trained on the tiny recipe, on local folders and on S3)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.kube_api import fails_after, ready_after, running_kube_api
from tests.s3_server import running_s3_server, s3_environment

from repotune import images, kube, storage
from repotune.config import from_dict, to_dict
from repotune.errors import RepotuneError
from repotune.train import cluster_entry
from repotune.train.cluster_job import (
    DEFAULT_SECRET_ENV,
    MASTER_PORT,
    SecretRef,
    master_pod_name,
    render_pytorchjob,
    run_pytorchjob,
)
from repotune.train.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "tiny-cpu.yaml"
SECRET_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"}


def gpu_recipe() -> Recipe:
    return load_recipe(
        TINY,
        {
            "resources.nodes": 3,
            "resources.gpus_per_node": 4,
            "resources.cpu": "16",
            "resources.memory": "128Gi",
            "resources.gpu_resource": "nvidia.com/gpu",
        },
    )


def render(recipe: Recipe, **overrides) -> dict:
    arguments = {
        "name": "train-abc",
        "namespace": "team-a",
        "data_uri": "s3://repotune/runs/abc/clean/",
        "output_uri": "s3://repotune/runs/abc/model/",
    }
    return render_pytorchjob(recipe, **{**arguments, **overrides})


def containers(job: dict) -> list[dict]:
    specs = job["spec"]["pytorchReplicaSpecs"].values()
    return [c for spec in specs for c in spec["template"]["spec"]["containers"]]


def test_a_multi_node_gpu_job_has_a_master_workers_and_one_process_per_gpu():
    recipe = gpu_recipe()
    job = render(recipe)

    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert job["metadata"] == {
        "name": "train-abc",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/part-of": "repotune", "app.kubernetes.io/component": "train"},
    }
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {kind: spec["replicas"] for kind, spec in replicas.items()} == {"Master": 1, "Worker": 2}
    for spec in replicas.values():  # every pod may go onto a tainted GPU node
        assert spec["template"]["spec"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    assert job["spec"]["nprocPerNode"] == "4"  # a string in the v1 API ("auto" is allowed too)
    for container in containers(job):
        assert container["name"] == "pytorch"  # the operator sets MASTER_ADDR etc. only in this one
        assert container["ports"] == [
            {"name": "pytorchjob-port", "containerPort": MASTER_PORT, "protocol": "TCP"}
        ]
        assert container["image"] == images.cuda_image()
        amounts = {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "4"}
        assert container["resources"] == {"requests": amounts, "limits": amounts}
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]

        command = container["command"]
        assert command[:6] == [
            "torchrun",
            "--nnodes=3",
            "--nproc_per_node=4",
            "--node_rank=$(RANK)",
            "--master_addr=$(MASTER_ADDR)",
            "--master_port=$(MASTER_PORT)",
        ]
        assert command[6:10] == [
            "-m",
            "repotune.train.cluster_entry",
            "s3://repotune/runs/abc/clean/",
            "s3://repotune/runs/abc/model/",
        ]
        assert command[10] == "--recipe-json"
        # the recipe travels whole: the pods rebuild exactly the recipe that was rendered
        assert from_dict(Recipe, json.loads(command[11]), "test") == recipe
        assert command[12:] == ["--work-dir", "/workspace/work"]
    for spec in replicas.values():
        pod = spec["template"]["spec"]
        assert spec["restartPolicy"] == "OnFailure"
        assert pod["serviceAccountName"] == "repotune-trainer"
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert spec["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    assert master_pod_name(job) == "train-abc-master-0"


def test_a_cpu_job_runs_one_process_per_node_on_the_cpu_image(monkeypatch):
    monkeypatch.delenv("REPOTUNE_IMAGE", raising=False)
    job = render(load_recipe(TINY, {"resources.cpu": "500m", "resources.memory": "3Gi"}))

    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]  # nodes: 1 needs no workers
    assert job["spec"]["nprocPerNode"] == "1"
    (container,) = containers(job)
    assert container["image"] == images.CPU_IMAGE
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "3Gi"}
    assert "--nproc_per_node=1" in container["command"]
    assert [m["name"] for m in container["volumeMounts"]] == ["work"]  # no /dev/shm for one process


def test_images_follow_the_overrides(monkeypatch):
    monkeypatch.setenv("REPOTUNE_CUDA_IMAGE", "registry.example.com/repotune-cuda:7")
    assert {c["image"] for c in containers(render(gpu_recipe()))} == {"registry.example.com/repotune-cuda:7"}
    job = render(gpu_recipe(), image="registry.example.com/custom:1")
    assert {c["image"] for c in containers(job)} == {"registry.example.com/custom:1"}


def test_credentials_come_only_from_secret_references(monkeypatch):
    leaked = "wJalrXUtnFEMI-not-a-real-key"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", leaked)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", leaked)
    job = render(gpu_recipe(), tracking_uri="http://mlflow.repotune.svc.cluster.local:5000")

    assert leaked not in json.dumps(job)
    for container in containers(job):
        env = {entry["name"]: entry for entry in container["env"]}
        for name in SECRET_NAMES:
            assert set(env[name]) == {"name", "valueFrom"}, name  # never a literal `value`
        literal = {name for name, entry in env.items() if "value" in entry}
        assert literal == {"PYTHONUNBUFFERED", "MLFLOW_TRACKING_URI"}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "repotune-s3",
            "key": "AWS_SECRET_ACCESS_KEY",
        }
        assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
        assert env["MLFLOW_TRACKING_URI"] == {
            "name": "MLFLOW_TRACKING_URI",
            "value": "http://mlflow.repotune.svc.cluster.local:5000",
        }

    custom = render(gpu_recipe(), secret_env={"HF_TOKEN": SecretRef("hub", "token")})
    (env,) = {json.dumps(c["env"]) for c in containers(custom)}
    assert json.loads(env)[1:] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}
    ]
    assert set(DEFAULT_SECRET_ENV) >= SECRET_NAMES


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Train_ABC"}, "lowercase letters"),
        ({"name": "t" * 60}, "at most 63 characters"),
        ({"data_uri": "/data/clean"}, "data_uri '/data/clean' must be an s3:// URI"),
        ({"output_uri": "s3://A/model"}, "not a valid bucket name"),
        ({"tracking_uri": "http://ada:hunter2@mlflow:5000"}, "holds a password"),
        ({"extra_env": {"BAD-NAME": "1"}}, "not valid"),
    ],
)
def test_bad_arguments_are_refused_with_the_setting_named(overrides, message):
    with pytest.raises(RepotuneError, match=re.escape(message)):
        render(gpu_recipe(), **overrides)


def test_uris_become_s3_and_dollar_parens_stay_literal():
    job = render(load_recipe(TINY, {"experiment": "costs-$(HOME)"}), data_uri="minio://repotune/clean")
    command = containers(job)[0]["command"]
    assert command[8] == "s3://repotune/clean"
    # the kubelet would expand $(HOME) from the environment; $$( is its escape for a literal $(
    assert "costs-$$(HOME)" in command[11]
    assert json.loads(command[11].replace("$$(", "$("))["experiment"] == "costs-$(HOME)"


def test_the_pod_template_is_a_valid_kubernetes_pod_template():
    from kubernetes.client import ApiClient

    client = ApiClient()
    template = render(gpu_recipe())["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    response = SimpleNamespace(data=json.dumps(template))
    model = client.deserialize(response, "V1PodTemplateSpec")
    # The client's models drop fields they do not know: a round trip that loses nothing means every
    # field name and type is one Kubernetes has.
    assert client.sanitize_for_serialization(model) == template
    assert model.spec.containers[0].env[1].value_from.secret_key_ref.name == "repotune-s3"


def test_the_job_is_a_valid_training_operator_object():
    from kubeflow import training

    job = render(gpu_recipe())
    model = training.ApiClient().deserialize(SimpleNamespace(data=json.dumps(job)), "KubeflowOrgV1PyTorchJob")
    assert model.spec.nproc_per_node == "4"
    assert model.spec.pytorch_replica_specs["Worker"].replicas == 2


@pytest.mark.integration
def test_run_pytorchjob_applies_and_waits_until_succeeded():
    job = render(gpu_recipe())
    lines: list[str] = []
    with running_kube_api() as server:
        server.controller("pytorchjobs", ready_after(3, condition="Succeeded"))
        api = kube.connect(host=server.url)
        done = run_pytorchjob(job, timeout_s=10, log=lines.append, poll_s=0.01, api=api)
        applies = server.requests_to("pytorchjobs", "PATCH")
        reads = server.requests_to("pytorchjobs", "GET")

        assert kube.is_true(done, "Succeeded")
        assert len(applies) == 1
        assert applies[0].content_type == "application/apply-patch+yaml"
        assert applies[0].query["fieldManager"] == ["repotune"]
        assert applies[0].path == "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs/train-abc"
        assert applies[0].body == job
        assert len(reads) == 3
        assert lines[0] == "submitted PyTorchJob team-a/train-abc (3 node(s) x 4 process(es))"
        assert lines[-1] == "PyTorchJob team-a/train-abc Succeeded"

        # A retried step applies the same job again: nothing changes and it returns at once.
        again = run_pytorchjob(job, timeout_s=10, log=lines.append, poll_s=0.01, api=api)
        assert again["metadata"]["generation"] == done["metadata"]["generation"] == 1


@pytest.mark.integration
def test_run_pytorchjob_reports_a_failed_job_and_deletes_a_timed_out_one():
    job = render(gpu_recipe())
    with running_kube_api() as server:
        api = kube.connect(host=server.url)
        server.controller("pytorchjobs", fails_after(2, message="master-0 exited with code 137 (OOMKilled)"))
        with pytest.raises(RepotuneError, match=r"reported Failed: JobFailed: .*OOMKilled"):
            run_pytorchjob(job, timeout_s=10, log=lambda _: None, poll_s=0.01, api=api)
        assert (
            server.object("kubeflow.org", "pytorchjobs", "team-a", "train-abc") is not None
        )  # kept to inspect

        other = render(gpu_recipe(), name="train-slow")
        server.controller("pytorchjobs", None)  # nothing ever reports on it
        started = time.monotonic()
        with pytest.raises(RepotuneError, match=r"not Succeeded after 0.3 s.*deleted the job"):
            run_pytorchjob(other, timeout_s=0.3, log=lambda _: None, poll_s=0.05, api=api)
        assert time.monotonic() - started < 5
        assert server.object("kubeflow.org", "pytorchjobs", "team-a", "train-slow") is None


def tiny_json(**overrides) -> str:
    recipe = load_recipe(TINY, {"max_steps": 2, "save_every_steps": 1, **overrides})
    return json.dumps(to_dict(recipe))


@pytest.mark.integration
def test_cluster_entry_trains_and_copies_the_model_without_checkpoints(cleaned: Path, tmp_path: Path):
    out = tmp_path / "published" / "model"
    work = tmp_path / "work"
    argv = [str(cleaned), str(out), "--recipe-json", tiny_json(), "--work-dir", str(work)]

    assert cluster_entry.main(argv) == 0

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["world_size"] == 1
    assert (out / "model.safetensors").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    # checkpoints (optimizer state) and the token cache stay in the work folder
    assert (work / "model" / "checkpoints" / "checkpoint-2").is_dir()
    assert not (out / "checkpoints").exists()
    assert not (out / ".token-cache").exists()
    assert (out / "model.safetensors").read_bytes() == (work / "model" / "model.safetensors").read_bytes()


def test_cluster_entry_refuses_a_bad_recipe(tmp_path: Path, capsys):
    argv = [
        str(tmp_path),
        str(tmp_path / "out"),
        "--recipe-json",
        '{"max_stepz": 2}',
        "--work-dir",
        str(tmp_path),
    ]
    assert cluster_entry.main(argv) == 2
    assert "unknown key 'max_stepz' (did you mean 'max_steps'?)" in capsys.readouterr().err
    assert cluster_entry.main([*argv[:3], "[1]", *argv[4:]]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


@pytest.mark.integration
def test_torchrun_with_two_processes_trains_on_s3_and_uploads_once(cleaned: Path, tmp_path: Path):
    """The job's own command line, on one machine: torchrun starts two processes (gloo on CPU), each
    fetches the data from S3, they train together, and rank 0 alone uploads, marker last."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    with running_s3_server() as endpoint, s3_environment(endpoint):
        client = storage.client_from_env()
        client.make_bucket("repotune")
        storage.copy_to(cleaned, "s3://repotune/runs/abc/clean/")
        command = [
            torchrun,
            "--standalone",
            "--nnodes=1",
            "--nproc_per_node=2",
            "-m",
            "repotune.train.cluster_entry",
            "s3://repotune/runs/abc/clean/",
            "s3://repotune/runs/abc/model/",
            "--recipe-json",
            tiny_json(**{"data.max_train_blocks": 16}),
            "--work-dir",
            str(tmp_path / "work"),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]

        marker = storage.read_marker("s3://repotune/runs/abc/model/")
        assert marker is not None
        uploaded = {entry["path"] for entry in marker["files"]}
        assert {"model.safetensors", "train_summary.json", "adapter/adapter_model.safetensors"} <= uploaded
        assert not any(path.startswith(("checkpoints/", ".token-cache/")) for path in uploaded)
        model = storage.fetch("s3://repotune/runs/abc/model/", tmp_path / "downloaded")
        summary = json.loads((model / "train_summary.json").read_text())
        assert summary["world_size"] == 2
        assert summary["steps"] == 2
        assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
            "data-0",
            "data-1",
            "export",
            "model",
        ]
        assert proc.stdout.count("uploaded the model to s3://repotune/runs/abc/model/") == 1
