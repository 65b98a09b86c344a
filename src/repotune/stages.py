"""The pipeline's stages as plain functions over folders: what each KFP component body calls.

A component (``repotune.components.stages``) only turns artifacts into paths and back; everything a
stage decides (which ref to check out, which metrics to show in the KFP UI, where outputs are
published) is here, importable and tested without KFP.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from repotune.errors import RepotuneError

TRACKING_ENV = "MLFLOW_TRACKING_URI"


def _no_longer_champion(registered: dict[str, str | None]) -> str | None:
    """Why this model must not be deployed although its evaluation promoted it, or None.

    A cached evaluate keeps the decision it made then: re-running the pipeline on an old commit must
    not put that commit's model back in front of users when a newer one has become champion since.
    """
    tracking_uri = os.environ.get(TRACKING_ENV)
    version, name = registered.get("version"), registered.get("model_name")
    if not (tracking_uri and version and name):
        return None
    from repotune.evaluate.registry import Registry

    champion = Registry(tracking_uri, name).champion()
    if champion is None or str(champion.version) != str(version):
        now = f"version {champion.version} is" if champion is not None else "no version is"
        return f"{name} version {version} is no longer the champion ({now}); the live service stays"
    return None


def _copy_file(source: Path, dest: Path) -> None:
    if not source.is_file():
        raise RepotuneError(f"{source} was not written")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)


def deploy(
    model_uri: str,
    recipe_text: str,
    name: str,
    namespace: str,
    runtime: str,
    apply: bool,
    registered: dict[str, str],
    manifest: Path,
) -> str:
    """Render the InferenceService for the promoted model into ``manifest`` and, with ``apply``, roll it
    out (server-side apply, wait for Ready, roll back on failure); returns the endpoint URL or "".

    KServe downloads the weights from ``storageUri``, so the model must be in S3: on a cluster it is
    (KFP's ``minio://`` artifact URI, or the published copy); on this machine only when the run
    published its outputs (``--artifacts s3://...``). Otherwise the manifest says why nothing was rendered.
    """
    import dataclasses

    from repotune import deploy as serving
    from repotune.storage import ENDPOINT_VARS

    if not model_uri.startswith(("s3://", "minio://")):
        note = (
            f"# No InferenceService rendered: the model is at {model_uri}, and KServe can only download\n"
            "# it from object storage. Run with --artifacts s3://BUCKET/PREFIX to publish it there.\n"
        )
        manifest.write_text(note)
        print(note.strip())
        return ""
    stale = _no_longer_champion(registered)
    if stale:
        manifest.write_text(f"# Nothing deployed: {stale}\n")
        print(stale)
        return ""
    from repotune.train.recipe import resolve_recipe

    recipe, _ = resolve_recipe(recipe_text)
    model = dataclasses.replace(serving.from_storage_uri(model_uri), **registered)
    endpoint = next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)
    settings = serving.DeploySettings(
        name=name,
        namespace=namespace,
        runtime=runtime,
        resources=recipe.resources,
        s3=serving.S3Access.from_url(endpoint),
    )
    manifest.write_text(serving.to_yaml(serving.render_manifests(model, settings)))
    print(f"rendered the InferenceService {namespace}/{name} for {model.storage_uri}")
    if not apply:
        return ""
    result = serving.deploy(model, settings, tracking_uri=os.environ.get(TRACKING_ENV) or None, log=print)
    return result.url or ""
