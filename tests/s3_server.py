"""A real S3 server on 127.0.0.1 for integration tests: SeaweedFS (the store KFP bundles), one per session.

    with running_s3_server() as endpoint_url:          # http://127.0.0.1:PORT, every bucket emptied
        with s3_environment(endpoint_url):              # AWS_* and S3_ENDPOINT_URL set, then restored
            ...

The server starts on first use (about 5 s) through :mod:`repotune.pipelines.seaweedfs`, the code that
``repotune run --local-s3`` uses, and stops at the end of the session (``conftest.py``'s
``_stop_shared_s3_server``); each ``running_s3_server()`` block begins by deleting every bucket, so a
test sees an empty store as it did with one server per test. It accepts exactly :data:`CREDENTIALS`.

moto is no longer needed: the faults the storage tests inject (a SlowDown, a reset connection, an
AccessDenied) are raised by a wrapper around a real client (``tests/test_storage.py``'s ``FailFirst``),
and a dead endpoint is a closed port (:func:`closed_port_url`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from repotune.pipelines import seaweedfs

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "repotune-test",
    "AWS_SECRET_ACCESS_KEY": "repotune-test-secret",
    "AWS_REGION": seaweedfs.REGION,
}
ENV_VARS = (
    *CREDENTIALS,
    "S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
)

_shared: tuple[contextlib.ExitStack, seaweedfs.S3Server] | None = None


def shared_server() -> seaweedfs.S3Server:
    """The session's SeaweedFS, started on first use, with its data in a temporary folder."""
    global _shared
    if _shared is None:
        stack = contextlib.ExitStack()
        folder = Path(tempfile.mkdtemp(prefix="repotune-test-s3-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        keys = (CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        try:
            server = stack.enter_context(seaweedfs.running(folder, credentials=keys))
        except BaseException:
            stack.close()
            raise
        _shared = (stack, server)
    return _shared[1]


def stop_shared_server() -> None:
    """Stops the session's server, if one was started."""
    global _shared
    if _shared is not None:
        stack, _shared = _shared[0], None
        stack.close()


@contextlib.contextmanager
def running_s3_server() -> Iterator[str]:
    """The endpoint URL of the session's S3 server, with every bucket deleted first."""
    server = shared_server()
    reset(server.endpoint)
    yield server.endpoint


@contextlib.contextmanager
def s3_environment(endpoint_url: str | None) -> Iterator[None]:
    """Sets the variables ``repotune.storage.client_from_env`` reads (none for the endpoint when None)."""
    saved = {name: os.environ.get(name) for name in ENV_VARS}
    try:
        for name in ENV_VARS:
            os.environ.pop(name, None)
        os.environ.update(CREDENTIALS)
        if endpoint_url is not None:
            os.environ["S3_ENDPOINT_URL"] = endpoint_url
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reset(endpoint_url: str) -> None:
    """Deletes every bucket with everything in it (SeaweedFS deletes a non-empty bucket whole)."""
    server = shared_server()
    assert endpoint_url == server.endpoint, "reset() is for the session's server"
    client = seaweedfs.client(server)
    for bucket in client.list_buckets():
        client.remove_bucket(bucket.name)


def closed_port_url() -> str:
    """An http://127.0.0.1:PORT URL where nothing listens (the port was free a moment ago)."""
    from tests.mlflow_server import free_port

    return f"http://127.0.0.1:{free_port()}"
