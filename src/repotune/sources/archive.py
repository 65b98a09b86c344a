"""Safe extraction of .zip and .tar.* archives into a temporary folder.

Every member is checked before anything is written: absolute paths, ``..`` components, links and
device files are rejected, and member count, expanded size and (when asked) compression ratio are
bounded against archive bombs. ``scan`` reads an archive with the same checks and writes nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from repotune.errors import RepotuneError
from repotune.sources.base import IngestStats

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
_CHUNK = 1 << 20
# Below this many expanded bytes a high ratio is a small repetitive file, not a bomb: not checked.
RATIO_FLOOR_BYTES = 1 << 20
# tarfile reads a GNU long-name or long-link header (its data is the name, NUL-terminated) and a pax
# header (long names, times, extended attributes, git's commit id) whole into memory, whatever size
# the header declares: bounded before they are read. A path is at most 4,096 bytes on Linux.
MAX_LONG_NAME_BYTES = 8 * 1024
MAX_PAX_BYTES = 64 * 1024
# Extension headers in a row before one member: tarfile follows them by recursion, holding each; a
# member has at most a global pax, a pax, a long-name and a long-link header.
_MAX_EXTENSIONS = 8
_EXTENSIONS = {
    tarfile.GNUTYPE_LONGNAME: ("GNU long-name", MAX_LONG_NAME_BYTES),
    tarfile.GNUTYPE_LONGLINK: ("GNU long-link", MAX_LONG_NAME_BYTES),
    tarfile.XHDTYPE: ("pax", MAX_PAX_BYTES),
    tarfile.XGLTYPE: ("pax global", MAX_PAX_BYTES),
    tarfile.SOLARIS_XHDTYPE: ("pax", MAX_PAX_BYTES),
}


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_members: int = 200_000
    """Most entries an archive may hold."""
    max_total_bytes: int = 4 * 1024**3
    """Most bytes the archive may expand to (4 GiB), counted while extracting, not trusted from headers: its
    files' bytes and, for a tar, its headers' (a header block, 512 bytes, a member, and the long names
    and pax records of extension headers)."""
    max_ratio: float | None = None
    """Most bytes expanded per byte in the archive, for each zip member and for the whole archive (a
    tar is one compressed stream: checked as a whole); None: unchecked. Source code compresses about
    3-10x; deflate tops out near 1,030x, which bombs reach. Checked past ``RATIO_FLOOR_BYTES`` only."""


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    files: int
    """Files in the archive (a name given twice counts once, as extracting keeps the last)."""
    bytes: int
    """Bytes its files expand to, as counted while reading them."""
    links: int = 0
    """Symbolic and hard links, skipped: never extracted, as a folder's links are never followed."""


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(archive: Path, name: str) -> PurePosixPath:
    normalized = name.replace("\\", "/")
    member = PurePosixPath(normalized)
    if member.is_absolute() or normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise RepotuneError(f"archive {archive.name}: member {name!r} has an absolute path; refusing it")
    if ".." in member.parts:
        raise RepotuneError(f"archive {archive.name}: member {name!r} escapes the archive with '..'")
    return member


class _Budget:
    def __init__(self, archive: Path, limits: ArchiveLimits) -> None:
        self.archive, self.limits, self.members, self.bytes = archive, limits, 0, 0
        self.stored = archive.stat().st_size
        self.files: set[str] = set()
        """The files' names, as strings: a path object takes several times their memory, for each of them."""
        self.links = 0
        self.header_bytes = 0
        """A tar's header blocks and extension headers' data: not files' bytes, but expanded all the same."""

    def member(self) -> None:
        self.members += 1
        self.check_count(self.members)

    def check_count(self, members: int) -> None:
        if members > self.limits.max_members:
            raise RepotuneError(
                f"archive {self.archive.name}: more than {self.limits.max_members} members; refusing it"
            )

    def spend(self, size: int, *, header: bool = False) -> None:
        if header:
            self.header_bytes += size
        else:
            self.bytes += size
        expanded = self.bytes + self.header_bytes
        if expanded > self.limits.max_total_bytes:
            raise RepotuneError(
                f"archive {self.archive.name}: expands past {self.limits.max_total_bytes} bytes "
                "(an archive bomb?); refusing it"
            )
        self.check_ratio("the archive", expanded, self.stored)

    def check_ratio(self, what: str, expanded: int, stored: int) -> None:
        ratio = self.limits.max_ratio
        if ratio is not None and expanded > RATIO_FLOOR_BYTES and expanded > ratio * max(stored, 1):
            raise RepotuneError(
                f"archive {self.archive.name}: {what} expands more than {ratio:g} times its "
                f"{stored} stored bytes (an archive bomb?); refusing it"
            )


def _copy(src, dest: Path | None, budget: _Budget, name: PurePosixPath, stored: int | None = None) -> None:
    """Reads member ``name`` from ``src`` into ``dest`` (or only counts it, when ``dest`` is None);
    ``stored``: the member's compressed size, when the format has one per member."""
    budget.files.add(str(name))
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") if dest is not None else contextlib.nullcontext() as out:
        expanded = 0
        while chunk := src.read(_CHUNK):
            budget.spend(len(chunk))
            expanded += len(chunk)
            if stored is not None:
                budget.check_ratio(f"member {str(name)!r}", expanded, stored)
            if out is not None:
                out.write(chunk)


# The zip records zipfile reads to find the central directory (APPNOTE.TXT 4.3.12-4.3.16).
_ZIP_END = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP_ENTRY_SIZE = 46  # a central-directory entry's fixed part; its name, extra field and comment follow


def _zip_directory(handle) -> tuple[int, int, int] | None:
    """Where the central directory starts, its size in bytes, and the entries its end record declares,
    found as ``zipfile`` finds them (the end record is last, or within the 64 KiB comment before the
    end; a zip64 end record precedes it); None where zipfile finds none, or refuses the zip64 one."""
    size = handle.seek(0, 2)
    if size < _ZIP_END.size:
        return None
    handle.seek(size - _ZIP_END.size)
    record = handle.read(_ZIP_END.size)
    if record[:4] == b"PK\x05\x06" and record[-2:] == b"\0\0":
        at = size - _ZIP_END.size
    else:
        start = max(size - (1 << 16) - _ZIP_END.size, 0)
        handle.seek(start)
        tail = handle.read()
        found = tail.rfind(b"PK\x05\x06")
        if found < 0 or len(tail) - found < _ZIP_END.size:
            return None
        at, record = start + found, tail[found : found + _ZIP_END.size]
    entries, cd_size = _ZIP_END.unpack(record)[4:6]
    if at < _ZIP64_LOCATOR.size:
        return at - cd_size, cd_size, entries
    handle.seek(at - _ZIP64_LOCATOR.size)
    signature, disk, _, disks = _ZIP64_LOCATOR.unpack(handle.read(_ZIP64_LOCATOR.size))
    if signature != b"PK\x06\x07":
        return at - cd_size, cd_size, entries
    zip64_at = at - _ZIP64_LOCATOR.size - _ZIP64_END.size
    if disk != 0 or disks > 1 or zip64_at < 0:
        return None
    handle.seek(zip64_at)
    zip64 = _ZIP64_END.unpack(handle.read(_ZIP64_END.size))
    if zip64[0] != b"PK\x06\x06":
        return at - cd_size, cd_size, entries
    entries, cd_size = zip64[7], zip64[8]
    return zip64_at - cd_size, cd_size, entries


def _check_zip_entries(archive: Path, budget: _Budget) -> None:
    """Counts the central directory's entries before ``zipfile`` parses it, which it does whole (about
    500 bytes of memory an entry, from 46 bytes on disk) before any member can be counted. The count the
    end record declares is not trusted: zipfile reads entries for as many bytes as the directory has."""
    with archive.open("rb") as handle:
        directory = _zip_directory(handle)
        if directory is None:
            return  # not a zip that zipfile can read: it says why
        start, size, declared = directory
        budget.check_count(declared)
        if start < 0 or size <= _ZIP_ENTRY_SIZE * budget.limits.max_members:
            return  # zipfile refuses the offset; or too small to hold more entries than the limit
        handle.seek(start)
        count = read = 0
        while read < size:
            entry = handle.read(_ZIP_ENTRY_SIZE)
            if len(entry) != _ZIP_ENTRY_SIZE or entry[:4] != b"PK\x01\x02":
                return  # zipfile stops here too, and refuses the zip as corrupt
            skip = sum(struct.unpack_from("<3H", entry, 28))  # name, extra field and comment lengths
            handle.seek(skip, 1)
            read += _ZIP_ENTRY_SIZE + skip
            count += 1
            budget.check_count(count)


def _extract_zip(archive: Path, dest: Path | None, budget: _Budget) -> None:
    _check_zip_entries(archive, budget)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _check_name(archive, info.filename)
        for info in infos:
            budget.member()
            rel = _check_name(archive, info.filename)
            # Unix mode bits live in the high 16 bits; 0o120000 is a symbolic link: skipped.
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                budget.links += 1
                continue
            if info.is_dir():
                if dest is not None:
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                _copy(src, dest / rel if dest is not None else None, budget, rel, info.compress_size)


class _TarInfo(tarfile.TarInfo):
    """tarfile's header, shown to the archive's budget before tarfile reads what follows it."""

    def _proc_member(self, tar: _TarFile) -> tarfile.TarInfo:
        tar.header(self)
        return super()._proc_member(tar)

    def _proc_gnusparse_10(self, member: tarfile.TarInfo, pax_headers: dict[str, str], tar: _TarFile) -> None:
        # GNU sparse format 1.0 (a pax header names it): tarfile would read the map, of as many entries
        # as its first line says, from the member's data into a list. The 0.x formats' maps are in the
        # pax header, bounded with it, and the old GNU format's is refused with its header.
        tar.refuse_sparse(pax_headers.get("GNU.sparse.name", member.name))


class _TarFile(tarfile.TarFile):
    tarinfo = _TarInfo

    def __init__(self, *args, budget: _Budget, **kwargs) -> None:
        self.budget = budget
        self.extensions = 0
        """Extension headers read since the last member's header."""
        super().__init__(*args, **kwargs)

    def header(self, info: tarfile.TarInfo) -> None:
        """Counts the header's bytes, and refuses an extension header that tarfile would read whole
        into memory past its bound, and a sparse member (its map is read whole too)."""
        name = self.budget.archive.name
        if info.type == tarfile.GNUTYPE_SPARSE:
            self.refuse_sparse(info.name)  # its map continues in as many 512-byte blocks as it chains
        extension = _EXTENSIONS.get(info.type)
        if extension is None:
            self.extensions = 0
            self.budget.spend(tarfile.BLOCKSIZE, header=True)
            return
        what, most = extension
        if not 0 <= info.size <= most:
            raise RepotuneError(
                f"archive {name}: a {what} header declares {info.size} bytes, where at most {most} are "
                "allowed (an archive bomb?); refusing it"
            )
        self.extensions += 1
        if self.extensions > _MAX_EXTENSIONS:
            raise RepotuneError(
                f"archive {name}: more than {_MAX_EXTENSIONS} extension headers in a row "
                "(an archive bomb?); refusing it"
            )
        blocks = -(-info.size // tarfile.BLOCKSIZE)
        self.budget.spend((1 + blocks) * tarfile.BLOCKSIZE, header=True)

    def refuse_sparse(self, member: str) -> None:
        # Sparse files are disk images and databases, not sources: refused rather than bounded.
        raise RepotuneError(
            f"archive {self.budget.archive.name}: member {member!r} is a sparse file (tar --sparse), "
            "which is not supported; refusing it"
        )


def _extract_tar(archive: Path, dest: Path | None, budget: _Budget) -> None:
    with _TarFile.open(archive, budget=budget) as tf:
        # Streamed member by member: tarfile reads headers lazily, so a huge archive is never listed whole;
        # it also keeps each member it has read (for getmember), which nothing here asks for.
        while (member := tf.next()) is not None:
            tf.members.clear()
            budget.member()
            rel = _check_name(archive, member.name)
            if member.issym() or member.islnk():
                budget.links += 1  # skipped, never extracted: repositories hold links (`ln -s a.py b.py`)
                continue
            if member.isdir():
                if dest is not None:
                    (dest / rel).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                src = tf.extractfile(member)
                if src is not None:
                    _copy(src, dest / rel if dest is not None else None, budget, rel)
            else:
                raise RepotuneError(f"archive {archive.name}: member {member.name!r} is a device or fifo")


def extract(
    archive: Path, dest: Path, limits: ArchiveLimits = ArchiveLimits(), stats: IngestStats | None = None
) -> Path:
    """Extract ``archive`` into ``dest`` and return the project root inside it.

    An archive holding a single top-level folder (as GitHub's and ``git archive --prefix`` do) has
    that folder as its root. Its links, skipped, count in ``stats`` as ``symlink``, as a folder's do.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        budget = _read(archive, dest, limits)
        if not budget.files:
            links = f" ({budget.links} links, skipped)" if budget.links else ""
            raise RepotuneError(f"archive {archive.name} is empty: it holds no files{links}")
    except RepotuneError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if stats is not None and budget.links:
        stats.skipped["symlink"] += budget.links
    children = list(dest.iterdir())
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return dest


def scan(archive: Path, limits: ArchiveLimits = ArchiveLimits()) -> ArchiveSummary:
    """Reads every member of ``archive`` with the checks and bounds of :func:`extract`, writing nothing;
    raises RepotuneError where ``extract`` would. Memory stays at one chunk whatever the sizes."""
    budget = _read(archive, None, limits)
    return ArchiveSummary(files=len(budget.files), bytes=budget.bytes, links=budget.links)


def _read(archive: Path, dest: Path | None, limits: ArchiveLimits) -> _Budget:
    try:
        budget = _Budget(archive, limits)
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest, budget)
        else:
            _extract_tar(archive, dest, budget)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise RepotuneError(_unreadable(archive, exc)) from None
    return budget


# The first bytes of each format (file(1)'s magic numbers), and the suffixes whose reader takes it.
_MAGIC = (
    (b"PK\x03\x04", "a zip archive", (".zip",)),
    (b"PK\x05\x06", "a zip archive", (".zip",)),
    (b"\x1f\x8b", "gzip-compressed data", (".tar.gz", ".tgz")),
    (b"\xfd7zXZ\x00", "xz-compressed data", (".tar.xz", ".txz")),
    (b"BZh", "bzip2-compressed data", (".tar.bz2", ".tbz2")),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (not supported)", ()),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive (not supported)", ()),
    (b"Rar!\x1a\x07", "a RAR archive (not supported)", ()),
)


def _unreadable(archive: Path, exc: Exception) -> str:
    """One line for an archive its suffix's reader refused: what it looks like by its first bytes when
    that is another format (a zip renamed .tar.gz), else the reader's own reason."""
    name = archive.name.lower()
    suffix = max((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), key=len, default=archive.suffix)
    looks = None
    with contextlib.suppress(OSError), archive.open("rb") as handle:
        head = handle.read(512)
        looks = next(((what, fits) for magic, what, fits in _MAGIC if head.startswith(magic)), None)
        if looks is None and head[257:262] == b"ustar":
            looks = ("an uncompressed tar", (".tar",))
        elif looks is None and head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
            looks = ("an HTML page (a failed download?)", ())
    if looks is not None and suffix not in looks[1]:
        what, fits = looks
        rename = f", rename it to {fits[0]}" if fits else ""
        return f"archive {archive.name} could not be read as {suffix}: it looks like {what}{rename}"
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return f"archive {archive.name} is corrupt or unreadable: {reason}"
