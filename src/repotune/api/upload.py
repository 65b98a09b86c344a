"""Receive a multipart/form-data archive upload as a stream: chunks go to a temporary file while they are
hashed and counted, so memory stays flat whatever the size, and an upload over the cap stops early.

Starlette's own form parser spools files without a size cap and hashes nothing, so the body is fed to
python-multipart's streaming parser here instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from repotune.api.errors import ApiError

log = logging.getLogger("repotune.api")

FILE_FIELD = "file"
# An upload being received is the file PARTIAL_PREFIX*PARTIAL_SUFFIX in the upload folder: removed when
# it fails and renamed when it is stored, so only a killed API leaves one behind.
PARTIAL_PREFIX, PARTIAL_SUFFIX = "upload-", ".part"
# Room for the multipart envelope (boundaries, part headers, small fields) beyond the file itself.
ENVELOPE_BYTES = 64 * 1024
# After an upload passes the cap, up to this many more bytes are read and discarded so the client gets
# the 413 answer instead of a reset connection; past it the connection is simply closed.
DRAIN_BYTES = 16 * 1024 * 1024
MAX_FIELDS = 16


@dataclass(frozen=True)
class Upload:
    path: Path
    """The received file, in the upload folder; the caller removes it."""
    filename: str
    """The client's file name, reduced to its last component (for the record only, never for paths)."""
    size: int
    """Bytes received."""
    sha256: str
    """Hex SHA-256 of the bytes received."""


class _TooLarge(Exception):
    pass


class _Receiver:
    """python-multipart callbacks that write the ``file`` part to disk and refuse everything unusual."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.header_name = self.header_value = b""
        self.disposition = b""
        self.in_file = False
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.digest = hashlib.sha256()
        self.file_complete = False
        self.fields = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self.disposition, self.in_file = b"", False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self.fields += 1
        if self.fields > MAX_FIELDS:
            raise ApiError(400, "invalid_multipart", f"more than {MAX_FIELDS} form fields")
        if name != FILE_FIELD:
            return  # other fields are ignored; their bytes still count against the body cap
        if self.path is not None:
            raise ApiError(400, "invalid_multipart", "send one archive per request (one 'file' part)")
        raw_name = options.get(b"filename", b"").decode("utf-8", "replace")
        self.filename = PurePosixPath(raw_name.replace("\\", "/")).name[:255]
        fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX, dir=self.folder)
        self.file, self.path, self.in_file = os.fdopen(fd, "wb"), Path(tmp), True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self.in_file or self.file is None:
            return
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise _TooLarge
        self.digest.update(chunk)
        self.file.write(chunk)

    def on_part_end(self) -> None:
        if self.in_file:
            self.file_complete, self.in_file = True, False

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(
        413,
        "upload_too_large",
        f"the upload is larger than {max_bytes} bytes ({max_bytes / 2**20:.0f} MiB, "
        "REPOTUNE_API_MAX_UPLOAD_MB); nothing was kept",
    )


async def receive_archive(
    content_type: str, content_length: str | None, stream: AsyncIterator[bytes], folder: Path, max_bytes: int
) -> Upload:
    """Reads a multipart/form-data body whose ``file`` part is the archive into a file under ``folder``.

    Raises ApiError: 413 past ``max_bytes`` (the partial file is removed), 400 for a malformed body,
    422 when there is no ``file`` part.
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "multipart/form-data without a boundary parameter")
    if (
        content_length is not None
        and content_length.isdigit()
        and int(content_length) > max_bytes + (ENVELOPE_BYTES)
    ):
        # Refused before reading: the declared size alone is over the cap.
        raise _too_large(max_bytes)
    folder.mkdir(parents=True, exist_ok=True)
    receiver = _Receiver(folder, max_bytes)
    total = 0
    try:
        try:
            parser = MultipartParser(boundary, receiver.callbacks())
        except FormParserError as exc:
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
        async for chunk in stream:
            total += len(chunk)
            if total > max_bytes + ENVELOPE_BYTES:
                raise _TooLarge
            parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        receiver.discard()
        drained = 0
        with contextlib.suppress(Exception):
            async for chunk in stream:
                drained += len(chunk)
                if drained > DRAIN_BYTES:
                    break
        raise _too_large(max_bytes) from None
    except FormParserError as exc:
        receiver.discard()
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        # Not the server's error: one line in its log, and an answer that no one will read.
        receiver.discard()
        log.warning("an upload stopped after %d bytes: the client disconnected; nothing was kept", total)
        raise ApiError(400, "client_disconnected", "the client disconnected during the upload") from None
    except BaseException:
        receiver.discard()
        raise
    if receiver.file is not None:
        receiver.file.close()
    if receiver.path is None:
        raise ApiError(
            422,
            "missing_file",
            f"no '{FILE_FIELD}' part: upload the archive as the form field '{FILE_FIELD}'",
        )
    if not receiver.file_complete:
        receiver.discard()
        raise ApiError(400, "invalid_multipart", "the body ended before the 'file' part was complete")
    return Upload(receiver.path, receiver.filename, receiver.size, receiver.digest.hexdigest())


def remove_partial_uploads(folder: Path) -> list[Path]:
    """Removes the partial uploads an API killed while receiving them left in ``folder`` (its files
    named as :class:`_Receiver` names them, nothing else); returns them. For the API's start, before
    it receives anything."""
    removed = []
    for path in folder.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
