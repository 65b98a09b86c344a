"""Multi-node training as a Kubeflow PyTorchJob (Training Operator v1.7 or later, ``kubeflow.org/v1``).

:func:`render_pytorchjob` turns a recipe whose ``resources.nodes`` is above 1 (or that wants several
GPUs on one node) into a PyTorchJob: one ``Master`` pod and ``nodes - 1`` ``Worker`` pods, each running
:mod:`repotune.train.cluster_entry` under torchrun with ``gpus_per_node`` processes (1 on CPU).

How the pieces meet, as the v1 operator does it (``pkg/controller.v1/pytorch/envvar.go``): it creates a
Service per pod named ``JOB-master-0`` / ``JOB-worker-N``, and sets in every container named
``pytorch`` ``MASTER_ADDR`` (the master's Service), ``MASTER_PORT`` (the container port named
``pytorchjob-port``), ``RANK`` (the pod's node rank: 0 for the master, N + 1 for worker N),
``WORLD_SIZE`` (pods x ``spec.nprocPerNode``) and the ``PET_*`` variables torchrun reads. The command
passes node count and processes per node literally and node rank, master address and port as
``$(VAR)`` references, which the kubelet expands from the container's environment, so no shell is
involved. torchrun then gives each process its global ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``,
which is all :func:`repotune.train.finetune.run_training` needs for DDP.

Credentials reach the pods only as ``valueFrom.secretKeyRef`` (the Secret templates are in
``manifests/secrets/``); the manifest never holds a literal secret.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from repotune import images, storage
from repotune.config import to_dict
from repotune.errors import RepotuneError
from repotune.train.recipe import Recipe

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
# The operator finds the container and the rendezvous port by these names (PytorchJobDefaultContainerName,
# PytorchJobDefaultPortName); 23456 is its default port number.
CONTAINER_NAME = "pytorch"
PORT_NAME = "pytorchjob-port"
MASTER_PORT = 23456
WORK_DIR = "/workspace/work"
"""Scratch folder in the pods (an emptyDir): fetched data, the model, Trainer checkpoints."""
TRAINER_SERVICE_ACCOUNT = "repotune-trainer"
"""The pods' ServiceAccount (manifests/pipeline-namespace/rbac.yaml): no API access, no token."""
S3_SECRET = "repotune-s3"
MLFLOW_SECRET = "repotune-mlflow"
# Worker Services are named JOB-worker-N and must be DNS-1035 labels of at most 63 characters.
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SecretRef:
    """One environment variable taken from a key of a Kubernetes Secret in the job's namespace."""

    secret: str
    """The Secret's name."""
    key: str
    """The key inside the Secret."""
    optional: bool = False
    """True: a missing Secret or key leaves the variable unset; False: the pod does not start."""


DEFAULT_SECRET_ENV: Mapping[str, SecretRef] = {
    # object storage, read by repotune.storage.client_from_env
    "AWS_ACCESS_KEY_ID": SecretRef(S3_SECRET, "AWS_ACCESS_KEY_ID"),
    "AWS_SECRET_ACCESS_KEY": SecretRef(S3_SECRET, "AWS_SECRET_ACCESS_KEY"),
    "AWS_ENDPOINT_URL": SecretRef(S3_SECRET, "AWS_ENDPOINT_URL", optional=True),
    "AWS_REGION": SecretRef(S3_SECRET, "AWS_REGION", optional=True),
    # MLflow: tracking is on when the URI is set; the user and password only for a server with auth
    "MLFLOW_TRACKING_URI": SecretRef(MLFLOW_SECRET, "MLFLOW_TRACKING_URI", optional=True),
    "MLFLOW_TRACKING_USERNAME": SecretRef(MLFLOW_SECRET, "MLFLOW_TRACKING_USERNAME", optional=True),
    "MLFLOW_TRACKING_PASSWORD": SecretRef(MLFLOW_SECRET, "MLFLOW_TRACKING_PASSWORD", optional=True),
}
"""Environment variable -> Secret key, for every pod of the job."""


def _literal(text: str) -> str:
    """``text`` as the kubelet will pass it: ``$(`` would start a variable reference, ``$$(`` does not."""
    return text.replace("$(", "$$(")


def _check_name(name: str, nodes: int) -> None:
    longest = f"{name}-worker-{nodes - 2}" if nodes > 1 else f"{name}-master-0"
    if not _NAME.match(name) or len(longest) > 63:
        raise RepotuneError(
            f"PyTorchJob name {name!r}: use lowercase letters, digits and '-', starting with a letter, "
            f"short enough that the pod Service name {longest!r} has at most 63 characters"
        )


def _check_uri(label: str, uri: str) -> str:
    if not storage.is_s3_uri(uri):
        raise RepotuneError(
            f"{label} {uri!r} must be an s3:// URI: the job's pods share no disk with this machine"
        )
    storage.parse_s3_uri(uri)
    return storage.minio_to_s3(uri)


def _env(
    secret_env: Mapping[str, SecretRef], tracking_uri: str | None, extra_env: Mapping[str, str]
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    literals = dict(extra_env)
    if tracking_uri is not None:
        if urlsplit(tracking_uri).password is not None:
            raise RepotuneError(
                "tracking_uri holds a password; put it in the repotune-mlflow Secret "
                "(MLFLOW_TRACKING_PASSWORD) and pass the URI without it"
            )
        literals["MLFLOW_TRACKING_URI"] = tracking_uri
    for name, value in literals.items():
        if not _ENV_NAME.match(name):
            raise RepotuneError(f"environment variable name {name!r} is not valid")
        env.append({"name": name, "value": value})
    for name, ref in secret_env.items():
        if not _ENV_NAME.match(name):
            raise RepotuneError(f"environment variable name {name!r} is not valid")
        if name in literals:
            continue  # an explicit value wins over the Secret
        selector: dict[str, Any] = {"name": ref.secret, "key": ref.key}
        if ref.optional:
            selector["optional"] = True
        env.append({"name": name, "valueFrom": {"secretKeyRef": selector}})
    return env


def render_pytorchjob(
    recipe: Recipe,
    *,
    name: str,
    namespace: str,
    data_uri: str,
    output_uri: str,
    image: str | None = None,
    service_account: str = TRAINER_SERVICE_ACCOUNT,
    secret_env: Mapping[str, SecretRef] | None = None,
    tracking_uri: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    backoff_limit: int = 3,
    ttl_seconds_after_finished: int | None = 86400,
) -> dict[str, Any]:
    """The PyTorchJob (a plain dict, ready for server-side apply) that trains ``recipe`` on ``data_uri``.

    ``data_uri`` is a `repotune clean` output and ``output_uri`` the model's destination, both
    ``s3://`` (or KFP's ``minio://``) prefixes. The recipe travels inline as JSON, so the pods need no
    access to the recipe file. ``image`` defaults to :func:`repotune.images.cuda_image` when the recipe
    asks for GPUs, else :func:`repotune.images.cpu_image`. ``secret_env`` maps environment variables
    to Secret keys (default :data:`DEFAULT_SECRET_ENV`); ``tracking_uri`` and ``extra_env`` are plain,
    non-secret values (a tracking URI with a password in it is refused). ``backoff_limit``: pod
    restarts before the job fails; ``ttl_seconds_after_finished``: seconds before the operator deletes
    the finished job and its pods (None keeps them).
    """
    res = recipe.resources
    _check_name(name, res.nodes)
    data_uri = _check_uri("data_uri", data_uri)
    output_uri = _check_uri("output_uri", output_uri)
    if backoff_limit < 0:
        raise RepotuneError("backoff_limit must be 0 or more")
    nproc = res.gpus_per_node if res.gpus_per_node > 0 else 1
    recipe_json = json.dumps(to_dict(recipe), sort_keys=True, separators=(",", ":"))
    command = [
        "torchrun",
        f"--nnodes={res.nodes}",
        f"--nproc_per_node={nproc}",
        "--node_rank=$(RANK)",
        "--master_addr=$(MASTER_ADDR)",
        "--master_port=$(MASTER_PORT)",
        "-m",
        "repotune.train.cluster_entry",
        _literal(data_uri),
        _literal(output_uri),
        "--recipe-json",
        _literal(recipe_json),
        "--work-dir",
        WORK_DIR,
    ]
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "work", "mountPath": "/workspace"}]
    if nproc > 1:
        # Processes on one node exchange tensors through /dev/shm (NCCL, gloo); the container
        # runtime's default is 64 MiB, too small for that. Memory-backed: it counts against the
        # memory limit.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    container = {
        "name": CONTAINER_NAME,
        "image": image or (images.cuda_image() if res.gpus_per_node > 0 else images.cpu_image()),
        "command": command,
        "env": _env(DEFAULT_SECRET_ENV if secret_env is None else secret_env, tracking_uri, extra_env or {}),
        "ports": [{"name": PORT_NAME, "containerPort": MASTER_PORT, "protocol": "TCP"}],
        "resources": recipe.resources.requirements(),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    labels = {"app.kubernetes.io/part-of": "repotune", "app.kubernetes.io/component": "train"}
    pod_template = {
        "metadata": {
            "labels": dict(labels),
            # an Istio sidecar keeps the pod running after training ends, so the job never finishes
            "annotations": {"sidecar.istio.io/inject": "false"},
        },
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
            **({"tolerations": tolerations} if (tolerations := recipe.resources.tolerations()) else {}),
        },
    }

    def replica(count: int) -> dict[str, Any]:
        # OnFailure restarts the container in place; run_training resumes from its last checkpoint
        return {"replicas": count, "restartPolicy": "OnFailure", "template": copy.deepcopy(pod_template)}

    replica_specs = {"Master": replica(1)}
    if res.nodes > 1:
        replica_specs["Worker"] = replica(res.nodes - 1)
    run_policy: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        # keep the finished pods, so their logs can still be read
        "cleanPodPolicy": "None",
    }
    if ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nprocPerNode": str(nproc),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def master_pod_name(job: Mapping[str, Any]) -> str:
    """The master pod's name, which the operator derives from the job's (JOB-master-0)."""
    return f"{job['metadata']['name']}-master-0"


def run_pytorchjob(
    job: Mapping[str, Any],
    *,
    timeout_s: float,
    log: Callable[[str], None] = print,
    poll_s: float = 10.0,
    delete_on_timeout: bool = True,
    api: ApiClient | None = None,
) -> dict[str, Any]:
    """Applies ``job`` (from :func:`render_pytorchjob`) and waits until it has Succeeded; returns it as
    the cluster last reported it.

    Server-side apply makes a retried step idempotent: applying the same job again changes nothing,
    and one that already Succeeded returns at once (give each run its own job name to train again).
    Raises ``RepotuneError`` when the job reports Failed (with the tail of the master pod's log when
    it can be read) or after ``timeout_s`` seconds; a timed-out job is deleted, so that its pods stop
    holding nodes and GPUs, unless ``delete_on_timeout`` is False. ``log`` gets one line per state
    change (Created, Running, Restarting, ...); ``poll_s`` is the seconds between status reads.
    """
    from repotune import kube

    meta = job["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    what = f"PyTorchJob {namespace}/{name}"
    live = kube.server_side_apply(job, plural=PLURAL, api=api)
    log(f"submitted {what} ({_shape(job)})")
    seen: list[str] = []

    def progress(obj: dict[str, Any]) -> None:
        state = _latest_condition(obj)
        if state is not None and (not seen or seen[-1] != state):
            seen.append(state)
            log(f"{what}: {state}")

    try:
        done = kube.wait_for_condition(
            GROUP,
            VERSION,
            PLURAL,
            namespace,
            name,
            "Succeeded",
            timeout_s=timeout_s,
            on_failure_condition="Failed",
            min_generation=(live.get("metadata") or {}).get("generation"),
            poll_s=poll_s,
            progress=progress,
            api=api,
        )
    except kube.WaitFailed as err:
        if err.timed_out and delete_on_timeout:
            kube.delete(GROUP, VERSION, PLURAL, namespace, name, api=api)
            raise RepotuneError(f"{err}; deleted the job so that its pods free their nodes") from None
        tail = _master_log_tail(job, api)
        raise RepotuneError(
            f"{err}\nlast lines of {master_pod_name(job)}:\n{tail}" if tail else str(err)
        ) from None
    log(f"{what} Succeeded")
    return done


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def train_as_pytorchjob(
    recipe: Recipe,
    key: str,
    data_uri: str,
    output_uri: str,
    output: Path,
    *,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train ``recipe`` as a PyTorchJob across ``recipe.resources.nodes`` nodes, wait, and fetch the model
    into ``output``; returns ``output``.

    The job reads the data at ``data_uri`` and writes to a sibling of ``output_uri`` (the calling
    step's own artifact prefix); the model is then brought into ``output``, so that KFP stores it as
    the step's artifact like a single-node run's. The job runs in ``REPOTUNE_NAMESPACE``, else in the
    namespace of the pod this runs in, else in ``default``.
    """
    import hashlib
    import os

    namespace = os.environ.get("REPOTUNE_NAMESPACE") or (
        SERVICE_ACCOUNT_NAMESPACE.read_text().strip() if SERVICE_ACCOUNT_NAMESPACE.is_file() else "default"
    )
    job_output = storage.minio_to_s3(output_uri).rstrip("/") + "-pytorchjob"
    name = f"repotune-train-{key}-{hashlib.sha256(data_uri.encode()).hexdigest()[:8]}"
    job = render_pytorchjob(
        recipe,
        name=name,
        namespace=namespace,
        data_uri=storage.minio_to_s3(data_uri),
        output_uri=job_output,
        tracking_uri=tracking_uri,
    )
    budget_s = (recipe.max_minutes or 24 * 60) * 60 + 30 * 60  # the training budget plus start-up
    run_pytorchjob(job, timeout_s=budget_s, log=log)
    return storage.fetch(job_output, output)


def _shape(job: Mapping[str, Any]) -> str:
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(int(spec["replicas"]) for spec in replicas.values())
    return f"{nodes} node(s) x {job['spec'].get('nprocPerNode', '1')} process(es)"


def _latest_condition(obj: Mapping[str, Any]) -> str | None:
    """The type of the newest True condition (the operator appends Created, Running, Succeeded...)."""
    for condition in reversed((obj.get("status") or {}).get("conditions") or []):
        if condition.get("status") == "True":
            return str(condition.get("type"))
    return None


def _master_log_tail(job: Mapping[str, Any], api: ApiClient | None, lines: int = 40) -> str | None:
    """The last ``lines`` lines of the master pod's log, or None when it cannot be read (pod gone, no
    RBAC for pods/log): a failure message without them is still useful."""
    from kubernetes.client import CoreV1Api
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from repotune import kube

    try:
        text = CoreV1Api(api if api is not None else kube.connect()).read_namespaced_pod_log(
            master_pod_name(job),
            job["metadata"]["namespace"],
            container=CONTAINER_NAME,
            tail_lines=lines,
            _request_timeout=kube.REQUEST_TIMEOUT_S,
        )
    except (ApiException, HTTPError, RepotuneError):
        return None
    return text.rstrip() or None
