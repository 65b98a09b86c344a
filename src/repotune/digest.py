"""Content hashes of files and folders: what keys a cache on a model's or an index's bytes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def feed_file(digest: Any, path: Path) -> None:
    """Add the bytes of the file at ``path`` to ``digest``, a megabyte at a time (weights are large)."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file under ``folder``: its path relative to ``folder`` and its bytes."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            feed_file(digest, path)
            digest.update(b"\0")
    return digest.hexdigest()


def files_digest(*paths: Path) -> str:
    """The first 16 hex digits of SHA-256 over the bytes of ``paths`` in order (a missing one adds
    nothing): a dataset's identity, as train records it (``dataset_hash``) and evaluate compares it."""
    digest = hashlib.sha256()
    for path in paths:
        if path.is_file():
            feed_file(digest, path)
    return digest.hexdigest()[:16]
