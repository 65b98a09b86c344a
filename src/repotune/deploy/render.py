"""The Kubernetes objects that serve a model: an InferenceService and what it needs.

Pure functions of a ``ModelSource`` (where the weights are, which registered version they are) and
``DeploySettings``: nothing here talks to a cluster or a registry. Two runtimes:

- ``huggingface`` (default): KServe's Hugging Face ServingRuntime (``HF_RUNTIME``), which serves with
  vLLM on GPUs and with transformers on CPU. Nothing of repotune runs in the pod.
- ``repotune``: this project's predictor (``repotune serve``, OpenAI-compatible routes without vLLM)
  as a namespaced ServingRuntime named ``repotune-predictor``.

The weights come from ``storageUri`` (``s3://``); KServe's storage initializer downloads them with the
credentials of the predictor's ServiceAccount. That ServiceAccount is rendered here, naming the Secret
that holds ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (created from ``manifests/``; no secret
values pass through this code) and carrying the ``serving.kserve.io/s3-*`` annotations KServe reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from repotune.decoding import check_confidence
from repotune.deploy.uris import ModelSource, from_storage_uri
from repotune.errors import RepotuneError
from repotune.images import HF_RUNTIME, cpu_image, cuda_image
from repotune.kube import DNS_1123_LABEL
from repotune.train.recipe import ResourceSettings

ISVC_API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME_API_VERSION = "serving.kserve.io/v1alpha1"
PREDICTOR_RUNTIME = "repotune-predictor"
"""Name of the namespaced ServingRuntime that runs ``repotune serve``."""
MODEL_FORMAT = "huggingface"
"""Both runtimes load a Hugging Face model folder (config, weights, tokenizer)."""
MODEL_DIR = "/mnt/models"
"""Where KServe's storage initializer puts the downloaded ``storageUri``."""
PREDICTOR_PORT = 8080
PREDICTOR_COMMAND = ("repotune",)
# Every interface, not serve's default 127.0.0.1: KServe's probes and proxy reach the pod's IP. KServe
# fills in `{{.Name}}` with the InferenceService name, the model name clients send. --insecure-no-auth:
# callers reach the pod through KServe's ingress and mesh, which authenticate; serve would refuse a
# non-loopback address without tokens of its own.
PREDICTOR_ARGS = (
    "serve",
    MODEL_DIR,
    "--port",
    str(PREDICTOR_PORT),
    "--host",
    "0.0.0.0",
    "--insecure-no-auth",
    "--model-name",
    "{{.Name}}",
)

# Label and annotation keys: the registered model behind an InferenceService, readable with
# `kubectl get isvc -L repotune.io/model-version`.
LABEL_MODEL_VERSION = "repotune.io/model-version"
LABEL_COMMIT = "repotune.io/commit"
ANNOTATION_MODEL_NAME = "repotune.io/model-name"
ANNOTATION_MODEL_URI = "repotune.io/model-uri"
ANNOTATION_COMMIT = "repotune.io/commit"
MANAGED_BY = {"app.kubernetes.io/managed-by": "repotune", "app.kubernetes.io/part-of": "repotune"}

S3_ENDPOINT_ANNOTATION = "serving.kserve.io/s3-endpoint"
S3_USEHTTPS_ANNOTATION = "serving.kserve.io/s3-usehttps"
S3_REGION_ANNOTATION = "serving.kserve.io/s3-region"

# Kubernetes name rules: an InferenceService name becomes part of Services and host names (RFC 1035
# label); a label value is at most 63 characters of [A-Za-z0-9_.-], alphanumeric at both ends.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class Runtime(StrEnum):
    """Which server runs the model in the predictor pod."""

    HUGGINGFACE = "huggingface"
    REPOTUNE = "repotune"


@dataclass(frozen=True)
class S3Access:
    """How the predictor's storage initializer reaches the object store."""

    service_account: str = "repotune-serving"
    """The predictor pods' ServiceAccount; it names ``secret`` and carries the S3 annotations."""
    secret: str = "repotune-s3"
    """The Secret with ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (created from manifests/)."""
    endpoint: str | None = None
    """``host[:port]`` of an S3-compatible server (MinIO: ``minio-service.kubeflow:9000``); None: AWS."""
    use_https: bool = True
    """Whether the endpoint speaks TLS."""
    region: str | None = None
    """The bucket's region; unset, the server's own."""

    def __post_init__(self) -> None:
        for name in ("service_account", "secret"):
            if not DNS_1123_LABEL.match(getattr(self, name)):
                raise RepotuneError(f"S3 {name} {getattr(self, name)!r} is not a Kubernetes name")
        if self.endpoint is not None and (not self.endpoint or "/" in self.endpoint):
            raise RepotuneError(f"S3 endpoint {self.endpoint!r}: give host[:port], without scheme or path")

    @classmethod
    def from_url(cls, url: str | None, **fields: Any) -> S3Access:
        """From an endpoint URL such as ``S3_ENDPOINT_URL`` (``http://minio:9000``); None means AWS."""
        if not url:
            return cls(**fields)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RepotuneError(f"S3 endpoint URL {url!r}: expected http://host:port or https://host")
        return cls(endpoint=parts.netloc, use_https=parts.scheme == "https", **fields)


@dataclass(frozen=True)
class DeploySettings:
    """What to deploy where, and with what resources."""

    name: str
    """InferenceService name: lowercase letters, digits and '-', starting with a letter."""
    namespace: str
    """Kubernetes namespace (a Kubeflow profile's namespace)."""
    runtime: Runtime = Runtime.HUGGINGFACE
    """KServe's Hugging Face runtime (vLLM on GPUs), or this project's predictor."""
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    """CPU, memory and accelerators of one predictor replica: a recipe's `serving` block, else its
    `resources` (a shipped name or a .yaml path; default 2 CPUs, 8Gi)."""
    canary_percent: int | None = None
    """Share of traffic, 0 to 100, that the new revision gets while the previous one keeps the rest
    (KServe Serverless mode); unset, it gets all traffic once Ready."""
    min_replicas: int = 1
    """Replicas kept running; 0 lets an idle service scale to zero (the next request waits minutes
    for a language model to load)."""
    s3: S3Access = field(default_factory=S3Access)
    """Credentials and endpoint for downloading the weights."""
    retrieval: bool | None = None
    """Whether the ``repotune`` runtime puts context retrieved from the model's index in front of
    completion prompts (``repotune serve --retrieval on|off``): the evaluated arm's setting; unset
    (``auto``), it is taken from the registry for a ``models:/`` URI (the arm the version was registered
    with), else leaves it to the model folder (on when it was trained with retrieved context). KServe's
    Hugging Face runtime (vLLM) knows nothing of the index and serves without it."""
    fim: bool | None = None
    """Whether the ``repotune`` runtime answers a request with a suffix as a FIM prompt, or from the code
    before the cursor alone (``repotune serve --fim on|off``): what the evaluation found the model does
    better (``decision.fim``). None (``auto``) takes it from the registry for a ``models:/`` URI, else
    FIM prompts when the model has FIM tokens."""
    min_confidence: float = 0.0
    """The ``repotune`` runtime ends a greedy completion before its first line less sure than this
    (``repotune serve --min-confidence``; the evaluation report's confidence table gives thresholds and
    what they showed). 0: off. KServe's Hugging Face runtime has no such setting."""

    def __post_init__(self) -> None:
        if not _DNS_1035.match(self.name):
            raise RepotuneError(
                f"--name {self.name!r}: an InferenceService name is at most 63 lowercase letters, digits "
                "and '-', starting with a letter"
            )
        if not DNS_1123_LABEL.match(self.namespace):
            raise RepotuneError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name")
        if self.canary_percent is not None and not 0 <= self.canary_percent <= 100:
            raise RepotuneError(f"--canary {self.canary_percent}: a share of traffic from 0 to 100 percent")
        if self.min_replicas < 0:
            raise RepotuneError("min_replicas must be 0 or more")
        check_confidence(self.min_confidence, "--min-confidence")
        # A KFP parameter arrives as a plain string.
        try:
            object.__setattr__(self, "runtime", Runtime(self.runtime))
        except ValueError:
            choices = ", ".join(r.value for r in Runtime)
            raise RepotuneError(f"--runtime {self.runtime!r}: choose one of {choices}") from None


def _label_safe(value: str | None) -> str | None:
    return value if value is not None and _LABEL_VALUE.match(value) else None


def metadata(name: str, namespace: str, model: ModelSource | None = None) -> dict[str, Any]:
    """Name, namespace, repotune's labels and, for a model, the labels and annotations naming it."""
    labels = dict(MANAGED_BY)
    annotations: dict[str, str] = {}
    if model is not None:
        annotations[ANNOTATION_MODEL_URI] = model.uri
        if model.model_name is not None:
            annotations[ANNOTATION_MODEL_NAME] = model.model_name
        if model.commit is not None:
            annotations[ANNOTATION_COMMIT] = model.commit
        # Labels only where the value is a valid label value; the annotations always carry it.
        if (version := _label_safe(model.version)) is not None:
            labels[LABEL_MODEL_VERSION] = version
        if (commit := _label_safe(model.commit)) is not None:
            labels[LABEL_COMMIT] = commit
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


def render_service_account(settings: DeploySettings) -> dict[str, Any]:
    """The predictor's ServiceAccount: names the credentials Secret and says how to reach the store."""
    s3 = settings.s3
    meta = metadata(s3.service_account, settings.namespace)
    # Only a known endpoint is stated: without one, the Secret's own annotations (manifests/) decide,
    # rather than a default here that could contradict them.
    if s3.endpoint is not None:
        meta["annotations"] = {
            S3_ENDPOINT_ANNOTATION: s3.endpoint,
            S3_USEHTTPS_ANNOTATION: "1" if s3.use_https else "0",
            **({S3_REGION_ANNOTATION: s3.region} if s3.region is not None else {}),
        }
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        # The predictor pods never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "secrets": [{"name": s3.secret}],
    }


def render_serving_runtime(settings: DeploySettings) -> dict[str, Any]:
    """The ``repotune-predictor`` ServingRuntime: ``repotune serve`` on the downloaded model folder."""
    gpus = settings.resources.gpus_per_node > 0
    return {
        "apiVersion": RUNTIME_API_VERSION,
        "kind": "ServingRuntime",
        "metadata": metadata(PREDICTOR_RUNTIME, settings.namespace),
        "spec": {
            # Only InferenceServices that name this runtime use it; the Hugging Face runtime stays the
            # one KServe picks for the format otherwise.
            "supportedModelFormats": [{"name": MODEL_FORMAT, "autoSelect": False}],
            "protocolVersions": ["v1", "v2"],
            "containers": [
                {
                    "name": "kserve-container",
                    "image": cuda_image() if gpus else cpu_image(),
                    "command": list(PREDICTOR_COMMAND),
                    "args": list(PREDICTOR_ARGS),
                    "ports": [{"containerPort": PREDICTOR_PORT, "protocol": "TCP"}],
                    "env": [{"name": "HOME", "value": "/home/repotune"}],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                }
            ],
        },
    }


def render_inference_service(model: ModelSource | str, settings: DeploySettings) -> dict[str, Any]:
    """The InferenceService serving ``model`` (a ``ModelSource``, or an ``s3://`` / ``minio://`` URI)."""
    if isinstance(model, str):
        model = from_storage_uri(model)
    model_spec: dict[str, Any] = {
        # KServe's webhook gives the container this name anyway; saying it keeps apply and live equal.
        "name": "kserve-container",
        "modelFormat": {"name": MODEL_FORMAT},
        "storageUri": model.storage_uri,
        # requests = limits: a model server throttled or evicted under memory pressure drops requests
        "resources": settings.resources.requirements(),
    }
    if settings.runtime is Runtime.HUGGINGFACE:
        model_spec["runtime"] = HF_RUNTIME
        if settings.resources.gpus_per_node == 0:
            # vLLM needs a GPU; on CPU the runtime must use its transformers backend.
            model_spec["args"] = ["--backend=huggingface"]
    else:
        model_spec["runtime"] = PREDICTOR_RUNTIME
        # KServe appends the model's args to the ServingRuntime's (`repotune serve ...`).
        args = [
            arg
            for flag, value in (("--retrieval", settings.retrieval), ("--fim", settings.fim))
            if value is not None
            for arg in (flag, "on" if value else "off")
        ]
        if settings.min_confidence:
            args += ["--min-confidence", f"{settings.min_confidence:g}"]
        if args:
            model_spec["args"] = args
    predictor: dict[str, Any] = {
        "serviceAccountName": settings.s3.service_account,
        "minReplicas": settings.min_replicas,
        "model": model_spec,
    }
    if settings.canary_percent is not None:
        predictor["canaryTrafficPercent"] = settings.canary_percent
    if tolerations := settings.resources.tolerations():
        predictor["tolerations"] = tolerations
    return {
        "apiVersion": ISVC_API_VERSION,
        "kind": "InferenceService",
        "metadata": metadata(settings.name, settings.namespace, model),
        "spec": {"predictor": predictor},
    }


def render_manifests(model: ModelSource | str, settings: DeploySettings) -> list[dict[str, Any]]:
    """Every object a deploy applies, in order: the ServiceAccount, the ServingRuntime (for the
    ``repotune`` runtime) and the InferenceService last, so that what it refers to exists first."""
    objects = [render_service_account(settings)]
    if settings.runtime is Runtime.REPOTUNE:
        objects.append(render_serving_runtime(settings))
    objects.append(render_inference_service(model, settings))
    return objects


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream, as ``kubectl apply -f -`` takes it."""
    import yaml

    return "---\n".join(yaml.safe_dump(obj, sort_keys=False) for obj in objects)
