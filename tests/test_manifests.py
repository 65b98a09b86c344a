"""manifests/: every overlay renders with `kubectl kustomize`, and what it renders is what a platform
engineer would want to apply: namespaced, least-privilege, no real secrets, pinned images, and objects
that the kserve and kubernetes SDK models accept field by field.

Rendered and checked here only; nothing in this file talks to a cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kserve
import kubernetes.client
import pytest
import yaml

from repotune import images

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("overlays/local", "overlays/external-storage", "overlays/gpu", "examples")
NAMESPACE = "repotune"
PLACEHOLDER = "REPLACE_ME"
# Secret keys that hold configuration, not credentials: they may carry real values (without userinfo).
NOT_SECRET = {"AWS_ENDPOINT_URL", "AWS_REGION", "MLFLOW_TRACKING_URI"}
CLUSTER_SCOPED = {"Namespace"}
KSERVE_MODELS = {"ServingRuntime": "V1alpha1ServingRuntime", "InferenceService": "V1beta1InferenceService"}
CORE_MODELS = {
    "Namespace": "V1Namespace",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "Secret": "V1Secret",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Deployment": "V1Deployment",
    "Service": "V1Service",
}
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    return path


def render(directory: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    found = {name: render(MANIFESTS / name) for name in OVERLAYS}
    # The PostgreSQL component is opt-in; render it the way its comment says to use it.
    overlay = tmp_path_factory.mktemp("postgres-overlay")
    relative = os.path.relpath(MANIFESTS, overlay)
    (overlay / "kustomization.yaml").write_text(
        f"resources: [{relative}/overlays/external-storage]\n"
        f"components: [{relative}/components/mlflow-postgres]\n"
    )
    found["mlflow-postgres"] = render(overlay)
    return found


def all_objects(rendered) -> list[tuple[str, dict[str, Any]]]:
    return [(name, obj) for name, objects in rendered.items() for obj in objects]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj["spec"]["template"]["spec"] for obj in objects if obj["kind"] == "Deployment"]


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [c for spec in pod_specs(objects) for c in spec["containers"] + spec.get("initContainers", [])]
    found += [c for obj in objects if obj["kind"] == "ServingRuntime" for c in obj["spec"]["containers"]]
    return found


def build(data: Any, type_name: str, path: str) -> Any:
    """``data`` as the SDK model ``type_name``, refusing any field the model does not have (the SDKs'
    own deserializers silently drop unknown fields, which would hide a misspelt one)."""
    if type_name.startswith("list["):
        assert isinstance(data, list), f"{path}: expected a list"
        return [build(item, type_name[5:-1], f"{path}[{i}]") for i, item in enumerate(data)]
    if type_name.startswith("dict("):
        value_type = type_name[type_name.index(",") + 1 : -1].strip()
        assert isinstance(data, dict), f"{path}: expected a mapping"
        return {key: build(value, value_type, f"{path}.{key}") for key, value in data.items()}
    if type_name == "object":
        return data
    if type_name in _PRIMITIVES:
        assert isinstance(data, _PRIMITIVES[type_name]), f"{path}: {data!r} is not a {type_name}"
        return data
    cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
    assert isinstance(data, dict), f"{path}: expected a {type_name} mapping"
    unknown = set(data) - set(cls.attribute_map.values())
    assert not unknown, f"{path}: {type_name} has no field(s) {sorted(unknown)}"
    kwargs = {
        attr: build(data[key], cls.openapi_types[attr], f"{path}.{key}")
        for attr, key in cls.attribute_map.items()
        if key in data
    }
    return cls(**kwargs)


def test_every_overlay_renders_only_namespaced_objects_in_the_namespace(rendered):
    for overlay, obj in all_objects(rendered):
        where = f"{overlay}: {obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], where
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, where
    assert {name for name, objects in rendered.items() if by_kind(objects, "Namespace")} == {
        "overlays/local",
        "overlays/external-storage",
        "overlays/gpu",
        "mlflow-postgres",
    }


def test_the_pipeline_runner_gets_a_role_with_named_verbs_and_resources_only(rendered):
    for overlay, objects in rendered.items():
        kinds = {obj["kind"] for obj in objects}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, overlay
        if overlay == "examples":
            continue
        (role,) = by_kind(objects, "Role").values()
        granted = {}
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{overlay}: wildcard in {field}"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted[f"{resource}.{group}" if group else resource] = set(rule["verbs"])
        workload = {"get", "list", "watch", "create", "patch", "delete"}
        assert granted == {
            "inferenceservices.serving.kserve.io": workload,
            "pytorchjobs.kubeflow.org": workload,
            "servingruntimes.serving.kserve.io": {"get", "create", "patch"},
            "serviceaccounts": {"get", "create", "patch"},
            "pods": {"get"},
            "pods/log": {"get"},
        }
        (binding,) = by_kind(objects, "RoleBinding").values()
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "repotune-pipeline-runner", "namespace": NAMESPACE}
        ]
        accounts = by_kind(objects, "ServiceAccount")
        assert accounts["repotune-trainer"]["automountServiceAccountToken"] is False
        assert accounts["repotune-serving"]["secrets"] == [{"name": "repotune-s3"}]


def test_secrets_hold_placeholders_only(rendered):
    for overlay, objects in rendered.items():
        for name, secret in by_kind(objects, "Secret").items():
            assert "data" not in secret, f"{overlay}: {name} has base64 data; templates use stringData"
            for key, value in secret["stringData"].items():
                where = f"{overlay}: Secret {name} key {key}"
                if key in NOT_SECRET:
                    assert "@" not in value and value != PLACEHOLDER, where  # no user:password@ in URLs
                else:
                    assert value == PLACEHOLDER, where
    secrets = by_kind(rendered["overlays/external-storage"], "Secret")
    assert set(secrets) == {"repotune-s3", "repotune-github", "repotune-mlflow"}
    assert set(secrets["repotune-s3"]["stringData"]) == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    }


def test_the_s3_secret_carries_what_kserve_reads_for_each_store(rendered):
    local = by_kind(rendered["overlays/local"], "Secret")["repotune-s3"]
    assert local["metadata"]["annotations"] == {
        "serving.kserve.io/s3-endpoint": "minio.repotune.svc.cluster.local:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-region": "us-east-1",
    }
    assert local["stringData"]["AWS_ENDPOINT_URL"] == "http://minio.repotune.svc.cluster.local:9000"
    external = by_kind(rendered["overlays/external-storage"], "Secret")["repotune-s3"]
    assert external["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "1"
    assert external["stringData"]["AWS_ENDPOINT_URL"].startswith("https://")


def test_images_are_pinned_and_repotune_images_are_the_ones_images_py_names(rendered, monkeypatch):
    for overlay, objects in rendered.items():
        for container in containers(objects):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag != "latest", f"{overlay}: {image} is not pinned by tag"
            assert re.search(r"\d", tag), f"{overlay}: {image} has no version in its tag"
    repotune = {
        overlay: {c["image"] for c in containers(objects) if "/repotune/" in c["image"]}
        for overlay, objects in rendered.items()
    }
    assert repotune["overlays/local"] == repotune["overlays/external-storage"] == {images.CPU_IMAGE}
    assert repotune["overlays/gpu"] == {images.CUDA_IMAGE}


def test_every_container_is_bounded_and_unprivileged(rendered):
    for overlay, objects in rendered.items():
        for spec in pod_specs(objects):
            assert spec["securityContext"]["runAsNonRoot"] is True, overlay
            assert spec["automountServiceAccountToken"] is False, overlay
        for container in containers(objects):
            where = f"{overlay}: container {container['name']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, where
            if container["name"] != "make-buckets":
                assert set(container["resources"]) == {"requests", "limits"}, where


def test_secret_references_point_at_secrets_the_overlay_creates(rendered):
    for overlay, objects in rendered.items():
        created = set(by_kind(objects, "Secret"))
        if overlay == "mlflow-postgres":
            created.add("repotune-mlflow-db")  # created by hand: it holds the database password
        for container in containers(objects):
            for entry in container.get("env", []):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] in created, f"{overlay}: {container['name']} reads {ref['name']}"
                    if ref["name"] in by_kind(objects, "Secret"):
                        assert ref["key"] in by_kind(objects, "Secret")[ref["name"]]["stringData"]


def test_each_overlay_has_its_store_and_resources(rendered):
    local, external, gpu = (rendered[f"overlays/{n}"] for n in ("local", "external-storage", "gpu"))
    assert "minio" in by_kind(local, "Deployment")
    assert "minio" not in by_kind(external, "Deployment") and "minio" not in by_kind(gpu, "Deployment")
    assert (
        by_kind(local, "PersistentVolumeClaim")["minio-data"]["spec"]["resources"]["requests"]["storage"]
        == "5Gi"
    )

    runtime = by_kind(gpu, "ServingRuntime")["repotune-predictor"]["spec"]["containers"][0]
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert runtime["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert (
        "nvidia.com/gpu"
        not in by_kind(local, "ServingRuntime")["repotune-predictor"]["spec"]["containers"][0]["resources"][
            "limits"
        ]
    )


def test_mlflow_keeps_runs_in_sqlite_or_postgres_and_proxies_artifacts_to_s3(rendered):
    sqlite = by_kind(rendered["overlays/external-storage"], "Deployment")["mlflow"]["spec"]
    args = sqlite["template"]["spec"]["containers"][0]["args"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in args
    assert "--artifacts-destination=s3://mlflow/artifacts" in args
    assert sqlite["strategy"] == {"type": "Recreate"} and sqlite["replicas"] == 1  # one SQLite writer
    assert sqlite["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mlflow-data"

    objects = rendered["mlflow-postgres"]
    postgres = by_kind(objects, "Deployment")["mlflow"]["spec"]["template"]["spec"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in postgres["containers"][0]["args"]
    assert not postgres.get("volumes") and not postgres["containers"][0].get("volumeMounts")
    assert "mlflow-data" not in by_kind(objects, "PersistentVolumeClaim")


def test_the_serving_runtime_and_inference_service_are_valid_kserve_objects(rendered):
    runtime = build(
        by_kind(rendered["overlays/local"], "ServingRuntime")["repotune-predictor"],
        "V1alpha1ServingRuntime",
        "runtime",
    )
    container = runtime.spec.containers[0]
    assert (container.command, container.args) == (
        ["repotune"],
        ["serve", "/mnt/models", "--port", "8080", "--host", "0.0.0.0", "--insecure-no-auth"],
    )
    formats = {f.name for f in runtime.spec.supported_model_formats}

    (service,) = [build(obj, "V1beta1InferenceService", "isvc") for obj in rendered["examples"]]
    model = service.spec.predictor.model
    assert model.runtime == "repotune-predictor"
    assert model.model_format.name in formats
    assert model.storage_uri.startswith("s3://")
    assert service.spec.predictor.service_account_name == "repotune-serving"


def test_every_object_is_a_valid_kubernetes_or_kserve_object(rendered):
    for overlay, obj in all_objects(rendered):
        type_name = CORE_MODELS.get(obj["kind"]) or KSERVE_MODELS[obj["kind"]]
        build(obj, type_name, f"{overlay}: {obj['kind']} {obj['metadata']['name']}")
