"""manifests/: every overlay renders with `kubectl kustomize`, and what it renders is what a platform
engineer would want to apply: what the steps need in the namespace where KFP runs them, least-privilege
RBAC that matches what the code calls, no credential anywhere (Secrets come only from the user's own
files, so re-applying an overlay never resets them), pinned images, and objects that the kserve and
kubernetes SDK models accept field by field.

Rendered and checked here only; nothing in this file talks to a cluster."""

from __future__ import annotations

import base64
import copy
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
from tests.kube_api import fails_after, never_ready, ready_after, running_kube_api

from repotune import images, kube
from repotune.deploy import DeploySettings, ModelSource, Runtime, S3Access, roll_out
from repotune.deploy.render import PREDICTOR_ARGS, PREDICTOR_COMMAND
from repotune.errors import RepotuneError
from repotune.pipelines.submit import SERVICE_ACCOUNT
from repotune.train.cluster_job import DEFAULT_SECRET_ENV, TRAINER_SERVICE_ACCOUNT, run_pytorchjob
from repotune.train.recipe import load_recipe

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
SHARED = ("overlays/local", "overlays/external-storage", "overlays/gpu")
KFP_OVERLAYS = ("overlays/kfp-standalone", "overlays/kfp-profile")
SHARED_NAMESPACE = "repotune"
KFP_NAMESPACE = "kubeflow"
PROFILE_NAMESPACE = "kubeflow-user-example-com"
SECRET_TEMPLATES = ("s3", "mlflow", "github", "confluence", "notion", "jira", "hf")
CREDENTIAL = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|USERNAME", re.IGNORECASE)
KNOWN_DEFAULTS = ("minioadmin", "minio123", "REPLACE_ME")

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

# What each Role may do: {(apiGroup, resource, resourceName or None): verbs}.
RUNNER_GRANTS = {
    ("kubeflow.org", "pytorchjobs", None): {"get", "create", "patch", "delete"},
    ("", "pods/log", None): {"get"},
}
DEPLOYER_GRANTS = {
    ("serving.kserve.io", "inferenceservices", None): {"get", "create", "patch"},
    ("serving.kserve.io", "servingruntimes", None): {"create", "patch"},
    ("", "serviceaccounts", None): {"create", "patch"},
}
KFP_RUNTIME_GRANTS = {
    ("", "secrets", "mlpipeline-minio-artifact"): {"get"},
    ("", "configmaps", "kfp-launcher"): {"get"},
    ("argoproj.io", "workflowtaskresults", None): {"create", "patch"},
}
ROLES = {
    "repotune-pipeline-runner": RUNNER_GRANTS,
    "repotune-kfp-runtime": KFP_RUNTIME_GRANTS,
    "repotune-deployer": DEPLOYER_GRANTS,
}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` renders the manifests")
    return path


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )


def render(directory: Path) -> list[dict[str, Any]]:
    proc = kustomize(directory)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def user_overlay(tmp: Path, **fields: Any) -> Path:
    """A kustomization of a user's own in ``tmp`` whose paths point into manifests/."""
    relative = os.path.relpath(MANIFESTS, tmp)
    for key in ("resources", "components"):
        if key in fields:
            fields[key] = [f"{relative}/{path}" for path in fields[key]]
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(fields))
    return tmp


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict[str, Any]]]:
    found = {name: render(MANIFESTS / name) for name in (*SHARED, *KFP_OVERLAYS, "examples")}
    # The PostgreSQL component is opt-in; render it the way its comment says to use it.
    postgres = user_overlay(
        tmp_path_factory.mktemp("postgres"),
        resources=["overlays/external-storage"],
        components=["components/mlflow-postgres"],
    )
    found["mlflow-postgres"] = render(postgres)
    # A profile namespace set the way the README says (`kustomize edit set namespace team-a`).
    team = user_overlay(
        tmp_path_factory.mktemp("team-a"),
        namespace="team-a",
        resources=["pipeline-namespace", "deploy-access"],
    )
    found["team-a"] = render(team)
    return found


def example_env(name: str) -> Path:
    return MANIFESTS / "secrets" / name / f"{name}.env.example"


def env_keys(path: Path) -> tuple[dict[str, str], set[str]]:
    """(KEY=value lines, keys only mentioned in comments as `# KEY=`) of an env file."""
    values, optional = {}, set()
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line):
            values[match[1]] = match[2]
        elif match := re.match(r"^#\s*([A-Z][A-Z0-9_]*)=", line):
            optional.add(match[1])
    return values, optional


@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Every Secret template built the way the README says: its folder with the user's NAME.env (the
    example, with the credentials a user would fill in)."""
    tree = tmp_path_factory.mktemp("secrets") / "secrets"
    shutil.copytree(MANIFESTS / "secrets", tree)
    found = {}
    for name in SECRET_TEMPLATES:
        values, _ = env_keys(example_env(name))
        filled = {key: value or f"test-{key.lower()}-0123456789" for key, value in values.items()}
        (tree / name / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in filled.items()))
        (secret,) = render(tree / name)
        found[secret["metadata"]["name"]] = secret
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


def grants(role: dict[str, Any]) -> dict[tuple[str, str, str | None], set[str]]:
    found: dict[tuple[str, str, str | None], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    found.setdefault((group, resource, name), set()).update(rule["verbs"])
    return found


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}


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


def test_shared_services_live_in_their_own_namespace(rendered):
    for overlay in (*SHARED, "examples", "mlflow-postgres"):
        for obj in rendered[overlay]:
            where = f"{overlay}: {obj['kind']} {obj['metadata']['name']}"
            if obj["kind"] == "Namespace":
                assert obj["metadata"]["name"] == SHARED_NAMESPACE and "namespace" not in obj["metadata"]
            else:
                assert obj["metadata"].get("namespace") == SHARED_NAMESPACE, where
        assert not by_kind(rendered[overlay], "ServiceAccount"), overlay  # identities go with the runs
        assert not {obj["kind"] for obj in rendered[overlay]} & {"Role", "RoleBinding"}, overlay


@pytest.mark.parametrize(
    ("overlay", "runs_in", "deploys_to"),
    [
        ("overlays/kfp-standalone", KFP_NAMESPACE, SHARED_NAMESPACE),
        ("overlays/kfp-profile", PROFILE_NAMESPACE, PROFILE_NAMESPACE),
        ("team-a", "team-a", "team-a"),
    ],
)
def test_the_runner_is_where_kfp_runs_the_steps_and_may_deploy_where_models_go(
    rendered, overlay, runs_in, deploys_to
):
    where = {
        (obj["kind"], obj["metadata"]["name"]): obj["metadata"]["namespace"] for obj in rendered[overlay]
    }
    assert where == {
        ("ServiceAccount", SERVICE_ACCOUNT): runs_in,
        ("ServiceAccount", TRAINER_SERVICE_ACCOUNT): runs_in,
        ("Role", "repotune-pipeline-runner"): runs_in,
        ("Role", "repotune-kfp-runtime"): runs_in,
        ("RoleBinding", "repotune-pipeline-runner"): runs_in,
        ("RoleBinding", "repotune-kfp-runtime"): runs_in,
        ("ServiceAccount", S3Access().service_account): deploys_to,
        ("Role", "repotune-deployer"): deploys_to,
        ("RoleBinding", "repotune-deployer"): deploys_to,
    }
    # Every binding names the run's account in the namespace the run's pods are in: kustomize's
    # `default` marker was replaced, and the deploy binding crosses namespaces where it must.
    for binding in by_kind(rendered[overlay], "RoleBinding").values():
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": runs_in}
        ]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": binding["metadata"]["name"],
        }
    accounts = by_kind(rendered[overlay], "ServiceAccount")
    assert accounts[TRAINER_SERVICE_ACCOUNT]["automountServiceAccountToken"] is False
    serving = accounts[S3Access().service_account]
    assert serving["automountServiceAccountToken"] is False
    assert serving["secrets"] == [{"name": S3Access().secret}]
    assert "automountServiceAccountToken" not in accounts[SERVICE_ACCOUNT]  # KFP's containers need it


def test_roles_grant_named_verbs_on_named_resources_and_nothing_cluster_wide(rendered):
    for overlay, obj in all_objects(rendered):
        assert obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"), overlay
    for overlay in (*KFP_OVERLAYS, "team-a"):
        roles = by_kind(rendered[overlay], "Role")
        assert set(roles) == set(ROLES)
        for name, role in roles.items():
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert "*" not in rule.get(field, []), f"{overlay}: wildcard in {name}'s {field}"
            assert grants(role) == ROLES[name], f"{overlay}: {name}"
        # Secrets through the API: only KFP's own artifact-store credentials, by name.
        readable = {key for role in roles.values() for key in grants(role) if key[1] == "secrets"}
        assert readable == {("", "secrets", "mlpipeline-minio-artifact")}


def rbac_requests(requests) -> dict[tuple[str, str], set[str]]:
    """What the recorded API requests need from RBAC: {(apiGroup, resource[/subresource]): verbs}.
    A server-side apply is a `patch`, and also a `create` when it makes the object."""
    needed: dict[tuple[str, str], set[str]] = {}
    applied: set[str] = set()
    for request in requests:
        parts = [p for p in request.path.split("/") if p]
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        if rest[:1] == ["namespaces"]:
            rest = rest[2:]
        resource = "/".join([rest[0], *rest[2:3]])  # pods/NAME/log -> pods/log
        verb = {
            "GET": "get" if len(rest) > 1 else "list",
            "PATCH": "patch",
            "POST": "create",
            "PUT": "update",
            "DELETE": "delete",
        }[request.method]
        verbs = needed.setdefault((group, resource), set())
        verbs.add(verb)
        if request.method == "PATCH" and request.content_type == "application/apply-patch+yaml":
            if request.path not in applied:
                verbs.add("create")
            applied.add(request.path)
    return needed


def test_the_roles_grant_exactly_what_the_deploy_and_train_steps_call(rendered):
    """Drive the code the steps run (a deploy with the repotune runtime, then an update; a PyTorchJob
    that succeeds, one that fails, one that times out) against the Kubernetes API stand-in, and
    compare every call with the Roles: nothing missing, nothing granted that no step uses."""
    model = ModelSource(uri="s3://repotune/models/a/", storage_uri="s3://repotune/models/a/", model_name="a")
    newer = ModelSource(uri="s3://repotune/models/b/", storage_uri="s3://repotune/models/b/", model_name="a")
    recipe = load_recipe(ROOT / "configs" / "tiny-cpu.yaml", {"resources.nodes": 2})
    from repotune.train.cluster_job import render_pytorchjob

    def job(name: str) -> dict[str, Any]:
        return render_pytorchjob(
            recipe, name=name, namespace="team-a", data_uri="s3://repotune/d/", output_uri="s3://repotune/m/"
        )

    with running_kube_api() as server:
        api = kube.connect(host=server.url)
        settings = DeploySettings(name="assistant", namespace="team-a", runtime=Runtime.REPOTUNE)
        server.controller("inferenceservices", ready_after(2))
        roll_out(model, settings, timeout_s=10, poll_s=0.01, api=api)
        server.controller("inferenceservices", never_ready())
        with pytest.raises(RepotuneError, match="Rolled back"):
            roll_out(newer, settings, timeout_s=0.2, poll_s=0.02, api=api)
        server.controller("pytorchjobs", ready_after(2, condition="Succeeded"))
        run_pytorchjob(job("train-ok"), timeout_s=10, poll_s=0.01, api=api)
        server.controller("pytorchjobs", fails_after(2))
        with pytest.raises(RepotuneError, match="Failed"):
            run_pytorchjob(job("train-failed"), timeout_s=10, poll_s=0.01, api=api)
        server.controller("pytorchjobs", None)
        with pytest.raises(RepotuneError, match="deleted the job"):
            run_pytorchjob(job("train-slow"), timeout_s=0.2, poll_s=0.05, api=api)
        needed = rbac_requests(server.requests)

    granted: dict[tuple[str, str], set[str]] = {}
    for overlay in (*KFP_OVERLAYS, "team-a"):
        roles = by_kind(rendered[overlay], "Role")
        for name in ("repotune-pipeline-runner", "repotune-deployer"):
            for (group, resource, _), verbs in grants(roles[name]).items():
                granted.setdefault((group, resource), set()).update(verbs)
    assert needed == granted


def test_no_overlay_holds_a_secret_so_reapplying_one_never_resets_the_users_keys(rendered, tmp_path):
    for overlay, obj in all_objects(rendered):
        assert obj["kind"] != "Secret", f"{overlay} renders Secret {obj['metadata']['name']}"
    # The templates build only from the user's own file: a placeholder can never be applied.
    shutil.copytree(MANIFESTS / "secrets", tmp_path / "secrets")
    for name in SECRET_TEMPLATES:
        proc = kustomize(tmp_path / "secrets" / name)
        assert proc.returncode != 0 and f"{name}.env" in proc.stderr, name
    # and the files a user writes there are never committed
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "manifests/secrets/s3/s3.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


def test_secret_templates_build_the_named_secrets_from_the_users_values(secrets):
    assert set(secrets) == {f"repotune-{name}" for name in SECRET_TEMPLATES}
    for name, secret in secrets.items():
        build(secret, "V1Secret", f"Secret {name}")
        assert secret["type"] == "Opaque" and "namespace" not in secret["metadata"]  # `apply -n NS`
        assert decoded(secret) and all(
            value.startswith("test-") for key, value in decoded(secret).items() if CREDENTIAL.search(key)
        )
    # The store's address is said twice, for repotune and for KServe: both say the same.
    s3 = secrets["repotune-s3"]
    values, annotations = decoded(s3), s3["metadata"]["annotations"]
    scheme, _, hostport = values["AWS_ENDPOINT_URL"].partition("://")
    assert annotations == {
        "serving.kserve.io/s3-endpoint": hostport.rstrip("/"),
        "serving.kserve.io/s3-usehttps": "1" if scheme == "https" else "0",
        "serving.kserve.io/s3-region": values["AWS_REGION"],
    }
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(values)


def pipeline_secret_refs() -> set[tuple[str, str]]:
    """(Secret, key) pairs the committed compiled pipelines map into their steps."""
    found = set()
    for path in (ROOT / "pipelines").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            executors = (
                ((document or {}).get("platforms") or {}).get("kubernetes", {}).get("deploymentSpec", {})
            ).get("executors", {})
            for config in executors.values():
                for entry in config.get("secretAsEnv", []):
                    found |= {(entry["secretName"], item["secretKey"]) for item in entry["keyToEnv"]}
    assert found, "no secretAsEnv in pipelines/*.yaml"
    return found


def test_every_secret_key_a_workload_reads_is_one_a_template_defines(rendered):
    defined: dict[str, set[str]] = {}
    for name in SECRET_TEMPLATES:
        values, optional = env_keys(example_env(name))
        kustomization = yaml.safe_load((MANIFESTS / "secrets" / name / "kustomization.yaml").read_text())
        (generator,) = kustomization["secretGenerator"]
        literals = {item.split("=", 1)[0] for item in generator.get("literals", [])}
        defined[generator["name"]] = set(values) | optional | literals
    referenced = set(pipeline_secret_refs())
    referenced |= {(ref.secret, ref.key) for ref in DEFAULT_SECRET_ENV.values()}  # PyTorchJob pods
    for objects in rendered.values():
        for container in containers(objects):
            for entry in container.get("env", []):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref is not None and ref["name"] != "repotune-mlflow-db":  # made by hand, see its README
                    referenced.add((ref["name"], ref["key"]))
        for account in by_kind(objects, "ServiceAccount").values():
            referenced |= {(item["name"], "AWS_ACCESS_KEY_ID") for item in account.get("secrets", [])}
    for secret, key in sorted(referenced):
        assert secret in defined, f"nothing in manifests/secrets makes Secret {secret}"
        assert key in defined[secret], f"manifests/secrets says nothing of key {key} of Secret {secret}"


def test_no_credential_has_a_default_value_anywhere(rendered):
    for name in SECRET_TEMPLATES:
        values, _ = env_keys(example_env(name))
        for key, value in values.items():
            if CREDENTIAL.search(key):
                assert value == "", f"{name}.env.example gives {key} a value"
    for overlay, objects in rendered.items():
        for container in containers(objects):
            for entry in container.get("env", []):
                if CREDENTIAL.search(entry["name"]):
                    assert "valueFrom" in entry, f"{overlay}: {container['name']} sets {entry['name']} inline"
    # The well-known defaults appear only in the check that refuses them, never as a value.
    for overlay, obj in all_objects(rendered):
        obj = copy.deepcopy(obj)
        for container in containers([obj]):
            if container["name"] == "check-credentials":
                container["command"] = []
        text = yaml.safe_dump(obj)
        for default in KNOWN_DEFAULTS:
            assert default not in text, f"{overlay}: {obj['kind']} {obj['metadata']['name']} holds {default}"


def minio_check(rendered) -> tuple[list[str], list[dict[str, Any]]]:
    spec = by_kind(rendered["overlays/local"], "Deployment")["minio"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["check-credentials", "make-buckets"]
    check, server = spec["initContainers"][0], spec["containers"][0]
    assert check["env"] == [e for e in server["env"] if e["name"].startswith("MINIO_ROOT_")]
    return check["command"], check["env"]


@pytest.mark.parametrize(
    ("user", "password", "accepted"),
    [
        ("", "", False),  # MinIO would start as minioadmin:minioadmin
        ("minioadmin", "minioadmin", False),
        ("minio", "minio123", False),  # KFP's bundled MinIO
        ("REPLACE_ME", "REPLACE_ME", False),  # the placeholder of earlier templates
        ("ab", "0123456789abcdef", False),  # MinIO wants 3+ characters
        ("repotune", "short", False),  # and 8+ for the password
        ("repotune-3f9a", "9c1e0f6b2d7a48e5b3c6d1f0a9e8b7c6", True),
    ],
)
def test_minio_does_not_start_on_missing_or_well_known_credentials(rendered, user, password, accepted):
    command, env = minio_check(rendered)
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env} == {
        "MINIO_ROOT_USER": {"name": "repotune-s3", "key": "AWS_ACCESS_KEY_ID"},
        "MINIO_ROOT_PASSWORD": {"name": "repotune-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    done = subprocess.run(
        command,
        env={"PATH": os.environ["PATH"], "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert (done.returncode == 0) is accepted, done.stderr
    if not accepted:
        assert done.stderr.startswith("repotune-s3: ") and "manifests/secrets/s3" in done.stderr


def test_images_are_pinned_and_repotune_images_are_the_ones_images_py_names(rendered):
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
            assert set(container["resources"]) == {"requests", "limits"}, where


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

    # Without this, MLflow 3 starts eight job-runner processes beside the server: over its memory limit.
    for spec in (sqlite["template"]["spec"], postgres):
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_the_serving_runtime_and_inference_service_are_valid_kserve_objects(rendered):
    runtime = build(
        by_kind(rendered["overlays/local"], "ServingRuntime")["repotune-predictor"],
        "V1alpha1ServingRuntime",
        "runtime",
    )
    container = runtime.spec.containers[0]
    # The same server as the runtime `repotune deploy --runtime repotune` applies: in particular the model
    # is served under the InferenceService's name (KServe fills in {{.Name}}), which clients send.
    assert (container.command, container.args) == (list(PREDICTOR_COMMAND), list(PREDICTOR_ARGS))
    assert container.args[-2:] == ["--model-name", "{{.Name}}"]
    formats = {f.name for f in runtime.spec.supported_model_formats}

    (service,) = [build(obj, "V1beta1InferenceService", "isvc") for obj in rendered["examples"]]
    model = service.spec.predictor.model
    assert model.runtime == "repotune-predictor"
    assert model.model_format.name in formats
    assert model.storage_uri.startswith("s3://")
    # the account the standalone overlay makes beside it
    assert service.spec.predictor.service_account_name in by_kind(
        rendered["overlays/kfp-standalone"], "ServiceAccount"
    )


def test_every_object_is_a_valid_kubernetes_or_kserve_object(rendered):
    for overlay, obj in all_objects(rendered):
        type_name = CORE_MODELS.get(obj["kind"]) or KSERVE_MODELS[obj["kind"]]
        build(obj, type_name, f"{overlay}: {obj['kind']} {obj['metadata']['name']}")
