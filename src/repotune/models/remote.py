"""Base models that live elsewhere: a Hugging Face Hub id, or a prefix in object storage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from repotune import storage
from repotune.errors import RepotuneError
from repotune.models.cache import build_once

log = logging.getLogger(__name__)

# Seconds to wait for the Hub before deciding it is unreachable; huggingface_hub has no timeout on
# its metadata calls, so an unroutable network could otherwise hang for minutes.
HUB_TIMEOUT_S = 10.0

# Files a model folder needs from the Hub; skips duplicate .bin/.pth/ONNX/GGUF copies many repos ship.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]

S3_MANIFEST = ".repotune-s3.json"


def _hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment is read here on every call.
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (flag or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags
    )


def download_hub(repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in the Hugging Face cache (``HF_HOME``), downloaded if needed."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    advice = "pass a local model folder (or `smollm2-135m`), or set up network access to the Hub"
    if _hub_offline():
        try:
            folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
        except Exception as err:
            raise RepotuneError(
                f"base model {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"{advice}"
            ) from err
        return _checked_hub_folder(repo_id, folder)
    try:
        # An explicit timeout here; snapshot_download's own metadata calls have none. Passing the
        # resolved commit on makes snapshot_download skip that call.
        revision = HfApi().repo_info(repo_id, timeout=HUB_TIMEOUT_S).sha
        folder = Path(
            snapshot_download(
                repo_id, revision=revision, allow_patterns=HUB_PATTERNS, etag_timeout=HUB_TIMEOUT_S
            )
        )
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise RepotuneError(
            f"base model {repo_id} was not found on the Hugging Face Hub or needs a token (HF_TOKEN); "
            f"check the id, or {advice}"
        ) from err
    except Exception as err:
        with contextlib.suppress(Exception):
            cached = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=HUB_PATTERNS))
            log.warning("the Hub is unreachable (%s); using the cached copy of %s", err, repo_id)
            return _checked_hub_folder(repo_id, cached)
        raise RepotuneError(
            f"cannot download base model {repo_id} from the Hugging Face Hub ({type(err).__name__}) and "
            f"there is no local folder of that name; {advice}"
        ) from err
    return _checked_hub_folder(repo_id, folder)


def _checked_hub_folder(repo_id: str, folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise RepotuneError(f"Hub repository {repo_id} has no config.json; is it a transformers model?")
    if not any(folder.glob("*.safetensors")):
        raise RepotuneError(
            f"Hub repository {repo_id} has no safetensors weights; convert it and pass the folder"
        )
    return folder


def download_s3(uri: str, cache: Path) -> Path:
    """The objects under an s3:// prefix, copied into the cache once and reused while their ETags match.

    The copy goes through :mod:`repotune.storage` (its retries, and its ``_COMPLETE`` marker where the
    prefix has one: then exactly the files the marker lists are fetched and their sizes checked).
    """
    bucket, prefix = storage.parse_s3_uri(uri)
    prefix = prefix.strip("/")
    endpoint = storage.endpoint_url() or "AWS S3"
    objects = {rel: etag for rel, etag in storage.prefix_etags(uri).items() if rel != storage.MARKER}
    if not objects:
        raise RepotuneError(f"no objects under {uri} at {endpoint}")
    if "config.json" not in objects:
        raise RepotuneError(f"{uri} has no config.json; point at the prefix that holds the model folder")

    safe_key = re.sub(r"[^\w.-]+", "_", prefix) or "_root"
    # Keyed by endpoint, bucket and prefix: s3://b/p and s3://b/p/ share a copy, two servers do not.
    identity = f"{endpoint}|{bucket}|{prefix}".encode()
    final = cache / "s3" / bucket / f"{safe_key}-{hashlib.sha256(identity).hexdigest()[:8]}"
    final.parent.mkdir(parents=True, exist_ok=True)

    def is_current(folder: Path) -> bool:
        try:
            return json.loads((folder / S3_MANIFEST).read_text(encoding="utf-8"))["objects"] == objects
        except (OSError, ValueError, KeyError):
            return False

    def download(dest: Path) -> None:
        storage.download_dir(uri, dest, require_complete=False)
        manifest = {"uri": uri, "objects": objects}
        (dest / S3_MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    return build_once(final, download, is_current)
