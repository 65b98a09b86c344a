"""Checkpoints mirrored to object storage, so a pod that loses its disk resumes where it stopped.

Every checkpoint the Trainer saves, once :class:`repotune.train.checkpoints.CheckpointCommit` has
marked it complete, goes to ``{uri}/checkpoint-{step}/`` with the store's ``_COMPLETE`` marker written
last (see ``repotune.storage``); on start, :func:`restore_latest_checkpoint` brings back the newest one
that is complete both in the store and on arrival (the same check a local resume makes).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minio import Minio
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from repotune import storage
from repotune.errors import RepotuneError
from repotune.train import checkpoints


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}/"


class CheckpointUpload(TrainerCallback):
    """Uploads each complete checkpoint right after the Trainer saves it, from the main process only.

    The upload runs inside ``on_save``, so training waits for it: the checkpoint rotation could
    otherwise delete a folder that a background upload is still reading. A failed upload is logged as
    a warning and training goes on (the local checkpoint is still there); :meth:`report` says at the
    end whether the newest checkpoint reached the store, which decides whether the run published.
    """

    def __init__(self, uri: str, log: Callable[[str], None], *, client: Minio | None = None) -> None:
        storage.parse_s3_uri(uri)  # a malformed URI is the user's to fix before training starts
        self.uri = uri
        self.log = log
        # made on first use, so that building the callback on every rank touches no credentials
        self._client = client
        self.uploaded: list[str] = []
        self.failed: dict[str, str] = {}
        self._last: str | None = None

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        folder = Path(args.output_dir) / name
        dest = _join(self.uri, name)
        self._last = name
        try:
            reason = checkpoints.problem(folder)
            if reason is not None:
                raise RepotuneError(f"{folder} is not a complete checkpoint: {reason}")
            if self._client is None:
                self._client = storage.client_from_env()
            marker = storage.upload_dir(folder, dest, client=self._client)
        except (RepotuneError, OSError) as exc:
            self.failed[name] = str(exc)
            self.log(f"warning: checkpoint {name} was not uploaded to {dest} (kept locally): {exc}")
            return
        self.uploaded.append(name)
        self.log(f"uploaded {name} to {dest} ({len(marker['files'])} files, {_size(marker['total_bytes'])})")

    def report(self) -> dict[str, Any]:
        """What reached the store: ``ok`` is false when the newest checkpoint of this run did not."""
        return {
            "checkpoint_uri": self.uri,
            "uploaded": list(self.uploaded),
            "failed": [{"checkpoint": name, "error": error} for name, error in self.failed.items()],
            "ok": self._last is None or self._last in self.uploaded,
        }


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes} bytes"


def restore_latest_checkpoint(
    uri: str,
    local_checkpoints_dir: Path,
    *,
    log: Callable[[str], None] = print,
    client: Minio | None = None,
) -> Path | None:
    """Downloads the newest complete ``checkpoint-N`` under ``uri`` when ``local_checkpoints_dir`` has none.

    Returns the restored folder (``local_checkpoints_dir/checkpoint-N``), or None when nothing was
    downloaded: the local folder already has a complete checkpoint (the run resumes from it), or ``uri``
    holds none. A checkpoint counts when its upload finished (the store's ``_COMPLETE`` marker) and the
    downloaded folder passes :func:`repotune.train.checkpoints.problem`; one that does not is named
    through ``log``, deleted locally, and the next older one is tried. Call it from one process per
    disk: processes sharing a disk would download over each other.
    """
    local_checkpoints_dir = Path(local_checkpoints_dir)
    local = checkpoints.checkpoint_folders(local_checkpoints_dir)
    if any(checkpoints.problem(path) is None for path in local):
        return None
    client = client if client is not None else storage.client_from_env()
    steps = []
    for sub in storage.list_subprefixes(uri, client=client):
        step = checkpoints.step_of(Path(sub.rstrip("/")))
        if step is not None:
            steps.append(step)
    for step in sorted(steps, reverse=True):
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        source = _join(uri, name)
        if not storage.exists_complete(source, client=client):
            log(f"skipping {source}: its upload did not finish")
            continue
        restored = storage.download_dir(source, local_checkpoints_dir / name, client=client)
        reason = checkpoints.problem(restored)
        if reason is None:
            return restored
        log(f"skipping {source}: {reason}")
        shutil.rmtree(restored)
    return None
