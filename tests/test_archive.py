"""Archive headers that a reader would hold whole in memory: a tar's long-name, pax and sparse headers and
a zip's central directory are bounded before they are read, with real bombs built small on disk here;
and the archives that real tools write (git archive, GNU tar, Python's tarfile) still extract."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import write_tree

from repotune.errors import RepotuneError
from repotune.sources.archive import ArchiveLimits, extract, scan

MIB = 1024 * 1024
# What reading a bomb may cost: a reader that holds the bomb's header costs hundreds of MiB.
PEAK_LIMIT = 50 * MIB


def scan_with_peak(path: Path, limits: ArchiveLimits | None = None) -> tuple[str, int]:
    """What scanning ``path`` refuses it with ("" when it is accepted), and the peak of the bytes Python
    held meanwhile (tracemalloc: every object, and the buffers a decompressor allocates through Python)."""
    tracemalloc.start()
    try:
        scan(path, limits or ArchiveLimits())
    except RepotuneError as exc:
        return str(exc), tracemalloc.get_traced_memory()[1]
    else:
        return "", tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _header(name: str, kind: bytes, size: int, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(format=fmt)


def _file(name: str, data: bytes) -> bytes:
    padding = b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return _header(name, tarfile.REGTYPE, len(data)) + data + padding


def _tar_gz(dest: Path, head: bytes, filler: bytes = b"", mib: int = 0, tail: bytes = b"") -> Path:
    """``head``, then ``mib`` MiB of ``filler`` repeated, then ``tail``, an ordinary member and the end
    blocks, as concatenated gzip members (one stream to a gzip reader): each MiB of filler is compressed
    once, so a bomb of hundreds of MiB is built in a moment and is a few hundred KiB on disk."""
    chunk = gzip.compress(filler * (MIB // len(filler)), compresslevel=9, mtime=0) if filler else b""
    with dest.open("wb") as out:
        out.write(gzip.compress(head, mtime=0))
        for _ in range(mib):
            out.write(chunk)
        end = tail + _file("project/app.py", b"print('hi')\n") + b"\0" * 2 * tarfile.BLOCKSIZE
        out.write(gzip.compress(end, mtime=0))
    return dest


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        (tarfile.GNUTYPE_LONGNAME, "GNU long-name"),
        (tarfile.GNUTYPE_LONGLINK, "GNU long-link"),
        (tarfile.XHDTYPE, "pax"),
        (tarfile.XGLTYPE, "pax global"),
    ],
)
def test_a_huge_long_name_or_pax_header_is_refused_before_it_is_read(
    tmp_path: Path, kind: bytes, what: str
) -> None:
    # 256 MiB of name in 260 KB: tarfile reads an extension header's data whole, before any member.
    bomb = _tar_gz(tmp_path / "header.tar.gz", _header("././@LongLink", kind, 256 * MIB), b"a", 256)
    assert bomb.stat().st_size < 400_000
    message, peak = scan_with_peak(bomb, ArchiveLimits(max_ratio=100))
    assert peak < PEAK_LIMIT, f"reading the bomb peaked at {peak / MIB:.0f} MiB"
    assert message.startswith(f"archive header.tar.gz: a {what} header declares {256 * MIB} bytes")
    assert "at most" in message and "\n" not in message


def _sparse_header(name: str) -> bytes:
    """An old-GNU sparse member's header whose map continues in the blocks that follow it."""
    header = bytearray(_header(name, tarfile.GNUTYPE_SPARSE, 0))
    header[482] = 1  # "isextended": a block of the map follows
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    return bytes(header)


def test_a_sparse_member_whose_map_never_ends_is_refused(tmp_path: Path) -> None:
    # Each 512-byte block of the map holds 21 (offset, size) pairs and says whether another follows:
    # 32 MiB of them (100 KB on disk) become 1.4 million pairs in a list.
    entries = b"".join(b"%011o\0%011o\0" % (i + 1, 1) for i in range(21))
    block = entries + b"\1" + b"\0" * 7
    last = b"\0" * tarfile.BLOCKSIZE  # no pairs, and no block after it
    bomb = _tar_gz(tmp_path / "sparse.tar.gz", _sparse_header("project/disk.img"), block, 32, last)
    message, peak = scan_with_peak(bomb)
    assert peak < PEAK_LIMIT, f"reading the bomb peaked at {peak / MIB:.0f} MiB"
    assert "member 'project/disk.img' is a sparse file (tar --sparse), which is not supported" in message


def _pax_records(**fields: str) -> bytes:
    """pax records, "LENGTH KEY=VALUE\n" each, LENGTH counting its own digits; ``_`` in a key is a dot."""
    records = b""
    for key, value in fields.items():
        body = f" {key.replace('_', '.')}={value}\n".encode()
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length += 1
        records += str(length).encode() + body
    return records


def test_a_pax_sparse_map_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # GNU sparse format 1.0: the map is the member's data, its count of pairs then a number a line, read
    # into a list until the count is reached; 4 MiB of "1\n" (20 KB on disk) are a million pairs.
    records = _pax_records(GNU_sparse_major="1", GNU_sparse_minor="0", GNU_sparse_name="project/db.bin")
    head = _header("./PaxHeaders/db.bin", tarfile.XHDTYPE, len(records), tarfile.USTAR_FORMAT)
    head += records + b"\0" * (-len(records) % tarfile.BLOCKSIZE)
    head += _header("project/GNUSparseFile.0/db.bin", tarfile.REGTYPE, 4 * MIB + 512, tarfile.USTAR_FORMAT)
    head += b"1000000\n"
    bomb = _tar_gz(tmp_path / "pax-sparse.tar.gz", head, b"1\n", 4)
    message, peak = scan_with_peak(bomb)
    assert peak < PEAK_LIMIT, f"reading the bomb peaked at {peak / MIB:.0f} MiB"
    assert "member 'project/db.bin' is a sparse file" in message


def test_a_chain_of_extension_headers_is_refused(tmp_path: Path) -> None:
    record = _pax_records(comment="x" * 60_000)
    pax = _header("pax_global_header", tarfile.XGLTYPE, len(record), tarfile.USTAR_FORMAT)
    pax += record + b"\0" * (-len(record) % tarfile.BLOCKSIZE)
    chain = _tar_gz(tmp_path / "chain.tar.gz", b"", tail=pax * 9)
    with pytest.raises(RepotuneError, match="more than 8 extension headers in a row"):
        scan(chain)
    assert scan(_tar_gz(tmp_path / "short.tar.gz", b"", tail=pax * 2)).files == 1


def test_a_tars_headers_count_toward_its_expanded_size(tmp_path: Path) -> None:
    # 300 empty files expand to 300 header blocks (153,600 bytes) and no file bytes.
    path = tmp_path / "empty-files.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for i in range(300):
            tf.addfile(tarfile.TarInfo(f"project/{i}.py"), io.BytesIO())
    assert scan(path).files == 300 and scan(path).bytes == 0
    with pytest.raises(RepotuneError, match="expands past 100000 bytes"):
        scan(path, ArchiveLimits(max_total_bytes=100_000))
    # A long name's own header block and its data count too: 2 blocks of name, 1 block of header.
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("project/" + "n" * 600 + ".py"), io.BytesIO())
    assert scan(path, ArchiveLimits(max_total_bytes=4 * 512)).files == 1
    with pytest.raises(RepotuneError, match="expands past 1536 bytes"):
        scan(path, ArchiveLimits(max_total_bytes=3 * 512))


def test_a_tar_of_many_members_is_read_without_keeping_them(tmp_path: Path) -> None:
    # tarfile keeps every member it has read, about 800 bytes each with its name's path object here: 160
    # MiB at the 200,000-member limit. Read and forgotten, each costs its name's string.
    path = tmp_path / "many.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(20_000):
            tf.addfile(tarfile.TarInfo(f"project/src/module_{i // 100}/file_{i}.py"), io.BytesIO())
    message, peak = scan_with_peak(path)
    assert message == ""
    assert peak < 10 * MIB, f"reading 20,000 members peaked at {peak / MIB:.0f} MiB"


LONG = "/".join(["a_folder_name_of_fifty_characters_to_make_it_long_"] * 6) + "/deep.py"  # 314 bytes


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_git_archive_and_gnu_tar_archives_with_long_names_still_extract(
    make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    files = {"README.md": "# hi\n", LONG: "x = 1\n", "naïve/ünïcode.py": "y = 2\n"}
    repo = make_repo([("Add files", files, "2024-01-01T10:00:00+00:00")])
    os.symlink("../" + LONG, repo / "link.py")  # a long link target: GNU tar writes a long-link header
    made = []
    for fmt in ("tar.gz", "tar"):  # a pax global header (the commit id), and pax headers for long names
        dest = tmp_path / f"git.{fmt}"
        subprocess.run(
            ["git", "archive", f"--format={fmt}", "--prefix=project/", "-o", dest, "HEAD"],
            cwd=repo,
            check=True,
        )
        made.append(dest)
    for fmt in ("gnu", "posix"):  # GNU tar's own long-name headers, and pax headers with times
        dest = tmp_path / f"gnu-{fmt}.tar.gz"
        subprocess.run(
            ["tar", f"--format={fmt}", "-czf", dest, "--exclude=.git", "-C", repo, "."], check=True
        )
        made.append(dest)
    for path in made:
        root = extract(path, tmp_path / f"out-{path.name}")
        assert _files(root) == files, path.name
        assert scan(path, ArchiveLimits(max_ratio=100)).files == 3


def test_python_tarfile_archives_extract_in_every_format(tmp_path: Path) -> None:
    # sdists and most Python-made archives are pax (tarfile's default); a 3,000-byte name is under the bound.
    tree = tmp_path / "tree"
    long_name = "/".join(["p" * 200] * 14) + "/m.py"
    files = {"setup.py": "from setuptools import setup\n", LONG: "x = 1\n", "naïve.py": "z = 3\n"}
    write_tree(tree, files)
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        path = tmp_path / f"sdist-{fmt}.tar.gz"
        with tarfile.open(path, "w:gz", format=fmt) as tf:
            tf.add(tree, arcname="pkg-1.0")
            deep = tarfile.TarInfo(f"pkg-1.0/{long_name}")
            deep.size = 3
            tf.addfile(deep, io.BytesIO(b"a=1"))
        summary = scan(path)
        assert summary.files == 4 and summary.bytes == sum(len(v.encode()) for v in files.values()) + 3
        root = extract(path, tmp_path / f"out-{fmt}")
        assert _files(root) == files | {long_name: "a=1"}


def _listing_zip(dest: Path, entries: int, *, zip64: bool = False) -> Path:
    """A zip of one small file whose central directory lists it ``entries`` times under other names: 46
    bytes on disk an entry, some 500 in memory once parsed. Its end record declares at most 65,535
    entries, as the format allows (a zip64 end record, with ``zip64``, declares them all)."""
    data = b"x = 1\n"
    crc, size = zlib.crc32(data), len(data)
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, crc, size, size, 6, 0) + b"app.py" + data
    names = (b"%x" % i for i in range(entries))
    directory = b"".join(
        struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, crc, size, size, len(n), 0, 0, 0, 0, 0, 0
        )
        + n
        for n in names
    )
    where, length = len(local), len(directory)
    tail = b""
    if zip64:
        tail += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, length, where)
        tail += struct.pack("<4sLQL", b"PK\x06\x07", 0, where + length, 1)
        entries, length, where = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    comment = b"built to be refused"
    count = min(entries, 0xFFFF)
    tail += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, length, where, len(comment)) + comment
    dest.write_bytes(local + directory + tail)
    return dest


@pytest.mark.parametrize("zip64", [False, True])
def test_a_zip_listing_too_many_entries_is_refused_before_zipfile_parses_it(
    tmp_path: Path, zip64: bool
) -> None:
    bomb = _listing_zip(tmp_path / "listing.zip", 250_000, zip64=zip64)
    assert bomb.stat().st_size < 15 * MIB
    message, peak = scan_with_peak(bomb)
    assert peak < PEAK_LIMIT, f"reading the bomb peaked at {peak / MIB:.0f} MiB"
    assert message == "archive listing.zip: more than 200000 members; refusing it"


def test_zips_that_zipfile_writes_are_counted_as_it_reads_them(tmp_path: Path) -> None:
    # 65,536 entries: zipfile writes zip64 end records.
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(65_536):
            zf.writestr(f"project/{i}.py", b"")
        zf.comment = b"a comment: the end record is not the last 22 bytes"
    assert scan(path, ArchiveLimits(max_members=65_536)).files == 65_536
    with pytest.raises(RepotuneError, match="more than 65535 members"):
        scan(path, ArchiveLimits(max_members=65_535))
    small = _listing_zip(tmp_path / "small.zip", 3)
    with pytest.raises(RepotuneError, match="corrupt or unreadable: File name in directory"):
        scan(small)  # within the limits, zipfile reads it, and finds its entries name another file
