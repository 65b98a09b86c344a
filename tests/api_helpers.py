"""Helpers for the upload API's tests: the API as a real ``repotune api`` process on 127.0.0.1, archives
(honest and hostile) built in temporary folders, and a small upstream model server that echoes requests."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from tests.mlflow_server import free_port

TOKEN = "test-token-0123456789"
MIB = 1024 * 1024


@dataclass
class ApiProcess:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, token: str | None = TOKEN, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def peak_rss_kib(self) -> int:
        """The server process's peak resident memory so far (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


# Where a process writes by default; left unset so that the API's own choices are what the tests see.
_DEFAULT_PLACES = (
    "REPOTUNE_HOME",
    "REPOTUNE_CACHE",
    "HF_HOME",
    "XDG_CACHE_HOME",
    "TMPDIR",
    "MLFLOW_TRACKING_URI",
)


def api_env(root: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test's API: its data under ``root``, and an empty ``root/home`` as HOME, so a
    write anywhere outside the API's folders shows up there."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("REPOTUNE_API_") and k not in _DEFAULT_PLACES
    }
    (root / "home").mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "REPOTUNE_API_TOKENS": f"{TOKEN},second-token",
            "REPOTUNE_API_STORE": str(root / "store"),
            "REPOTUNE_API_WORK_DIR": str(root / "work"),
            "REPOTUNE_API_DB": str(root / "api.sqlite3"),
            "HOME": str(root / "home"),
        }
    )
    env.update(overrides)
    return env


@contextlib.contextmanager
def running_api(root: Path, *extra_args: str, **env_overrides: str) -> Iterator[ApiProcess]:
    """``repotune api`` on a free port of 127.0.0.1 with its data under ``root``; stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / f"api-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "repotune", "api", "--port", str(port), *extra_args],
            env=api_env(root, **env_overrides),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = ApiProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"repotune api exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"repotune api did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown, as Ctrl-C
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def make_tar_gz(folder: Path, dest: Path, prefix: str = "project") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=prefix, filter=lambda info: None if info.name.endswith("/.git") else info)
    return dest


def tar_with_member(dest: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        ok = tarfile.TarInfo("project/README.md")
        ok.size = 6
        tar.addfile(ok, io.BytesIO(b"hello\n"))
        if member.isfile():
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            tar.addfile(member)
    return dest


def _deflated_zeros(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``mib`` MiB of zeros and its CRC-32, built in about a second for 1 GiB.

    After a full flush the compressor starts afresh, so every MiB of zeros compresses to the same
    bytes: one block is made once and repeated (compressing 1 GiB through zipfile takes 20 s here).
    """
    zeros = b"\0" * MIB
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return block * mib + compressor.flush(), crc


def write_zip(dest: Path, members: list[tuple[str, int, bytes, int, int]]) -> Path:
    """A zip written field by field: ``(name, method, stored bytes, crc32, expanded size)`` per member
    (method 0 stored, 8 deflated); for members too big to compress through zipfile in a test."""
    local, central = bytearray(), bytearray()
    for name, method, data, crc, size in members:
        encoded = name.encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size,
                             len(encoded), 0) + encoded + data  # fmt: skip
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data),
                               size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded  # fmt: skip
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(local), 0)
    dest.write_bytes(bytes(local + central + end))
    return dest


def zip_bomb(dest: Path, expanded_bytes: int, *, padding_bytes: int = 0) -> Path:
    """A zip that is small on disk and expands to ``expanded_bytes`` (whole MiB) of zeros; with
    ``padding_bytes``, a second member of that many random (incompressible, stored) bytes, which keeps
    the whole archive's ratio low while the zeros' member's stays a bomb's."""
    data, crc = _deflated_zeros(expanded_bytes // MIB)
    members = [("project/zeros.txt", 8, data, crc, expanded_bytes // MIB * MIB)]
    if padding_bytes:
        noise = os.urandom(padding_bytes)
        members.insert(0, ("project/noise.bin", 0, noise, zlib.crc32(noise), len(noise)))
    return write_zip(dest, members)


def tar_gz_bomb(dest: Path, expanded_bytes: int) -> Path:
    """A .tar.gz with one file of ``expanded_bytes`` (whole MiB) zeros, built from concatenated gzip
    members (which gzip readers take as one stream): the tar header, then one small member per MiB."""
    header = tarfile.TarInfo("project/zeros.txt")
    header.size = expanded_bytes // MIB * MIB
    zeros = gzip.compress(b"\0" * MIB, compresslevel=9, mtime=0)
    with dest.open("wb") as out:
        out.write(gzip.compress(header.tobuf(), mtime=0))
        for _ in range(expanded_bytes // MIB):
            out.write(zeros)
        out.write(gzip.compress(b"\0" * 1024, mtime=0))  # the end-of-archive blocks
    return dest


def long_name_bomb(dest: Path, name_bytes: int) -> Path:
    """A .tar.gz whose first header is a GNU long-name header of ``name_bytes`` (whole MiB) of name, then
    one small member: a few hundred KiB on disk, and as much memory as the name to a reader that holds it."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, name_bytes // MIB * MIB
    name = gzip.compress(b"a" * MIB, compresslevel=9, mtime=0)
    member = tarfile.TarInfo("project/app.py")
    member.size = 4
    with dest.open("wb") as out:
        out.write(gzip.compress(header.tobuf(format=tarfile.GNU_FORMAT), mtime=0))
        for _ in range(name_bytes // MIB):
            out.write(name)
        end = member.tobuf() + b"x=1\n".ljust(tarfile.BLOCKSIZE, b"\0") + b"\0" * 1024
        out.write(gzip.compress(end, mtime=0))
    return dest


def zip_with_symlink(dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("project/README.md", "hello\n")
        link = zipfile.ZipInfo("project/passwd")
        link.external_attr = (0o120777 << 16) | 0
        zf.writestr(link, "/etc/passwd")
    return dest


def multipart_stream(filename: str, chunks: Iterator[bytes], boundary: str = "repotune-test-boundary"):
    """A multipart/form-data body as a generator (sent chunked, without Content-Length), and its type."""

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        yield from chunks
        yield f"\r\n--{boundary}--\r\n".encode()

    return body(), f"multipart/form-data; boundary={boundary}"


@contextlib.contextmanager
def echo_model_server(token: str | None = None) -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 that answers POST .../completions with an OpenAI-shaped completion
    echoing the prompt; yields its base URL and the list of request bodies it received (with the
    request's ``authorization`` header, when it had one). With ``token``, a request without
    ``Authorization: Bearer TOKEN`` is answered 401 as ``repotune serve`` answers it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            entry = {"path": self.path, "body": body}
            if self.headers.get("Authorization") is not None:
                entry["authorization"] = self.headers["Authorization"]
            received.append(entry)
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                refusal = {"error": {"message": "invalid bearer token", "type": "invalid_request_error",
                                     "param": None, "code": "invalid_api_key"}}  # fmt: skip
                self._answer(401, refusal)
                return
            prompt = body.get("prompt")
            self._answer(
                200,
                {
                    "id": "cmpl-test",
                    "object": "text_completion",
                    "model": body.get("model", "echo"),
                    "choices": [{"index": 0, "text": f"echo: {prompt}", "finish_reason": "stop"}],
                },
            )

        def _answer(self, status: int, answer: dict) -> None:
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def serving_in_thread(app, **config: object) -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a thread of this process (so a test can
    reach into it), with ``config`` given to ``uvicorn.Config`` (``root_path``, say); yields the base URL."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", **config)  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def refused(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Asserts the refusal's status and error shape (and code); returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


def upload(client: httpx.Client, path: Path) -> httpx.Response:
    """``POST /v1/sources`` with the archive at ``path``."""
    with path.open("rb") as handle:
        return client.post("/v1/sources", files={"file": (path.name, handle, "application/gzip")})
