"""The model cache folder, and building a folder in it exactly once across processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from repotune.atomic import umask


def models_cache_dir(cache_dir: Path | None = None) -> Path:
    """The folder that holds converted and downloaded models: ``cache_dir`` when given, else
    ``$REPOTUNE_CACHE/models``, else ``$XDG_CACHE_HOME/repotune/models`` (``~/.cache`` by default)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if root := os.environ.get("REPOTUNE_CACHE"):
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "repotune" / "models"


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive flock(2) on ``lock_path`` (created if needed) for the ``with`` block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(
    final: Path, build: Callable[[Path], Any], is_current: Callable[[Path], bool] = Path.is_dir
) -> Path:
    """``final``, built by ``build(tmp)`` in a sibling folder and renamed into place unless
    ``is_current(final)``. A lock file serialises concurrent builders; the later one reuses the result."""
    if is_current(final):
        return final
    with locked(final.parent / f".{final.name}.lock"):
        if is_current(final):
            return final
        # Holding the lock means no build is running, so any leftover partial folder is from a kill.
        for stale in final.parent.glob(f".{final.name}.*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        try:
            build(tmp)
            tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700; a shared cache should stay readable
            if final.exists():  # out of date (an s3:// prefix whose objects changed): swap it out
                old = final.with_name(f".{final.name}.{os.getpid()}.old.partial")
                final.rename(old)
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
