"""Checkpoints that are complete or ignored: a marker written last, checked before every resume.

transformers' Trainer (5.x) writes ``checkpoint-N`` in place, file by file, with no staging folder, and
resumes from the highest N whatever state it is in: a process killed mid-save leaves a folder that
every later run trips on ("Can't find a valid checkpoint", or a failed load of a truncated file). So:

- :class:`CheckpointCommit` runs right after the Trainer has written a checkpoint (``on_save``, once
  every rank is done): it flushes the checkpoint's files to disk and then writes
  ``checkpoint_complete.json`` listing each file and its size; only then are older checkpoints rotated
  out (the Trainer's own rotation, which deletes before the new one is marked, is switched off), so a
  complete checkpoint is never deleted before a newer one is complete.
- :func:`problem` says why a folder is not a complete checkpoint: no marker, a listed file missing or
  of another size, or a file that does not load (JSON that does not parse, a safetensors file whose
  header does not cover it, a torch file whose zip directory is unreadable). These checks read
  headers and directories only, never whole weight files.
- :func:`latest_complete` picks the newest complete checkpoint to resume from and moves every newer,
  incomplete one aside into ``incomplete/``, saying which and why, so the next run does not trip on it.

Marking instead of staging (write ``tmp-checkpoint-N``, rename when done) keeps to the Trainer's public
callback interface: the save path and its file names stay the Trainer's, and under DDP every rank writes
its own RNG state into the folder, so a rename would need the same wait for all ranks as the marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from repotune.atomic import write_json
from repotune.errors import RepotuneError

MARKER = "checkpoint_complete.json"
RUN = "run.json"
"""What the checkpoints of a folder were trained on (data digest and every setting that shapes
training), written as the run starts (:func:`check_same_run`) and into each checkpoint it saves."""
TRAINER_STATE = "trainer_state.json"
INCOMPLETE = "incomplete"
"""Folder under the checkpoints folder that receives incomplete checkpoints (never resumed from)."""

# the Trainer's own naming (transformers.trainer_utils.get_last_checkpoint uses the same pattern)
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def step_of(folder: Path) -> int | None:
    match = _CHECKPOINT.match(folder.name)
    return int(match[1]) if match else None


def checkpoint_folders(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders directly under ``folder``, complete or not, oldest (lowest N) first."""
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if path.is_dir() and step_of(path) is not None]
    return sorted(found, key=lambda path: step_of(path) or 0)


def problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, in a few words; None when it is complete."""
    try:
        marker = json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"it has no {MARKER}: its save was interrupted"
    except (OSError, ValueError) as exc:
        return f"its {MARKER} is unreadable ({exc})"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or TRAINER_STATE not in files:
        return f"its {MARKER} does not list the checkpoint's files"
    for relative, size in sorted(files.items()):
        path = checkpoint / relative
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{relative} is missing"
        if actual != size:
            return f"{relative} has {actual} bytes, {size} when it was saved"
        reason = _unloadable(path)
        if reason is not None:
            return f"{relative} {reason}"
    return None


def _unloadable(path: Path) -> str | None:
    """Why a file would not load (cheap checks: headers and directories), or None."""
    from safetensors import SafetensorError, safe_open

    name = path.name
    try:
        if name.endswith(".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            if name == TRAINER_STATE and not (isinstance(data, dict) and "global_step" in data):
                return "has no global_step"
        elif name.endswith(".safetensors"):
            # validates the header and that its tensors cover the file exactly (a truncation fails here)
            with safe_open(str(path), "pt"):
                pass
        elif name.endswith(_TORCH_SUFFIXES):
            # torch.save writes a zip whose directory is at the end: a cut-off file has none
            with zipfile.ZipFile(path):
                pass
    except (OSError, ValueError, zipfile.BadZipFile, SafetensorError) as exc:
        return f"does not load ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_same_run(folder: Path, identity: dict[str, Any], *, write: bool) -> None:
    """Refuses to resume from checkpoints that another run wrote (other data, or other settings that
    shape training: see ``repotune.train.finetune.run_identity``); with ``write``, records ``identity``
    as the run the checkpoints under ``folder`` now belong to.

    Training into a model folder resumes from its newest checkpoint: the folder of a run on other
    data or with another recipe would otherwise go on from that run's weights, optimizer, schedule and
    step (or fail to load them, when the model's shape changed), and the model and its summary would
    claim this run's settings for steps trained with the other's.
    """
    path = folder / RUN
    if path.is_file() and checkpoint_folders(folder):
        _refuse_other_run(folder, json.loads(path.read_text()), identity)
    if write:
        write_json(path, identity)


def check_checkpoint_run(checkpoint: Path, identity: dict[str, Any]) -> None:
    """Refuses to resume from ``checkpoint`` when the run it records (its own ``run.json``, which
    travels with it to and from ``checkpoint_uri``) is another run than ``identity``."""
    path = checkpoint / RUN
    if path.is_file():
        _refuse_other_run(checkpoint, json.loads(path.read_text()), identity)


def run_differences(before: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """The settings in which the run ``before`` (a ``run.json``) is another run than ``identity``.

    Only what the earlier run recorded is compared: a folder written before a setting was recorded is
    judged on the rest.
    """
    return [key for key in identity if key in before and before[key] != identity[key]]


def _refuse_other_run(where: Path, before: dict[str, Any], identity: dict[str, Any]) -> None:
    differ = run_differences(before, identity)
    if differ:
        what = ", ".join(f"{key} {_shown(before[key])} -> {_shown(identity[key])}" for key in differ)
        folder = where if step_of(where) is None else where.parent
        raise RepotuneError(
            f"{where} holds checkpoints of another run ({what}): resuming from them would mix the two runs "
            f"in one model; train into a new -o folder, or delete {folder} to start over"
        )


def _shown(value: Any) -> str:
    return json.dumps(value) if value is None or isinstance(value, list | dict) else str(value)


def write_run(checkpoint: Path, identity: dict[str, Any]) -> None:
    """Records in ``checkpoint`` the run that wrote it, before it is marked complete (so the marker
    lists it, and an upload to ``checkpoint_uri`` carries it)."""
    write_json(checkpoint / RUN, identity)


def latest_complete(folder: Path, log: Callable[[str], None], *, move_aside: bool = True) -> Path | None:
    """The newest complete checkpoint under ``folder``, or None.

    Every newer checkpoint that is incomplete is named with its reason through ``log`` and, with
    ``move_aside``, moved to ``folder/incomplete/`` (replacing an earlier one of the same name), where
    neither a resume nor the Trainer's next save of that step can trip on it. Only one process per
    disk may move folders; the others call this with ``move_aside=False`` after it.
    """
    for checkpoint in reversed(checkpoint_folders(folder)):
        reason = problem(checkpoint)
        if reason is None:
            return checkpoint
        if move_aside:
            aside = _move_aside(checkpoint)
            log(f"skipping {checkpoint.name}: {reason}; moved it to {aside}")
        else:
            log(f"skipping {checkpoint.name}: {reason}")
    return None


def _move_aside(checkpoint: Path) -> Path:
    aside = checkpoint.parent / INCOMPLETE / checkpoint.name
    aside.parent.mkdir(exist_ok=True)
    if aside.exists():
        shutil.rmtree(aside)
    os.replace(checkpoint, aside)
    return aside


def logged(checkpoint: Path, key: str) -> float | None:
    """The last value of ``key`` in a checkpoint's Trainer log history (restored with it on resume)."""
    try:
        history = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))["log_history"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    values = [entry[key] for entry in history if isinstance(entry, dict) and key in entry]
    return float(values[-1]) if values else None


def train_seconds(checkpoint: Path) -> float:
    """Seconds of training that went into ``checkpoint`` (``callbacks.TrainClock``'s saved state), or 0
    for a checkpoint written before they were recorded."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
        return float(state["stateful_callbacks"]["TrainClock"]["args"]["seconds_before"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def mark_complete(checkpoint: Path, step: int) -> dict[str, Any]:
    """Flushes every file of ``checkpoint`` to disk, then writes its marker (itself flushed); returns it.

    The flush comes first so that a machine that loses power after the marker cannot come back with
    a marker over files the page cache never wrote.
    """
    files = {}
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file() and path.name != MARKER and not path.name.startswith(f".{MARKER}."):
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(checkpoint).as_posix()] = path.stat().st_size
    marker = {"step": step, "files": files, "completed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    write_json(checkpoint / MARKER, marker)
    _fsync_dir(checkpoint)
    return marker


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotate(folder: Path, keep: int) -> list[Path]:
    """Deletes all but the newest ``keep`` complete checkpoints (oldest first); returns what it deleted."""
    complete = [path for path in checkpoint_folders(folder) if problem(path) is None]
    doomed = complete[: max(len(complete) - keep, 0)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


class CheckpointCommit(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it, then rotates old ones.

    With ``run``, the checkpoint first gets the run's record (:func:`write_run`), so a resume from it
    (here or after a restore from ``checkpoint_uri``) can tell whether it is the same run. Must come
    before any callback that reads the checkpoint (the S3 upload): callbacks run in order.
    """

    def __init__(self, keep: int, run: dict[str, Any] | None = None) -> None:
        self.keep = keep
        self.run = run

    def on_save(self, args, state, control, **kwargs):
        # Under DDP each rank writes its own RNG state into the folder: wait for every rank first.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if not args.should_save:  # the processes that write checkpoints (the Trainer's own rule)
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.run is not None:
            write_run(checkpoint, self.run)
        mark_complete(checkpoint, state.global_step)
        rotate(Path(args.output_dir), self.keep)
