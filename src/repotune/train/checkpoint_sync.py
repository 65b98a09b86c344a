"""Checkpoints mirrored to object storage, so a pod that loses its disk resumes where it stopped.

Every checkpoint the Trainer saves goes to ``{uri}/checkpoint-{step}/`` with its ``_COMPLETE`` marker
written last (see ``repotune.storage``); on start, :func:`restore_latest_checkpoint` brings back the
newest complete one when the local folder has none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from minio import Minio
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from repotune import storage
from repotune.errors import RepotuneError

# the Trainer's own naming (transformers.trainer_utils.get_last_checkpoint uses the same pattern)
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def _join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}/"


class CheckpointUpload(TrainerCallback):
    """Uploads each checkpoint right after the Trainer saves it, from the main process only.

    The upload runs inside ``on_save``, so training waits for it: the Trainer's checkpoint rotation
    (``save_total_limit``) could otherwise delete a folder that a background upload is still reading.
    A failed upload is logged as a warning and training goes on; the local checkpoint is still there.
    """

    def __init__(self, uri: str, log: Callable[[str], None], *, client: Minio | None = None) -> None:
        storage.parse_s3_uri(uri)  # a malformed URI is the user's to fix before training starts
        self.uri = uri
        self.log = log
        # made on first use, so that building the callback on every rank touches no credentials
        self._client = client

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        folder = Path(args.output_dir) / name
        dest = _join(self.uri, name)
        try:
            if not folder.is_dir():
                raise RepotuneError(f"{folder} does not exist")
            if self._client is None:
                self._client = storage.client_from_env()
            marker = storage.upload_dir(folder, dest, client=self._client)
        except (RepotuneError, OSError) as exc:
            self.log(f"warning: checkpoint {name} was not uploaded to {dest} (kept locally): {exc}")
            return
        self.log(f"uploaded {name} to {dest} ({len(marker['files'])} files, {_size(marker['total_bytes'])})")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes} bytes"


def local_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders directly under ``folder``, oldest (lowest N) first."""
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and _CHECKPOINT.match(path.name)]
    return sorted(found, key=lambda path: int(_CHECKPOINT.match(path.name)[1]))


def restore_latest_checkpoint(
    uri: str, local_checkpoints_dir: Path, *, client: Minio | None = None
) -> Path | None:
    """Downloads the newest complete ``checkpoint-N`` under ``uri`` when ``local_checkpoints_dir`` has none.

    Returns the restored folder (``local_checkpoints_dir/checkpoint-N``), or None when nothing was
    downloaded: the local folder already has a checkpoint (the Trainer resumes from it by itself), or
    ``uri`` holds no complete one. Checkpoints without a ``_COMPLETE`` marker (an upload cut short) are
    skipped. Call it from one process per disk: ranks sharing a disk would download over each other.
    """
    local_checkpoints_dir = Path(local_checkpoints_dir)
    if local_checkpoints(local_checkpoints_dir):
        return None
    client = client if client is not None else storage.client_from_env()
    steps = []
    for sub in storage.list_subprefixes(uri, client=client):
        match = _CHECKPOINT.match(sub.rstrip("/"))
        if match:
            steps.append(int(match[1]))
    for step in sorted(steps, reverse=True):
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        source = _join(uri, name)
        if storage.exists_complete(source, client=client):
            return storage.download_dir(source, local_checkpoints_dir / name, client=client)
    return None
