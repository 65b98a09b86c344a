"""An S3-compatible server on 127.0.0.1 for integration tests: moto's, in a thread of this process.

    with running_s3_server() as endpoint_url:          # http://127.0.0.1:PORT
        with s3_environment(endpoint_url):              # AWS_* and S3_ENDPOINT_URL set, then restored
            ...

moto keeps its state per process, not per server: :func:`reset` empties every bucket between tests.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from collections.abc import Iterator

from moto.server import ThreadedMotoServer

# moto accepts any credentials; these only have to be present and consistent.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "repotune-test",
    "AWS_SECRET_ACCESS_KEY": "repotune-test-secret",
    "AWS_REGION": "us-east-1",
}
ENV_VARS = (
    *CREDENTIALS,
    "S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
)


@contextlib.contextmanager
def running_s3_server() -> Iterator[str]:
    """Starts moto's S3 server on a free port of 127.0.0.1 and yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


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
    """Drops every bucket and object the server holds (moto's own reset route)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def closed_port_url() -> str:
    """An http://127.0.0.1:PORT URL where nothing listens (the port was free a moment ago)."""
    from tests.mlflow_server import free_port

    return f"http://127.0.0.1:{free_port()}"
