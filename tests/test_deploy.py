"""repotune.deploy: rendering checked against the kserve SDK's models, URI resolution through a real
MLflow registry, and deploys (apply, wait, roll back) through the official client against the
Kubernetes API stand-in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import kserve
import kubernetes.client
import pytest
import yaml
from tests.kube_api import APPLY, KubeApi, by_spec, never_ready, ready_after, running_kube_api

from repotune import kube
from repotune.deploy import (
    ANNOTATION_ROLLED_BACK,
    DeploySettings,
    ModelSource,
    RolledBack,
    Runtime,
    S3Access,
    artifact_to_s3,
    from_storage_uri,
    render_inference_service,
    render_manifests,
    resolve_model_uri,
    roll_out,
    to_yaml,
)
from repotune.errors import RepotuneError
from repotune.images import HF_RUNTIME, cpu_image, cuda_image
from repotune.train.recipe import ResourceSettings, load_recipe

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
GPU_RESOURCES = ResourceSettings(gpus_per_node=2, gpu_resource="amd.com/gpu", cpu="8", memory="48Gi")
MODEL = ModelSource(
    uri="models:/repotune-sample@champion",
    storage_uri="s3://mlflow/artifacts/1/abc/artifacts/model",
    model_name="repotune-sample",
    version="3",
    commit="0123456789abcdef0123456789abcdef01234567",
)


def sdk_object(data: Any, type_name: str) -> Any:
    """``data`` built into the kserve / kubernetes SDK model ``type_name``, refusing any key the model
    does not define (the SDK's own deserializer drops unknown keys silently, hiding typos)."""
    if type_name.startswith("list["):
        assert isinstance(data, list), (type_name, data)
        return [sdk_object(item, type_name[5:-1]) for item in data]
    if type_name.startswith("dict("):
        assert isinstance(data, dict), (type_name, data)
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {key: sdk_object(value, value_type) for key, value in data.items()}
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitives:
        assert isinstance(data, primitives[type_name]), (type_name, data)
        return data
    cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    json_keys = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = set(data) - set(json_keys)
    assert not unknown, f"{type_name} has no fields {sorted(unknown)}"
    return cls(
        **{
            json_keys[key]: sdk_object(value, cls.openapi_types[json_keys[key]])
            for key, value in data.items()
        }
    )


def round_trip(obj: dict[str, Any], type_name: str) -> Any:
    """The SDK model of ``obj``; its serialization must give ``obj`` back unchanged."""
    model = sdk_object(obj, type_name)
    assert kubernetes.client.ApiClient().sanitize_for_serialization(model) == obj
    return model


def settings(**overrides: Any) -> DeploySettings:
    return DeploySettings(**{"name": "sample-assistant", "namespace": "team-a", **overrides})


def test_huggingface_runtime_on_cpu() -> None:
    s3 = S3Access.from_url("http://minio-service.kubeflow:9000", region="us-east-1")
    isvc = render_inference_service(MODEL, settings(s3=s3))
    model = round_trip(isvc, "V1beta1InferenceService")

    predictor = model.spec.predictor
    assert predictor.model.model_format.name == "huggingface"
    assert predictor.model.runtime == HF_RUNTIME
    assert predictor.model.storage_uri == MODEL.storage_uri
    assert predictor.model.args == ["--backend=huggingface"]  # vLLM needs a GPU
    assert predictor.model.resources.requests == {"cpu": "2", "memory": "8Gi"}
    assert predictor.model.resources.limits == {"cpu": "2", "memory": "8Gi"}
    assert predictor.service_account_name == "repotune-serving"
    assert predictor.canary_traffic_percent is None
    assert predictor.min_replicas == 1
    assert model.metadata.labels["repotune.io/model-version"] == "3"
    assert model.metadata.labels["repotune.io/commit"] == MODEL.commit
    assert model.metadata.annotations == {
        "repotune.io/model-uri": "models:/repotune-sample@champion",
        "repotune.io/model-name": "repotune-sample",
        "repotune.io/commit": MODEL.commit,
    }

    account, isvc_again = render_manifests(MODEL, settings(s3=s3))
    assert isvc_again == isvc
    sa = round_trip(account, "V1ServiceAccount")
    assert sa.metadata.name == "repotune-serving" and sa.metadata.namespace == "team-a"
    assert [ref.name for ref in sa.secrets] == ["repotune-s3"]
    assert sa.automount_service_account_token is False
    assert sa.metadata.annotations == {
        "serving.kserve.io/s3-endpoint": "minio-service.kubeflow:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }


def test_huggingface_runtime_on_gpus_with_a_canary() -> None:
    isvc = render_inference_service(MODEL, settings(resources=GPU_RESOURCES, canary_percent=10))
    predictor = round_trip(isvc, "V1beta1InferenceService").spec.predictor
    expected = {"cpu": "8", "memory": "48Gi", "amd.com/gpu": "2"}
    assert predictor.model.resources.requests == expected
    assert predictor.model.resources.limits == expected
    assert predictor.model.args is None  # the runtime picks vLLM
    assert predictor.canary_traffic_percent == 10


def test_repotune_runtime_with_a_recipes_resources() -> None:
    recipe = load_recipe(REPO / "configs" / "qwen2.5-coder-0.5b-gpu.yaml")
    chosen = settings(runtime=Runtime.REPOTUNE, resources=recipe.resources, min_replicas=0)
    account, runtime, isvc = render_manifests("minio://mlpipeline/v2/artifacts/run-1/train/model", chosen)

    served = round_trip(runtime, "V1alpha1ServingRuntime")
    assert served.metadata.name == "repotune-predictor"
    assert [(f.name, f.auto_select) for f in served.spec.supported_model_formats] == [("huggingface", False)]
    (container,) = served.spec.containers
    assert container.image == cuda_image()  # the recipe asks for a GPU
    assert container.command + container.args == [
        *("repotune", "serve", "/mnt/models", "--port", "8080", "--host", "0.0.0.0", "--insecure-no-auth"),
        *("--model-name", "{{.Name}}"),
    ]
    assert container.ports[0].container_port == 8080
    assert container.security_context.run_as_non_root is True
    # Without a configured endpoint the ServiceAccount states none: the Secret's annotations decide.
    assert "annotations" not in account["metadata"]

    predictor = round_trip(isvc, "V1beta1InferenceService").spec.predictor
    assert predictor.model.runtime == "repotune-predictor"
    assert predictor.model.storage_uri == "s3://mlpipeline/v2/artifacts/run-1/train/model"
    assert predictor.model.resources.limits == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert [(t.key, t.operator, t.effect) for t in predictor.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]  # the GPU pool's taint
    untainted = replace(recipe.resources, gpu_toleration=False)
    assert (
        "tolerations"
        not in render_inference_service("s3://bucket/model", settings(resources=untainted))["spec"][
            "predictor"
        ]
    )
    assert predictor.min_replicas == 0
    assert account["kind"] == "ServiceAccount"

    cpu_runtime = render_manifests("s3://bucket/model", settings(runtime="repotune"))[1]
    assert cpu_runtime["spec"]["containers"][0]["image"] == cpu_image()
    assert predictor.model.args is None  # retrieval as the model folder says


def test_the_evaluated_arms_retrieval_and_fim_settings_reach_the_repotune_runtime(tmp_path: Path) -> None:
    from repotune.retrieval.shipped import evaluated_setting
    from repotune.serving.settings import Switch

    for chosen, args in ((True, ["--retrieval", "on"]), (False, ["--retrieval", "off"])):
        isvc = render_manifests("s3://bucket/model", settings(runtime="repotune", retrieval=chosen))[-1]
        model = round_trip(isvc, "V1beta1InferenceService").spec.predictor.model
        assert model.args == args
        # what `repotune serve` accepts (KServe appends the model's args to the runtime's)
        assert Switch(args[1]).setting is chosen
    both = render_manifests("s3://bucket/model", settings(runtime="repotune", retrieval=True, fim=False))[-1]
    assert both["spec"]["predictor"]["model"]["args"] == ["--retrieval", "on", "--fim", "off"]
    fim_only = render_manifests("s3://bucket/model", settings(runtime="repotune", fim=True))[-1]
    assert fim_only["spec"]["predictor"]["model"]["args"] == ["--fim", "on"]
    gated = render_manifests("s3://bucket/model", settings(runtime="repotune", min_confidence=0.35))[-1]
    assert gated["spec"]["predictor"]["model"]["args"] == ["--min-confidence", "0.35"]
    with pytest.raises(RepotuneError, match="--min-confidence must be a number from 0 to 1"):
        settings(runtime="repotune", min_confidence=1.5)
    # vLLM knows nothing of the index: the Hugging Face runtime's args stay its own.
    hf = settings(runtime="huggingface", retrieval=True, fim=False)
    isvc = render_manifests("s3://bucket/model", hf)[-1]
    assert isvc["spec"]["predictor"]["model"]["args"] == ["--backend=huggingface"]

    assert evaluated_setting(tmp_path, "retrieval") is None  # no evaluation
    (tmp_path / "metrics.json").write_text('{"decision": {"promote": true, "retrieval": true, "fim": false}}')
    assert evaluated_setting(tmp_path, "retrieval") is True and evaluated_setting(tmp_path, "fim") is False
    (tmp_path / "metrics.json").write_text('{"decision": {"promote": true, "retrieval": null}}')
    assert evaluated_setting(tmp_path, "retrieval") is None
    (tmp_path / "metrics.json").write_text('{"decision": {"promote": true}}')  # no retrieval arms, no FIM
    assert evaluated_setting(tmp_path, "retrieval") is None and evaluated_setting(tmp_path, "fim") is None
    (tmp_path / "metrics.json").write_text("[1, 2]")
    assert evaluated_setting(tmp_path, "retrieval") is None


def test_settings_refuse_what_kubernetes_would() -> None:
    with pytest.raises(RepotuneError, match="--name 'Sample_Assistant'"):
        settings(name="Sample_Assistant")
    with pytest.raises(RepotuneError, match="--canary 150"):
        settings(canary_percent=150)
    with pytest.raises(RepotuneError, match="--runtime 'vllm': choose one of huggingface, repotune"):
        settings(runtime="vllm")
    with pytest.raises(RepotuneError, match="expected http://host:port"):
        S3Access.from_url("minio:9000")
    assert S3Access.from_url("https://s3.example.com").endpoint == "s3.example.com"
    assert S3Access.from_url(None).endpoint is None
    # A model version that is no valid label value stays in the annotations only.
    odd = ModelSource(uri="s3://b/m", storage_uri="s3://b/m", version="v 1!")
    assert "repotune.io/model-version" not in render_inference_service(odd, settings())["metadata"]["labels"]


def test_storage_uris_map_to_s3_and_local_paths_are_refused(tmp_path: Path) -> None:
    assert from_storage_uri("s3://models/run-1/model").storage_uri == "s3://models/run-1/model"
    mapped = resolve_model_uri("minio://mlpipeline/v2/artifacts/x/model")
    assert (mapped.uri, mapped.storage_uri) == (
        "minio://mlpipeline/v2/artifacts/x/model",
        "s3://mlpipeline/v2/artifacts/x/model",
    )
    for local in (str(tmp_path), "./model", tmp_path.as_uri()):
        with pytest.raises(RepotuneError, match=r"local path; a cluster cannot read it.*s3://"):
            resolve_model_uri(local)
    with pytest.raises(RepotuneError, match="expected s3://, minio://"):
        resolve_model_uri("gs://bucket/model")
    for bucket in ("s3://models", "s3://models/", "minio://mlpipeline"):  # KServe would fetch all of it
        with pytest.raises(RepotuneError, match="is a whole bucket; give the model's folder in it"):
            resolve_model_uri(bucket)
    with pytest.raises(RepotuneError, match="models:/NAME@ALIAS"):
        resolve_model_uri("models:/name/latest", tracking_uri="http://127.0.0.1:1")
    with pytest.raises(RepotuneError, match="needs the MLflow registry; set --tracking-uri"):
        resolve_model_uri("models:/name@champion")


def test_registered_sources_map_to_the_artifacts_bucket() -> None:
    root = "s3://mlflow/artifacts"
    assert artifact_to_s3("mlflow-artifacts:/1/abc/artifacts/model", root) == f"{root}/1/abc/artifacts/model"
    assert (
        artifact_to_s3("mlflow-artifacts://mlflow.kubeflow:5000/1/abc/artifacts/model", root + "/")
        == f"{root}/1/abc/artifacts/model"
    )
    assert artifact_to_s3("s3://other/1/model", None) == "s3://other/1/model"
    with pytest.raises(RepotuneError, match="set REPOTUNE_MLFLOW_ARTIFACTS_S3"):
        artifact_to_s3("mlflow-artifacts:/1/abc/artifacts/model", None)
    with pytest.raises(RepotuneError, match="KServe cannot download"):
        artifact_to_s3("file:///home/me/mlruns/1/abc/artifacts/model", root)


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with running_kube_api() as server:
        yield server


def live_isvc(api: KubeApi, name: str = "sample-assistant") -> dict[str, Any]:
    found = api.object(GROUP, PLURAL, "team-a", name)
    assert found is not None
    return found


def model_at(storage_uri: str, version: str) -> ModelSource:
    return ModelSource(
        uri=storage_uri, storage_uri=storage_uri, model_name="repotune-sample", version=version
    )


GOOD, BAD = model_at("s3://models/v1", "1"), model_at("s3://models/v2-broken", "2")
URL = "http://sample-assistant.team-a.example.com"


def broken_when_v2(obj: dict[str, Any]) -> Any:
    storage = obj["spec"]["predictor"]["model"]["storageUri"]
    return never_ready() if storage == BAD.storage_uri else ready_after(2, url=URL)


@pytest.mark.integration
def test_deploy_creates_then_updates_and_waits_for_ready(api: KubeApi) -> None:
    api.controller(PLURAL, ready_after(2, url=URL))
    client = kube.connect(host=api.url)
    lines: list[str] = []

    first = roll_out(GOOD, settings(), timeout_s=10, poll_s=0.01, api=client, log=lines.append)
    assert (first.name, first.namespace, first.url, first.revision, first.rolled_back) == (
        "sample-assistant",
        "team-a",
        URL,
        1,
        False,
    )
    assert any("created serving s3://models/v1" in line for line in lines)
    assert any("Ready=False (RevisionMissing" in line for line in lines)

    second = roll_out(
        model_at("s3://models/v3", "3"), settings(canary_percent=25), timeout_s=10, poll_s=0.01, api=client
    )
    assert (second.url, second.revision) == (URL, 2)
    live = live_isvc(api)
    assert live["spec"]["predictor"]["model"]["storageUri"] == "s3://models/v3"
    assert live["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert live["metadata"]["labels"]["repotune.io/model-version"] == "3"

    # Every write was a server-side apply: one PATCH per object and deploy, never a POST or a PUT.
    writes = [r for r in api.requests if r.method != "GET"]
    assert [(r.method, r.plural) for r in writes] == [("PATCH", "serviceaccounts"), ("PATCH", PLURAL)] * 2
    assert all(r.content_type == APPLY and r.query["force"] == ["true"] for r in writes)

    # The same deploy again is a no-op for the cluster: same generation, Ready at once.
    again = roll_out(
        model_at("s3://models/v3", "3"), settings(canary_percent=25), timeout_s=10, poll_s=0.01, api=client
    )
    assert again.revision == 2


@pytest.mark.integration
def test_a_revision_that_never_gets_ready_is_rolled_back(api: KubeApi) -> None:
    api.controller(PLURAL, by_spec(broken_when_v2))
    client = kube.connect(host=api.url)
    roll_out(GOOD, settings(), timeout_s=10, poll_s=0.01, api=client)
    before = live_isvc(api)

    with pytest.raises(RolledBack) as caught:
        roll_out(BAD, settings(canary_percent=10), timeout_s=0.3, poll_s=0.02, api=client)
    message = str(caught.value)
    assert "s3://models/v2-broken did not become Ready" in message
    assert "not Ready after 0.3 s: RevisionFailed: Revision failed" in message
    assert (
        "Rolled back: the previous spec (s3://models/v1, version 1) is Ready again as generation 3" in message
    )
    assert caught.value.result.rolled_back is True
    assert (caught.value.result.url, caught.value.result.revision) == (URL, 3)

    after = live_isvc(api)
    assert after["spec"] == before["spec"]  # the canary field the bad deploy added is gone again
    assert "canaryTrafficPercent" not in after["spec"]["predictor"]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    # the restored object says which model did not come up
    assert after["metadata"]["annotations"] == {
        **before["metadata"]["annotations"],
        ANNOTATION_ROLLED_BACK: "s3://models/v2-broken",
    }
    assert after["metadata"]["generation"] == 3
    assert not any(r.method in ("POST", "PUT", "DELETE") for r in api.requests)

    # KFP retries a failed deploy step: the retry refuses that model at once, writing nothing, rather
    # than wait out the timeout and roll back again
    writes = len([r for r in api.requests if r.method != "GET"])
    with pytest.raises(RepotuneError, match="did not become Ready in an earlier attempt and was rolled back"):
        roll_out(BAD, settings(canary_percent=10), timeout_s=0.3, poll_s=0.02, api=client,
                 refuse_rolled_back=True)  # fmt: skip
    assert len([r for r in api.requests if r.method != "GET"]) == writes
    # another model is deployed as usual
    assert (
        roll_out(GOOD, settings(), timeout_s=10, poll_s=0.01, api=client, refuse_rolled_back=True).url == URL
    )


@pytest.mark.integration
def test_a_model_that_fails_to_load_rolls_back_without_waiting_out_the_timeout(api: KubeApi) -> None:
    good = ready_after(1, url=URL)

    def failed_load(obj: dict[str, Any], reads: int) -> None:
        obj["status"] = {
            "observedGeneration": obj["metadata"]["generation"],
            "conditions": [{"type": "Ready", "status": "False", "reason": "RevisionFailed"}],
            "modelStatus": {
                "transitionStatus": "BlockedByFailedLoad",
                "lastFailureInfo": {"reason": "ModelLoadFailed", "message": "config.json not found"},
            },
        }

    api.controller(PLURAL, by_spec(lambda obj: failed_load if "broken" in str(obj["spec"]) else good))
    client = kube.connect(host=api.url)
    roll_out(GOOD, settings(), timeout_s=10, poll_s=0.01, api=client)
    with pytest.raises(RolledBack, match=r"BlockedByFailedLoad: ModelLoadFailed: config\.json not found"):
        roll_out(BAD, settings(), timeout_s=60, poll_s=0.01, api=client)
    assert live_isvc(api)["spec"]["predictor"]["model"]["storageUri"] == GOOD.storage_uri


@pytest.mark.integration
def test_a_failed_first_deploy_is_left_in_place_and_reported(api: KubeApi) -> None:
    api.controller(PLURAL, never_ready(message="0/3 nodes are available: 3 Insufficient nvidia.com/gpu"))
    client = kube.connect(host=api.url)
    with pytest.raises(RepotuneError) as caught:
        roll_out(BAD, settings(), timeout_s=0.2, poll_s=0.02, api=client)
    assert not isinstance(caught.value, RolledBack)
    message = str(caught.value)
    assert "Insufficient nvidia.com/gpu" in message
    assert "first deploy, so there is nothing to roll back to" in message
    assert "kubectl describe inferenceservice sample-assistant -n team-a" in message
    assert live_isvc(api)["spec"]["predictor"]["model"]["storageUri"] == BAD.storage_uri

    # Deploying the same broken spec again has nothing older to return to either.
    with pytest.raises(RepotuneError, match="did not change with this deploy"):
        roll_out(BAD, settings(), timeout_s=0.2, poll_s=0.02, api=client)


@pytest.mark.integration
def test_models_uri_resolves_through_a_registry_and_gets_the_endpoint(api: KubeApi, tmp_path: Path) -> None:
    """A real MLflow registry (a local sqlite store; see the slow test below for a proxying server)."""
    from mlflow import MlflowClient

    from repotune.evaluate.decide import Decision
    from repotune.evaluate.registry import COMMIT_TAG, Registry

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.create_run(client.create_experiment("deploy", artifact_location=tmp_path.as_uri()))
    client.create_registered_model("repotune-sample")
    # The source a server that proxies artifacts (mlflow server --artifacts-destination) registers.
    source = f"mlflow-artifacts:/1/{run.info.run_id}/artifacts/model"
    version = client.create_model_version(
        "repotune-sample", source, run_id=run.info.run_id, tags={COMMIT_TAG: "ab" * 20}
    ).version
    client.create_model_version("repotune-sample", "file:///home/me/mlruns/model", run_id=run.info.run_id)
    Registry(tracking_uri, "repotune-sample").promote(str(version), Decision(True, ("promote: test",)))

    with pytest.raises(RepotuneError, match="has no champion yet"):
        resolve_model_uri("models:/other@champion", tracking_uri=tracking_uri)
    with pytest.raises(RepotuneError, match="set REPOTUNE_MLFLOW_ARTIFACTS_S3"):
        resolve_model_uri("models:/repotune-sample@champion", tracking_uri=tracking_uri)
    root = "s3://mlflow/artifacts"
    champion = resolve_model_uri(
        "models:/repotune-sample@champion", tracking_uri=tracking_uri, artifacts_s3=root
    )
    assert champion == ModelSource(
        uri="models:/repotune-sample@champion",
        storage_uri=f"{root}/1/{run.info.run_id}/artifacts/model",
        model_name="repotune-sample",
        version=str(version),
        commit="ab" * 20,
    )
    pinned = resolve_model_uri(
        f"models:/repotune-sample/{version}", tracking_uri=tracking_uri, artifacts_s3=root
    )
    assert (pinned.storage_uri, pinned.version) == (champion.storage_uri, champion.version)
    with pytest.raises(RepotuneError, match="KServe cannot download"):
        resolve_model_uri("models:/repotune-sample/2", tracking_uri=tracking_uri, artifacts_s3=root)
    with pytest.raises(RepotuneError, match="not found in the MLflow registry"):
        resolve_model_uri("models:/repotune-sample/99", tracking_uri=tracking_uri, artifacts_s3=root)

    api.controller(PLURAL, ready_after(1, url=URL))
    kube_client = kube.connect(host=api.url)
    result = roll_out(
        champion, settings(), timeout_s=10, poll_s=0.01, api=kube_client, tracking_uri=tracking_uri
    )
    tags = client.get_model_version("repotune-sample", str(version)).tags
    assert tags["repotune.endpoint"] == result.url == URL
    assert tags["repotune.endpoint.inference_service"] == "team-a/sample-assistant"
    labels = live_isvc(api)["metadata"]["labels"]
    assert labels["repotune.io/model-version"] == str(version) and labels["repotune.io/commit"] == "ab" * 20


@pytest.mark.slow
def test_a_proxying_mlflow_servers_champion_maps_to_where_its_files_are(tmp_path: Path) -> None:
    """Against a real `mlflow server` that stores artifacts in a (SeaweedFS) S3 bucket: the mapped s3:// URI
    is where the server put the files, so KServe's storage initializer finds them. About 30 s."""
    from tests.mlflow_server import running_mlflow_on_s3
    from tests.s3_server import running_s3_server, s3_environment

    from repotune.deploy import DeployConfig, DeploySettings, Runtime, run
    from repotune.evaluate.arms import Arm
    from repotune.evaluate.decide import Decision
    from repotune.evaluate.registry import Registry
    from repotune.storage import client_from_env, parse_s3_uri
    from repotune.tracking import MlflowTracker

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    with running_s3_server() as endpoint:
        with s3_environment(endpoint):
            client_from_env().make_bucket("mlflow")
        with running_mlflow_on_s3(tmp_path / "mlflow", endpoint, "s3://mlflow/artifacts") as tracking_uri:
            tracker = MlflowTracker(tracking_uri, "deploy-tests")
            with tracker.start_run("train") as run_id:
                tracker.log_artifact(folder)
            registry = Registry(tracking_uri, "repotune-sample")
            version = registry.register_candidate(run_id, "model", {})
            arm = Arm("candidate", retrieval=True)  # the evaluation chose the arm with retrieval
            # ... and it filled gaps better from the prefix alone than with FIM prompts
            registry.promote(version, Decision(True, ("promote: test",), arm, fim=False))
            champion = resolve_model_uri(
                "models:/repotune-sample@champion",
                tracking_uri=tracking_uri,
                artifacts_s3="s3://mlflow/artifacts",
            )
            assert champion.retrieval is True and champion.fim is False
            # Deploying the champion serves the arm it was registered with, unless told otherwise.
            for asked, args in (
                (None, ["--retrieval", "on", "--fim", "off"]),
                (False, ["--retrieval", "off", "--fim", "off"]),
            ):
                config = DeployConfig(
                    model_uri="models:/repotune-sample@champion",
                    settings=DeploySettings(
                        name="sample", namespace="team-a", runtime=Runtime.REPOTUNE, retrieval=asked
                    ),
                    tracking_uri=tracking_uri,
                    artifacts_s3="s3://mlflow/artifacts",
                    apply=False,
                )
                (service,) = [
                    o for o in run(config, log=lambda _: None).objects if o["kind"] == "InferenceService"
                ]
                assert service["spec"]["predictor"]["model"]["args"] == args
        with s3_environment(endpoint):
            bucket, key = parse_s3_uri(champion.storage_uri)
            assert (
                client_from_env().stat_object(bucket, f"{key}/config.json").size
                == (folder / "config.json").stat().st_size
            )


def repotune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repotune.cli", "deploy", *args], capture_output=True, text=True, check=False
    )


@pytest.mark.integration
def test_cli_dry_run_prints_valid_manifests_and_touches_nothing(api: KubeApi) -> None:
    done = repotune(
        "minio://mlpipeline/v2/artifacts/run/model",
        "--name",
        "sample-assistant",
        "--namespace",
        "team-a",
        "--runtime",
        "repotune",
        "--recipe",
        str(REPO / "configs" / "tiny-cpu.yaml"),
        "--canary",
        "20",
        "--dry-run",
        "--kube-host",
        api.url,
    )
    assert done.returncode == 0, done.stderr
    account, runtime, isvc = yaml.safe_load_all(done.stdout)
    round_trip(account, "V1ServiceAccount")
    round_trip(runtime, "V1alpha1ServingRuntime")
    model = round_trip(isvc, "V1beta1InferenceService")
    assert model.spec.predictor.model.storage_uri == "s3://mlpipeline/v2/artifacts/run/model"
    assert model.spec.predictor.canary_traffic_percent == 20
    assert done.stdout == to_yaml([account, runtime, isvc])
    assert api.requests == []
    # A threshold only the repotune runtime serves is not dropped without a word.
    hf = repotune("minio://mlpipeline/v2/artifacts/run/model", "--name", "app", "--namespace", "team-a",
                  "--min-confidence", "0.5", "--dry-run", "--kube-host", api.url)  # fmt: skip
    assert hf.returncode == 0 and "min_confidence 0.5 is served by the repotune runtime only" in hf.stderr


@pytest.mark.integration
def test_cli_deploys_and_fails_visibly_after_a_rollback(api: KubeApi) -> None:
    from typer.testing import CliRunner

    from repotune.cli import app

    api.controller(
        PLURAL, by_spec(lambda obj: never_ready() if "broken" in str(obj["spec"]) else ready_after(1, URL))
    )
    common = (
        "--name",
        "sample-assistant",
        "--namespace",
        "team-a",
        "--kube-host",
        api.url,
        "--timeout",
        "0.3",
    )
    runner = CliRunner()
    done = runner.invoke(app, ["deploy", GOOD.storage_uri, *common])
    assert done.exit_code == 0, done.output
    assert f"serving {GOOD.storage_uri} at {URL}" in done.output

    done = runner.invoke(app, ["deploy", BAD.storage_uri, *common, "--runtime", "bogus"])
    assert done.exit_code == 2 and "'bogus' is not one of" in done.output

    # The real command: a rollback is a one-line error and exit status 2, so a pipeline step fails.
    done = repotune(BAD.storage_uri, *common)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: InferenceService team-a/sample-assistant: s3://models/v2-broken did not")
    assert "Rolled back: the previous spec (s3://models/v1) is Ready again" in error
    assert "Traceback" not in done.stderr
    assert live_isvc(api)["spec"]["predictor"]["model"]["storageUri"] == GOOD.storage_uri


def test_only_the_registrys_current_champion_is_deployed() -> None:
    from repotune.deploy import no_longer_champion

    model = ModelSource(uri="s3://models/3", storage_uri="s3://models/3", model_name="repotune", version="3")
    assert no_longer_champion(model, "3") is None
    assert no_longer_champion(model, "4") == (
        "repotune version 3 is no longer the champion (version 4 is); the live service stays"
    )
    assert "(no version is)" in str(no_longer_champion(model, None))


def test_a_model_outside_object_storage_is_a_note_for_the_pipeline_and_an_error_for_the_cli(
    tmp_path: Path,
) -> None:
    from repotune.deploy import DeployConfig, run

    config = DeployConfig(
        model_uri=str(tmp_path / "model"),
        settings=settings(),
        manifest=tmp_path / "manifest.yaml",
        skip_unservable=True,
    )
    result = run(config, log=lambda _: None)
    assert result.url is None and result.objects == () and "KServe can only download" in str(result.skipped)
    assert (
        (tmp_path / "manifest.yaml").read_text().startswith("# No InferenceService rendered: the model is at")
    )
    with pytest.raises(RepotuneError, match="is a local path; a cluster cannot read it"):
        run(DeployConfig(model_uri=str(tmp_path / "model"), settings=settings()), log=lambda _: None)
