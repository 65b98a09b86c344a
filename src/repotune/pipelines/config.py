"""Settings of ``repotune compile`` and ``repotune submit``: frozen dataclasses with a docstring per field,
from which the command line builds its options (:mod:`repotune.options`). No KFP import here, so the
command line can name these settings without loading the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repotune import images
from repotune.decoding import check_confidence
from repotune.errors import RepotuneError
from repotune.kube import DNS_1123_LABEL
from repotune.pipelines.credentials import ARTIFACTS_ROOT, SERVICE_ACCOUNT
from repotune.sources.settings import ServiceSettings
from repotune.train import DEFAULT_RECIPE


@dataclass(frozen=True)
class ImageSettings:
    """The images named on the command line (see :func:`repotune.images.for_run`)."""

    image: str | None = None
    """Component image REGISTRY/NAME:TAG (default: REPOTUNE_IMAGE, else the project's release image)."""
    cuda_image: str | None = None
    """Image of GPU steps (default: REPOTUNE_CUDA_IMAGE, else NAME-cuda:TAG beside --image)."""

    def __post_init__(self) -> None:
        self.resolve()  # a moving tag or an untagged name fails here, naming the flag

    def resolve(self) -> images.Images:
        return images.for_run(self.image, self.cuda_image)


@dataclass(frozen=True)
class CompileConfig:
    output: Path = Path("pipeline.yaml")
    """IR YAML file to write."""
    recipe: str = DEFAULT_RECIPE
    """Recipe the train step's image, resources and parameter defaults come from (name or .yaml path)."""
    images: ImageSettings = field(default_factory=ImageSettings)
    """The images the steps run."""

    def __post_init__(self) -> None:
        # KFP writes the pipeline's platform settings (Kubernetes secrets, volumes) only into YAML
        if self.output.suffix not in (".yaml", ".yml") or self.output.is_dir():
            raise RepotuneError(f"-o {self.output}: the compiled pipeline is a .yaml file; give a file name")


@dataclass(frozen=True)
class SubmitConfig:
    source: str | tuple[str, ...]
    """A git URL or github:OWNER/REPO the cluster can reach (or an s3:// archive in its store), and
    any more sources for the same dataset (confluence:SPACE, jira:PROJECT, notion:[ID], ...)."""
    host: str
    """KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888 (a bearer token comes from KFP_TOKEN)."""
    recipe: str = DEFAULT_RECIPE
    """Recipe: a shipped name or a .yaml path."""
    ref: str | None = None
    """Branch, tag or commit of a git URL."""
    include: str | None = None
    """Record kinds, comma-separated: code,docs,commits,issues,wiki,diagrams."""
    training: dict[str, Any] = field(default_factory=dict)
    """Recipe settings by dotted key (`--set max_steps=10 --set data.seq_len=512`)."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """Evaluation settings (`--eval line_samples=30`; `--eval policy.min_relative_gain=0.05` for the
    promotion policy)."""
    artifacts_root: str = ARTIFACTS_ROOT
    """s3:// prefix, in the store of the Secret repotune-s3, for each stage's outputs and the model
    KServe serves; empty: KFP's artifact store only (serving from there needs repotune-s3 to name it)."""
    model_name: str = "repotune"
    """Registered model name in MLflow: one per project."""
    namespace: str = "repotune"
    """Namespace the InferenceService is deployed into."""
    deploy_name: str = "repotune"
    """Name of the InferenceService the promoted model is served as."""
    min_confidence: float = 0.0
    """The ``repotune`` runtime ends a greedy completion before its first line less sure than this
    (``repotune deploy --min-confidence``; the evaluation report gives thresholds); 0: off."""
    services: ServiceSettings = field(default_factory=ServiceSettings)
    """Where the wiki and tracker sources are and what to read of them (the ``source_settings``)."""
    kfp_namespace: str | None = None
    """Kubeflow profile namespace the run belongs to (multi-user Kubeflow); unset for standalone KFP."""
    run_name: str | None = None
    """Run name (default: repotune-<source>-<UTC time>)."""
    experiment: str = "repotune"
    """KFP experiment the run is filed under."""
    service_account: str = SERVICE_ACCOUNT
    """ServiceAccount every step of the run uses; empty for KFP's default (pipeline-runner)."""
    skip_version_check: bool = False
    """Submit even to a KFP backend older than the pipeline needs, or one that hides its version."""
    images: ImageSettings = field(default_factory=ImageSettings)
    """The images the steps run."""

    def __post_init__(self) -> None:
        from repotune.sources.git import strip_credentials
        from repotune.sources.slug import is_remote

        if not self.host:
            raise RepotuneError("--host (or KFP_HOST) is required: the KFP API endpoint")
        if not isinstance(self.source, str):
            sources = tuple(self.source)
            if not sources:
                raise RepotuneError("give at least one source")
            object.__setattr__(self, "source", sources[0] if len(sources) == 1 else sources)
        for spec in self.sources:
            if not is_remote(spec):
                raise RepotuneError(
                    f"source {spec!r} is not a place the cluster can read: give a git URL it can reach, "
                    "github:OWNER/REPO or an s3:// archive (`repotune run` trains on a local folder here)"
                )
            if "://" in spec and "@" in spec.split("://", 1)[1].split("/", 1)[0]:
                # a run's parameters are shown in the KFP UI and kept with the run
                raise RepotuneError(
                    f"source {strip_credentials(spec)}: the URL carries credentials, which would become a "
                    "run parameter; give the plain URL and the token in the Secret repotune-github "
                    "(GITHUB_TOKEN, sent to GitHub's git only)"
                )
        if not DNS_1123_LABEL.match(self.namespace):
            raise RepotuneError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name")
        if not DNS_1123_LABEL.match(self.deploy_name):
            raise RepotuneError(f"--deploy-name {self.deploy_name!r} is not a Kubernetes resource name")
        check_confidence(self.min_confidence, "--min-confidence")
        if self.kfp_namespace is not None and not DNS_1123_LABEL.match(self.kfp_namespace):
            raise RepotuneError(f"--kfp-namespace {self.kfp_namespace!r} is not a Kubernetes namespace name")
        if self.artifacts_root and not self.artifacts_root.startswith("s3://"):
            raise RepotuneError(
                f"--artifacts {self.artifacts_root!r}: expected s3://BUCKET/PREFIX in the store of the "
                "Secret repotune-s3 (the cluster cannot publish to a folder of this machine)"
            )
        from repotune.records import parse_include

        parse_include(self.include)  # a wrong kind fails now, not in the cluster's ingest step

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source: the pipeline's ``source``, then its ``more_sources``."""
        return (self.source,) if isinstance(self.source, str) else self.source

    def name(self) -> str:
        """The run name: given, or repotune-<source>-<UTC time>."""
        from repotune.sources.slug import source_slug

        first = source_slug(self.sources[0])
        return self.run_name or f"repotune-{first}-{datetime.now(UTC):%Y%m%d-%H%M%S}"

    def arguments(self) -> dict[str, Any]:
        """The pipeline's parameters for this run (the rest keep the compiled defaults)."""
        more = {"more_sources": list(self.sources[1:])} if len(self.sources) > 1 else {}
        optional = {
            "include": self.include or "",
            "deploy_min_confidence": self.min_confidence,
            "evaluation": dict(self.evaluation),
            "source_settings": self.services.parameters(),
        }
        return {
            "source": self.sources[0],
            **more,
            "ref": self.ref or "",
            "training": dict(self.training),
            **{name: value for name, value in optional.items() if value},
            "artifacts_root": self.artifacts_root,
            "model_name": self.model_name,
            "namespace": self.namespace,
            "deploy_name": self.deploy_name,
        }
