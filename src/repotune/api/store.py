"""Sources: uploaded archives (checked by safe extraction, kept under their content hash) and repository
references, stored in the object store (a local folder or an s3:// prefix) and indexed in SQLite.

Layout under the store, one folder per source, written with ``storage.copy_to`` (a temporary sibling
renamed into place locally, a ``_COMPLETE`` marker written last on S3), so a source is whole or absent::

    sources/<id>/source.json        the record returned by GET /v1/sources/<id>
    sources/<id>/archive.tar.gz     the upload, byte for byte (archives only; the suffix is the format)

An archive's id is the SHA-256 of its bytes, a repository's the SHA-256 of its canonical description, so
the same upload or the same URL and ref twice give the same id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from repotune import storage
from repotune.api.db import Database
from repotune.api.errors import ApiError
from repotune.api.policy import SourcePolicy
from repotune.api.settings import ApiSettings
from repotune.api.upload import Upload
from repotune.errors import RepotuneError
from repotune.sources.archive import ArchiveLimits, ArchiveSummary, scan

SourceKind = Literal["archive", "git", "github"]
SOURCE_ID = re.compile(r"^[0-9a-f]{64}$")
RECORD = "source.json"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_ARCHIVE_SUFFIX = re.compile(r"(\.(zip|tar|tgz|txz|tbz2|tar\.(gz|xz|bz2)))+$", re.IGNORECASE)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def detect_format(path: Path) -> str | None:
    """The archive format from the file's first bytes (never from the client's file name), as a suffix."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith(b"\x1f\x8b"):
        return ".tar.gz"
    if head.startswith(b"\xfd7zXZ\x00"):
        return ".tar.xz"
    if head.startswith(b"BZh"):
        return ".tar.bz2"
    # The ustar magic is checked before zip: a tar whose last member is a zip would look like a zip to
    # zipfile.is_zipfile, which searches the end of the file.
    if head[257:262] == b"ustar":
        return ".tar"
    if zipfile.is_zipfile(path):
        return ".zip"
    if tarfile.is_tarfile(path):
        return ".tar"
    return None


def repo_source_id(kind: SourceKind, location: str, ref: str | None) -> str:
    canonical = json.dumps({"kind": kind, "location": location, "ref": ref}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _display_name(filename: str, fmt: str) -> str:
    """A file name safe to create locally that still reads like the client's, for error messages."""
    stem = _ARCHIVE_SUFFIX.sub("", _SAFE_NAME.sub("_", filename)).strip("._")[:100] or "upload"
    return stem + fmt


class SourceStore:
    def __init__(self, settings: ApiSettings, db: Database) -> None:
        self.settings, self.db = settings, db
        self.tmp = settings.work_dir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.policy = SourcePolicy(settings.source_schemes, settings.source_hosts, settings.source_networks)
        # One lock per source id being added, with the number of requests holding or awaiting it.
        self._adding: dict[str, tuple[threading.Lock, int]] = {}
        self._adding_guard = threading.Lock()

    @contextlib.contextmanager
    def _one_at_a_time(self, source_id: str) -> Iterator[None]:
        """Requests adding the same source in this process take turns: the first checks and stores it,
        the others then find it stored. (Other processes sharing the store are kept safe by
        ``storage.copy_to``, which treats a target already there with the same content as success.)"""
        with self._adding_guard:
            lock, users = self._adding.get(source_id, (threading.Lock(), 0))
            self._adding[source_id] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._adding_guard:
                lock, users = self._adding[source_id]
                if users == 1:
                    del self._adding[source_id]
                else:
                    self._adding[source_id] = (lock, users - 1)

    def location(self, source_id: str) -> str:
        """Where the source's folder lives: a local path or an s3:// URI."""
        store = self.settings.store
        if storage.is_s3_uri(store):
            return f"{store.rstrip('/')}/sources/{source_id}"
        return str(Path(store) / "sources" / source_id)

    def get(self, source_id: str) -> dict[str, Any] | None:
        """The source's record; looked up in SQLite, then in the store (which a lost database or another
        API instance sharing the store may know about)."""
        if not SOURCE_ID.match(source_id):
            return None
        with self.db.connect() as conn:
            row = conn.execute("SELECT info FROM sources WHERE id = ?", (source_id,)).fetchone()
        if row is not None:
            return json.loads(row["info"])
        info = self._read_record(source_id)
        if info is not None:
            self._index(info)
        return info

    def _read_record(self, source_id: str) -> dict[str, Any] | None:
        location = self.location(source_id)
        if not storage.is_s3_uri(location):
            path = Path(location) / RECORD
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if not storage.exists_complete(location):
            return None
        with tempfile.TemporaryDirectory(dir=self.tmp) as folder:
            local = storage.fetch(f"{location}/{RECORD}", Path(folder) / RECORD)
            return json.loads(local.read_text(encoding="utf-8"))

    def _index(self, info: dict[str, Any]) -> None:
        with self.db.connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO sources (id, info, created) VALUES (?, ?, ?)",
                (info["id"], json.dumps(info, sort_keys=True), info["created"]),
            )

    def _publish(self, package: Path, info: dict[str, Any]) -> None:
        (package / RECORD).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        storage.copy_to(package, self.location(info["id"]))
        self._index(info)

    def add_archive(self, upload: Upload) -> tuple[dict[str, Any], bool]:
        """Checks and stores an uploaded archive; returns its record and whether it is new. Removes the
        upload file in every case."""
        try:
            with self._one_at_a_time(upload.sha256):
                return self._add_archive(upload)
        finally:
            upload.path.unlink(missing_ok=True)

    def _add_archive(self, upload: Upload) -> tuple[dict[str, Any], bool]:
        existing = self.get(upload.sha256)
        if existing is not None:
            return existing, False
        fmt = detect_format(upload.path)
        if fmt is None:
            raise ApiError(
                422,
                "not_an_archive",
                "the upload is not an archive: send a .zip, .tar, .tar.gz/.tgz, .tar.xz or .tar.bz2 file",
            )
        package = Path(tempfile.mkdtemp(prefix="source-", dir=self.tmp))
        try:
            # Named for its format (the reader goes by the suffix) and, in messages, like the client's file.
            named = package / _display_name(upload.filename, fmt)
            os.replace(upload.path, named)
            summary = self._check(named)
            os.replace(named, package / f"archive{fmt}")
            info = {
                "id": upload.sha256,
                "kind": "archive",
                "created": now(),
                "stored": self.location(upload.sha256),
                "filename": upload.filename or None,
                "format": fmt,
                "size_bytes": upload.size,
                "sha256": upload.sha256,
                "files": summary.files,
                "expanded_bytes": summary.bytes,
                "repo_url": None,
                "github": None,
                "ref": None,
            }
            self._publish(package, info)
            return info, True
        finally:
            shutil.rmtree(package, ignore_errors=True)

    def _check(self, archive: Path) -> ArchiveSummary:
        """Reads the whole archive with the configured bounds, writing nothing (so a bomb costs reading
        time up to the bounds, not disk); 422 for an unsafe, oversized or empty archive."""
        limits = ArchiveLimits(
            max_members=self.settings.max_archive_files,
            max_total_bytes=self.settings.max_expanded_bytes,
            max_ratio=self.settings.max_compression_ratio,
        )
        try:
            summary = scan(archive, limits)
        except RepotuneError as exc:
            raise ApiError(422, "unsafe_or_invalid_archive", str(exc)) from None
        if not summary.files:
            raise ApiError(422, "empty_archive", f"archive {archive.name} holds no files")
        return summary

    def add_repository(self, kind: SourceKind, location: str, ref: str | None) -> tuple[dict[str, Any], bool]:
        """Records a git URL (``kind="git"``) or a GitHub ``owner/repo`` (``kind="github"``); nothing is
        cloned now: the run reads the repository. A git URL must pass the server's source policy (its
        host is resolved now, and again when a run starts)."""
        if kind == "git":
            self.policy.check(location)
        source_id = repo_source_id(kind, location, ref)
        with self._one_at_a_time(source_id):
            existing = self.get(source_id)
            if existing is not None:
                return existing, False
            info = {
                "id": source_id,
                "kind": kind,
                "created": now(),
                "stored": self.location(source_id),
                "filename": None,
                "format": None,
                "size_bytes": None,
                "sha256": None,
                "files": None,
                "expanded_bytes": None,
                "repo_url": location if kind == "git" else None,
                "github": location if kind == "github" else None,
                "ref": ref,
            }
            package = Path(tempfile.mkdtemp(prefix="source-", dir=self.tmp))
            try:
                self._publish(package, info)
            finally:
                shutil.rmtree(package, ignore_errors=True)
            return info, True

    def run_argument(self, info: dict[str, Any]) -> str:
        """The SOURCE argument of ``repotune run`` for this source on this machine: a local archive path
        (fetched once from an s3:// store), the git URL, or ``github:OWNER/REPO``."""
        if info["kind"] == "git":
            return info["repo_url"]
        if info["kind"] == "github":
            return f"github:{info['github']}"
        name = f"archive{info['format']}"
        location = self.location(info["id"])
        if not storage.is_s3_uri(location):
            return str(Path(location) / name)
        local = self.settings.work_dir / "sources" / info["id"]
        if not (local / name).is_file() or (local / name).stat().st_size != info["size_bytes"]:
            storage.fetch(location, local)
        return str(local / name)

    def archive_uri(self, info: dict[str, Any]) -> str:
        """The stored archive's own path or URI (what a KFP cluster is given)."""
        return f"{self.location(info['id']).rstrip('/')}/archive{info['format']}"
