"""Checkpoints mirrored to object storage, so a pod that loses its disk resumes where it stopped.

Every checkpoint the Trainer saves, once :class:`repotune.train.checkpoints.CheckpointCommit` has
marked it complete, goes to ``{uri}/checkpoint-{step}/`` with the store's ``_COMPLETE`` marker written
last (see ``repotune.storage``); on start, :func:`restore_latest_checkpoint` brings back the newest one
that is complete both in the store and on arrival (the same check a local resume makes).

The store is rotated as the disk is (``save_total_limit``): once a checkpoint has reached it, all but
the newest ``keep`` complete checkpoints there are deleted, and so are older uploads that never
finished. A full fine-tuning checkpoint of a 135M model is 1.6 GB (weights and both AdamW moments), so
a run that saved every 50 steps would otherwise leave gigabytes behind per run.
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


def _checkpoint(uri: str, step: int) -> str:
    return _join(uri, f"{PREFIX_CHECKPOINT_DIR}-{step}")


class CheckpointUpload(TrainerCallback):
    """Uploads each complete checkpoint right after the Trainer saves it, from the main process only.

    The upload runs inside ``on_save``, so training waits for it: the checkpoint rotation could
    otherwise delete a folder that a background upload is still reading. A failed upload is logged as
    a warning and training goes on (the local checkpoint is still there); :meth:`report` says at the
    end whether the newest checkpoint reached the store, which decides whether the run published.

    With ``keep``, each upload that succeeds is followed by :meth:`rotate`. With ``run`` (the run's
    identity, as ``checkpoints.write_run`` records it), a checkpoint in the store that records another
    run is never deleted: ``checkpoint_uri`` may be a prefix that several runs were pointed at.
    """

    def __init__(
        self,
        uri: str,
        log: Callable[[str], None],
        *,
        keep: int | None = None,
        run: dict[str, Any] | None = None,
        client: Minio | None = None,
    ) -> None:
        storage.parse_s3_uri(uri)  # a malformed URI is the user's to fix before training starts
        if keep is not None and keep < 1:
            raise RepotuneError(f"keep must be at least 1 (got {keep})")
        self.uri = uri
        self.log = log
        self.keep = keep
        self.run = run
        # made on first use, so that building the callback on every rank touches no credentials
        self._client = client
        self.uploaded: list[str] = []
        self.failed: dict[str, str] = {}
        self.deleted: list[str] = []
        self._foreign: set[int] = set()
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
        if self.keep is not None:
            self.rotate(state.global_step)

    def rotate(self, newest: int) -> list[str]:
        """Deletes from the store all but the newest ``keep`` complete checkpoints up to step ``newest``
        (the one just uploaded), and every unfinished upload older than ``newest``; returns their names.

        Checkpoints newer than ``newest`` are not touched (they are not this upload's to judge), nor is
        one whose ``run.json`` records another run than ``run``. A deletion that fails is a warning:
        the store keeps one checkpoint too many, and training goes on.
        """
        try:
            if self._client is None:
                self._client = storage.client_from_env()
            client = self._client
            stored = {step: done for step, done in _stored(self.uri, client).items() if step <= newest}
            complete = sorted(step for step, done in stored.items() if done)
            doomed = [step for step, done in stored.items() if not done]
            doomed += complete[: max(len(complete) - (self.keep or len(complete)), 0)]
            removed = []
            for step in sorted(doomed):
                if step in self._foreign:  # found at an earlier save, and said then
                    continue
                other = self._other_run(step)
                if other:
                    self.log(
                        f"kept {_checkpoint(self.uri, step)} in the store: it records another run ({other})"
                    )
                    self._foreign.add(step)
                    continue
                storage.remove_dir(_checkpoint(self.uri, step), client=client)
                removed.append(f"{PREFIX_CHECKPOINT_DIR}-{step}")
        except RepotuneError as exc:
            self.log(f"warning: older checkpoints under {self.uri} were not deleted: {exc}")
            return []
        if removed:
            self.deleted += removed
            self.log(f"deleted {', '.join(removed)} from {self.uri} (keeping the newest {self.keep})")
        return removed

    def _other_run(self, step: int) -> str:
        """The settings in which the checkpoint at ``step`` in the store records another run; "" if none."""
        if self.run is None:
            return ""
        before = storage.read_json(f"{_checkpoint(self.uri, step)}{checkpoints.RUN}", client=self._client)
        if not isinstance(before, dict):
            return ""  # written before runs were recorded, or an upload cut short before run.json
        return ", ".join(checkpoints.run_differences(before, self.run))

    def report(self) -> dict[str, Any]:
        """What reached the store: ``ok`` is false when the newest checkpoint of this run did not;
        ``deleted`` names the older checkpoints the rotation removed from it."""
        return {
            "checkpoint_uri": self.uri,
            "uploaded": list(self.uploaded),
            "failed": [{"checkpoint": name, "error": error} for name, error in self.failed.items()],
            "deleted": list(self.deleted),
            "ok": self._last is None or self._last in self.uploaded,
        }


def remove_checkpoints(uri: str, *, client: Minio | None = None) -> list[str]:
    """Deletes every checkpoint under ``uri``, finished or not, each marker first; returns their names."""
    client = client if client is not None else storage.client_from_env()
    removed = []
    for step in sorted(_stored(uri, client)):
        storage.remove_dir(_checkpoint(uri, step), client=client)
        removed.append(f"{PREFIX_CHECKPOINT_DIR}-{step}")
    return removed


def _stored(uri: str, client: Minio) -> dict[int, bool]:
    """The steps of the checkpoints under ``uri`` that hold any object, each with whether its upload
    finished (its ``_COMPLETE`` marker is there), from one listing. A folder whose objects were all
    deleted is not one (SeaweedFS, unlike MinIO and AWS, lists such empty folders)."""
    stored: dict[int, bool] = {}
    for key in storage.prefix_etags(uri, client=client):
        name, _, rest = key.partition("/")
        step = checkpoints.step_of(Path(name))
        if step is not None and rest:
            stored[step] = stored.get(step, False) or rest == storage.MARKER
    return stored


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
    for step, complete in sorted(_stored(uri, client).items(), reverse=True):
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        source = _join(uri, name)
        if not complete:
            log(f"skipping {source}: its upload did not finish")
            continue
        restored = storage.download_dir(source, local_checkpoints_dir / name, client=client)
        reason = checkpoints.problem(restored)
        if reason is None:
            return restored
        log(f"skipping {source}: {reason}")
        shutil.rmtree(restored)
    return None
