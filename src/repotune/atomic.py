"""Atomic output: a file is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from repotune.errors import RepotuneError

_TMP_SUFFIX = ".tmp"
# atomic_open's temporary names: ``.NAME.XXXXXXXX.tmp``, 8 characters of mkstemp's alphabet between.
_TMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}" + re.escape(_TMP_SUFFIX))


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it into place only on success.

    An exception or a kill before the rename leaves no file at ``path`` (the temporary file is
    removed on exceptions; after a hard kill a ``.tmp`` file may remain, never the final name).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=True, ensure_ascii=False)
        handle.write("\n")


def prepare_output(
    folder: Path,
    ours: tuple[str, ...],
    what: str,
    *,
    written: tuple[str, ...] = (),
    scratch: tuple[str, ...] = (),
) -> None:
    """Create ``folder`` for a stage's output, or take it as it is when it is empty or holds an earlier
    output of the same stage (an entry named in ``ours``), which the stage then writes over.

    What a hard kill (SIGKILL, OOM, eviction) of the stage leaves counts as its output too, and is
    removed here: ``atomic_open``'s temporary files of the names in ``ours`` and ``written`` (the
    stage's other files, which alone do not mark a folder as its own), and entries whose name starts
    with one of the ``scratch`` prefixes (the stage's scratch folders).

    Any other folder is refused before any work: ``-o .`` in a checkout would have the stage write
    its ``README.md`` over the project's, and files of another kind would be mixed with its own.
    """
    if folder.exists() and not folder.is_dir():
        raise RepotuneError(f"the output {folder} is a file; give a folder for the {what} to go in")
    if folder.is_dir():
        entries = sorted(entry.name for entry in folder.iterdir())
        leftovers = [name for name in entries if _leftover(name, (*ours, *written), scratch)]
        others = [name for name in entries if name not in leftovers]
        if others and not any(name in entries for name in ours):
            shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
            raise RepotuneError(
                f"the output folder {folder} is not empty ({shown}) and holds no earlier {what}: "
                f"writing there would overwrite or mix with those files; give a new or empty folder"
            )
        for name in leftovers:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RepotuneError(f"cannot create the output folder {folder}: {err.strerror or err}") from err


def _leftover(name: str, outputs: tuple[str, ...], scratch: tuple[str, ...]) -> bool:
    """Whether ``name`` is what an interrupted run of the stage left: a temporary file of one of its
    ``outputs``, or one of its scratch entries."""
    match = _TMP_NAME.fullmatch(name)
    return (match is not None and match["name"] in outputs) or name.startswith(scratch)
