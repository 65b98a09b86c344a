"""Model URIs as a deploy takes them, turned into the ``s3://`` URI KServe downloads from.

- ``s3://bucket/prefix``: as is.
- ``minio://bucket/prefix``: a KFP artifact URI; the same object in S3 terms.
- ``models:/NAME@ALIAS`` (``models:/NAME@champion``) or ``models:/NAME/VERSION``: looked up in the
  MLflow model registry. KServe gets the version's Hugging Face folder (``Registry``'s ``files_uri``:
  inside a logged MLflow model, ``.../models/<model id>/artifacts/artifacts/model``). A server that
  proxies artifacts stores them as ``mlflow-artifacts:/PATH``; they live at ``ARTIFACTS_S3/PATH``, where
  ``ARTIFACTS_S3`` is the server's ``--artifacts-destination`` (``REPOTUNE_MLFLOW_ARTIFACTS_S3``, e.g.
  ``s3://mlflow/artifacts``).

A local folder cannot be deployed to a cluster: it has to be uploaded first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from repotune.errors import RepotuneError
from repotune.evaluate.registry import COMMIT_TAG, registered_fim, registered_retrieval
from repotune.storage import MINIO_SCHEME, minio_to_s3, parse_s3_uri

ARTIFACTS_S3_ENV = "REPOTUNE_MLFLOW_ARTIFACTS_S3"
"""The MLflow server's ``--artifacts-destination`` (an ``s3://`` URI), for ``mlflow-artifacts:/`` sources."""
MODELS_SCHEME = "models:/"
PROXIED_SCHEME = "mlflow-artifacts:"

if TYPE_CHECKING:
    from mlflow import MlflowClient

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ModelSource:
    """The weights to serve, and what the registry knows about them."""

    uri: str
    """The URI as the user gave it (``models:/NAME@champion``, ``minio://...``, ``s3://...``)."""
    storage_uri: str
    """Where KServe downloads the weights from: always ``s3://``."""
    model_name: str | None = None
    """Registered model name, when the URI came through the MLflow registry."""
    version: str | None = None
    """Registered version (the alias resolved to a number), when known."""
    commit: str | None = None
    """Commit SHA of the source repository the model was trained on, when known."""
    retrieval: bool | None = None
    """Whether the registered version is to be served with retrieved context (the arm its evaluation
    chose, the registry's ``repotune.retrieval`` tag); None when the registry does not say."""
    fim: bool | None = None
    """Whether the registered version answers a suffix with FIM prompts (its evaluation's
    ``decision.fim``, the registry's ``repotune.fim`` tag); None when the registry does not say."""

    def __post_init__(self) -> None:
        if not self.storage_uri.startswith("s3://"):
            raise RepotuneError(f"storage URI {self.storage_uri!r} must be s3://")


def from_storage_uri(uri: str) -> ModelSource:
    """A ``ModelSource`` for an ``s3://`` or ``minio://`` URI (no registry involved)."""
    if uri.startswith(("s3://", MINIO_SCHEME)):
        _, prefix = parse_s3_uri(uri)  # a clear error for a malformed bucket name
        if not prefix.strip("/"):
            # KServe would download the whole bucket as the model
            raise RepotuneError(f"{uri} is a whole bucket; give the model's folder in it, s3://BUCKET/PREFIX")
        return ModelSource(uri=uri, storage_uri=minio_to_s3(uri))
    return ModelSource(uri=uri, storage_uri=_refuse(uri))


def resolve_model_uri(
    uri: str, *, tracking_uri: str | None = None, artifacts_s3: str | None = None
) -> ModelSource:
    """Where ``uri`` lives in S3, and, for ``models:/`` URIs, which registered version it is.

    ``tracking_uri`` is needed for ``models:/``; ``artifacts_s3`` defaults to the environment's
    ``REPOTUNE_MLFLOW_ARTIFACTS_S3``.
    """
    if not uri.startswith(MODELS_SCHEME):
        return from_storage_uri(uri)
    match = _MODEL_URI.match(uri)
    if match is None:
        raise RepotuneError(f"{uri!r}: expected models:/NAME@ALIAS (e.g. @champion) or models:/NAME/VERSION")
    if not tracking_uri:
        raise RepotuneError(f"{uri}: a models:/ URI needs the MLflow registry; set --tracking-uri")
    name = match["name"]
    version, files_uri, tags = _lookup(tracking_uri, name, match["alias"], match["version"])
    return ModelSource(
        uri=uri,
        storage_uri=artifact_to_s3(files_uri, artifacts_s3 or os.environ.get(ARTIFACTS_S3_ENV)),
        model_name=name,
        version=version,
        commit=tags.get(COMMIT_TAG),
        retrieval=registered_retrieval(tags),
        fim=registered_fim(tags),
    )


def artifact_to_s3(source: str, artifacts_s3: str | None) -> str:
    """A registered version's model folder (``files_uri``) as an ``s3://`` URI.

    ``mlflow-artifacts:/1/RUN/artifacts/model`` (or ``mlflow-artifacts://host:port/1/...``) becomes
    ``ARTIFACTS_S3/1/RUN/artifacts/model``; ``s3://`` and ``minio://`` sources pass through.
    """
    if source.startswith(("s3://", MINIO_SCHEME)):
        return minio_to_s3(source)
    if source.startswith(PROXIED_SCHEME):
        if not artifacts_s3:
            raise RepotuneError(
                f"the registered model lives at {source}, behind the MLflow server's artifact proxy; set "
                f"{ARTIFACTS_S3_ENV} (or --artifacts-s3) to the server's --artifacts-destination, e.g. "
                "s3://mlflow/artifacts, so that KServe can download it from S3"
            )
        root = minio_to_s3(artifacts_s3) if artifacts_s3.startswith(MINIO_SCHEME) else artifacts_s3
        parse_s3_uri(root)
        path = urlsplit(source).path.strip("/")
        return f"{root.rstrip('/')}/{path}"
    raise RepotuneError(
        f"the registered model lives at {source}, which KServe cannot download; register it from an "
        "MLflow server whose artifacts are in S3 (mlflow server --artifacts-destination s3://...)"
    )


def _lookup(
    tracking_uri: str, name: str, alias: str | None, version: str | None
) -> tuple[str, str, dict[str, str]]:
    """(version, files_uri, tags) of the registered version that the alias or number names."""
    from mlflow.exceptions import MlflowException

    from repotune.evaluate.registry import Registry

    registry = Registry(tracking_uri, name)
    target = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    try:
        if alias == "champion":
            champion = registry.champion()
            if champion is None:
                raise RepotuneError(f"{target}: {name} has no champion yet at {tracking_uri}")
            return champion.version, champion.files_uri, dict(champion.tags)
        client = registry_client(tracking_uri)
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, str(version))
        )
    except MlflowException as err:
        raise RepotuneError(
            f"{target} not found in the MLflow registry at {tracking_uri}: {err.message}"
        ) from err
    info = registry.version_info(str(found.version))
    return info.version, info.files_uri, dict(info.tags)


def registry_client(tracking_uri: str) -> MlflowClient:
    """An ``MlflowClient`` for the registry at ``tracking_uri``, with repotune's short HTTP timeouts."""
    from mlflow import MlflowClient

    from repotune.tracking import mlflow_env_defaults

    mlflow_env_defaults()
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _refuse(uri: str) -> str:
    if "://" in uri and not uri.startswith("file://"):
        raise RepotuneError(f"{uri!r}: expected s3://, minio://, models:/NAME@ALIAS or models:/NAME/VERSION")
    raise RepotuneError(
        f"{uri} is a local path; a cluster cannot read it. Upload the model folder first (e.g. "
        "repotune.storage.upload_dir, or `mc cp --recursive`) and deploy its s3:// URI"
    )
