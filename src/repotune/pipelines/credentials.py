"""Which credentials a pipeline step needs for what its run asked, and a one-line refusal when one is missing.

On a cluster a step gets its credentials from Kubernetes Secrets mapped into its environment
(:data:`SECRETS`, templates in ``manifests/secrets/``). The mappings are optional, so that a run that
needs no GitHub token or MLflow starts without those Secrets; the price is that a step whose Secret is
missing starts anyway, without the variable. So each step, first thing, asks :func:`needs` what its
parameters call for (an ``s3://`` artifacts root, MLflow tracking, a ``github:`` source) and
:func:`require` refuses, naming the Secret and its key, when the environment lacks one: a run fails in
its first step that needs the credential, in one line, instead of registering nothing or failing an
hour later. ``repotune run`` asks the same questions of this machine's environment before the first step.

    require("train", needs("train", artifacts_root="s3://runs/x", tracking=True))

No KFP here: the component shims and the local runner import this, and it is tested on its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from repotune.errors import RepotuneError

SERVICE_ACCOUNT = "repotune-pipeline-runner"
"""The ServiceAccount a run's pods use (manifests/pipeline-namespace/rbac.yaml). It must exist in the
namespace the steps run in: ``kubeflow`` for standalone KFP, the profile's namespace for multi-user
Kubeflow. KFP sets it per run, not per step (kfp-kubernetes has no per-task service account): ``repotune
submit`` names it, and runs started from the KFP UI name it in the run form's "Service Account" field."""

ARTIFACTS_ROOT = "s3://repotune/runs"
"""Where a run publishes each stage's outputs by default, through the ``repotune-s3`` Secret: the
``repotune`` bucket the manifests' MinIO makes (an external store is told to make it too). The deploy
step hands KServe the published model, which it fetches with the same Secret; KFP's own artifact
store is another store with other keys."""

Step = Literal[
    "resolve-source",
    "ingest",
    "clean",
    "retrieval-index",
    "score-base",
    "train",
    "evaluate",
    "deploy",
    "export",
]
STEPS: tuple[Step, ...] = (
    "resolve-source", "ingest", "clean", "retrieval-index", "score-base", "train", "evaluate", "deploy",
    "export",
)  # fmt: skip


@dataclass(frozen=True)
class Secret:
    """A Kubernetes Secret the steps read, each key becoming the environment variable of its name."""

    name: str
    """The Secret's name, as ``manifests/secrets/<template>`` creates it."""
    keys: tuple[str, ...]
    """Every key mapped into a step's environment (absent keys are allowed: the mapping is optional)."""
    template: str
    """The folder under ``manifests/secrets/`` with its kustomization and ``.env.example``."""

    @property
    def env(self) -> dict[str, str]:
        """Key to environment variable, as ``kfp.kubernetes.use_secret_as_env`` takes it."""
        return {key: key for key in self.keys}


S3 = Secret(
    "repotune-s3", ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_REGION"), "s3"
)
MLFLOW = Secret(
    "repotune-mlflow",
    ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "mlflow",
)
# GITHUB_SERVER_URL: the GitHub Enterprise server git sends the token to (repotune.sources.git)
GITHUB = Secret("repotune-github", ("GITHUB_TOKEN", "GITHUB_SERVER_URL"), "github")
# the wiki and tracker sources read these (repotune.sources.atlassian.credentials, sources.notion)
CONFLUENCE = Secret(
    "repotune-confluence",
    ("CONFLUENCE_URL", "CONFLUENCE_USER", "CONFLUENCE_TOKEN", "CONFLUENCE_PAT"),
    "confluence",
)
JIRA = Secret("repotune-jira", ("JIRA_URL", "JIRA_USER", "JIRA_TOKEN", "JIRA_PAT"), "jira")
NOTION = Secret("repotune-notion", ("NOTION_TOKEN",), "notion")
# the optional Hugging Face Hub export after a promotion (repotune.export)
HF = Secret("repotune-hf", ("HF_TOKEN",), "hf")
SECRETS: tuple[Secret, ...] = (S3, MLFLOW, GITHUB, CONFLUENCE, JIRA, NOTION, HF)

# Which Secrets each step has mapped into its environment (the pipeline wires exactly these).
STEP_SECRETS: dict[Step, tuple[Secret, ...]] = {
    # s3:// archives by ETag, services by newest edit, a private GitHub repository's head (GITHUB_TOKEN)
    "resolve-source": (S3, GITHUB, CONFLUENCE, JIRA, NOTION),
    "ingest": (S3, GITHUB, CONFLUENCE, JIRA, NOTION),
    "clean": (S3,),
    "retrieval-index": (S3,),
    "score-base": (S3,),  # a base model given as an s3:// folder
    "train": (S3, MLFLOW),
    "evaluate": (S3, MLFLOW),
    "deploy": (S3, MLFLOW),
    "export": (HF,),
}

# Services a source prefix reads, and the keys without which nothing can be read. GitHub allows 60
# unauthenticated API requests an hour, shared by every pod behind the cluster's egress address: less
# than one repository's issues and their comments, so a github: source needs a token rather than
# failing on the rate limit minutes into ingest. Confluence and Jira sites may allow anonymous reads,
# so only their URL is required; Notion has no anonymous API.
_SOURCE_NEEDS: dict[str, tuple[Secret, tuple[str, ...], tuple[Step, ...]]] = {
    "github:": (GITHUB, ("GITHUB_TOKEN",), ("ingest",)),
    "confluence:": (CONFLUENCE, ("CONFLUENCE_URL",), ("resolve-source", "ingest")),
    "jira:": (JIRA, ("JIRA_URL",), ("resolve-source", "ingest")),
    "notion:": (NOTION, ("NOTION_TOKEN",), ("resolve-source", "ingest")),
}
_S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class Need:
    """Keys of one Secret that a step cannot do without, and what in the run asked for them."""

    secret: Secret
    keys: tuple[str, ...]
    """Every one of them must be set (and non-empty)."""
    reason: str
    """What asked for them, for the message: ``the artifacts root s3://runs/x``."""


def _is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "minio://"))


def needs(
    step: Step, *, source: str = "", artifacts_root: str = "", tracking: bool = False, hub_repo: str = ""
) -> list[Need]:
    """What ``step`` needs given the run's ``source``, ``artifacts_root`` (publishing), ``tracking``
    (MLflow tracking and registry asked for) and ``hub_repo`` (a Hugging Face Hub export asked for)."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    found: list[Need] = []
    for prefix, (secret, keys, steps) in _SOURCE_NEEDS.items():
        if source.startswith(prefix) and step in steps:
            why = " (GitHub allows 60 requests an hour without a token)" if secret is GITHUB else ""
            found.append(Need(secret, keys, f"the source {source}{why}"))
    if _is_s3(source) and step in ("resolve-source", "ingest"):
        found.append(Need(S3, _S3_KEYS, f"the source {source}"))
    if _is_s3(artifacts_root) and step in ("ingest", "clean", "retrieval-index", "train", "evaluate"):
        found.append(Need(S3, _S3_KEYS, f"the artifacts root {artifacts_root}"))
    if tracking and step in ("train", "evaluate", "deploy"):
        found.append(Need(MLFLOW, ("MLFLOW_TRACKING_URI",), "MLflow tracking (the tracking parameter)"))
    if hub_repo and step == "export":
        found.append(Need(HF, ("HF_TOKEN",), f"the Hugging Face Hub export to {hub_repo}"))
    return found


def require_for_sources(
    step: Step, sources: str | tuple[str, ...], given: Mapping[str, str], *, artifacts_root: str = ""
) -> None:
    """:func:`require` for a step that reads ``sources`` (one or several), counting ``given`` (the sites
    a run's settings name, :meth:`repotune.sources.settings.ServiceSettings.environment`) as set."""
    specs = (sources,) if isinstance(sources, str) else sources
    found = [need for spec in specs for need in needs(step, source=spec)]
    found += needs(step, artifacts_root=artifacts_root)
    require(step, found, {**os.environ, **given})


def missing(
    found: Iterable[Need], env: Mapping[str, str] | None = None
) -> list[tuple[Need, tuple[str, ...]]]:
    """The needs ``env`` (default: this process's environment) does not meet, with their unset keys."""
    env = os.environ if env is None else env
    gaps = []
    for need in found:
        unset = tuple(key for key in need.keys if not env.get(key))
        if unset:
            gaps.append((need, unset))
    return gaps


def message(step: str, need: Need, unset: tuple[str, ...], *, cluster: bool = True) -> str:
    """One line that names the step, what asked, the variables, and (``cluster``) the Secret and keys
    they come from on a cluster."""
    keys = " and ".join(unset)
    text = f"{step}: {need.reason} needs {keys}, which {'are' if len(unset) > 1 else 'is'} not set"
    if not cluster:
        return f"{text} in this environment"
    keys_named = f"key{'s' if len(unset) > 1 else ''} {', '.join(unset)}"
    return (
        f"{text}: create the Kubernetes Secret {need.secret.name} with the {keys_named} in the namespace "
        f"the steps run in (kubectl apply -n NAMESPACE -k manifests/secrets/{need.secret.template})"
    )


def in_cluster(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs in a Kubernetes pod (the kubelet sets ``KUBERNETES_SERVICE_HOST`` in
    every container), where credentials come from Secrets rather than from a person's shell."""
    return bool((os.environ if env is None else env).get("KUBERNETES_SERVICE_HOST"))


def require(
    step: str, found: Iterable[Need], env: Mapping[str, str] | None = None, *, cluster: bool | None = None
) -> None:
    """Raise a one-line ``RepotuneError`` for the first need ``env`` does not meet (see :func:`message`;
    ``cluster`` None: :func:`in_cluster`)."""
    gaps = missing(found, env)
    if gaps:
        raise RepotuneError(message(step, *gaps[0], cluster=in_cluster(env) if cluster is None else cluster))
