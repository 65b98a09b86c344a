"""Local paths and ``s3://`` URIs behind one module (MinIO, SeaweedFS, AWS S3 alike), through ``minio``.

Which server is a matter of configuration (environment variables, read by :func:`client_from_env`):

    S3_ENDPOINT_URL or AWS_ENDPOINT_URL   http://host:port or https://host[:port]; default AWS S3
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (optional)
    AWS_REGION or AWS_DEFAULT_REGION      optional; without it the client asks the server per bucket

A folder is uploaded as one object per file and then a ``_COMPLETE`` marker object, written last, that
lists every file and its size. Readers treat a prefix without the marker as absent, so a reader never
sees a half-uploaded folder, and a downloader fetches exactly the files the marker lists (objects left
over from an earlier, interrupted upload to the same prefix are ignored).

Large files: ``minio`` (7.2) uploads a file of at most one part in a single PUT and anything larger as a
multipart upload. With ``part_size=0`` (the default here, as in minio) it picks the smallest multiple of
5 MiB that keeps the upload within 10,000 parts: 5 MiB parts up to about 48.8 GiB, so a 12 MiB file goes
as three parts (5 + 5 + 2 MiB). An explicit ``part_size`` must lie between 5 MiB and 5 GiB. Up to three
parts go in parallel, each held in memory; a failed multipart upload is aborted by minio, and a retry
here sends the whole file again.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from repotune.errors import RepotuneError

log = logging.getLogger(__name__)

MARKER = "_COMPLETE"
S3_SCHEME = "s3://"
MINIO_SCHEME = "minio://"
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
ENDPOINT_VARS = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")

# Connect timeout short enough that a wrong or dead endpoint fails within seconds; the read timeout is
# per socket read (not per request) and long, because a server may take a while to answer a
# CompleteMultipartUpload of a large object.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0

# S3 error codes that mean "try again later" rather than "this request is wrong".
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling", "ThrottlingException"}
)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")

T = TypeVar("T")


class PublishError(RepotuneError):
    """Output that was to go to object storage did not get there, after the retries the policy allows.

    What was to be published is still complete where it was written; ``destination`` names where it
    should have gone. Stages that publish let it through, so a run that was asked to publish and did
    not ends with a non-zero exit (or a failed pipeline step) rather than a warning in a log.
    """

    def __init__(self, message: str, *, destination: str) -> None:
        super().__init__(message)
        self.destination = destination


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry an object-store call that failed for a transient reason."""

    attempts: int = 5
    """Tries in all, the first one included."""
    first_wait_s: float = 0.5
    """Wait before the second try, in seconds; it doubles for each further try (with random jitter)."""
    max_wait_s: float = 8.0
    """Longest single wait, in seconds."""
    total_wait_s: float = 20.0
    """Longest time spent waiting across all tries of one call, in seconds; gives up rather than exceed it."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.first_wait_s, self.max_wait_s, self.total_wait_s) < 0:
            raise ValueError("waits must not be negative")


RETRY = RetryPolicy()


def is_s3_uri(value: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URIs and KFP's ``minio://`` artifact URIs; False for local paths."""
    return isinstance(value, str) and value.startswith((S3_SCHEME, MINIO_SCHEME))


def minio_to_s3(uri: str) -> str:
    """KFP's ``minio://bucket/key`` artifact URI as the ``s3://bucket/key`` URI KServe understands."""
    if uri.startswith(MINIO_SCHEME):
        return S3_SCHEME + uri[len(MINIO_SCHEME) :]
    if uri.startswith(S3_SCHEME):
        return uri
    raise RepotuneError(f"not a minio:// or s3:// URI: {uri!r}")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ``minio://`` is accepted too.

    The prefix keeps a trailing slash if the URI has one and is ``""`` for the bucket itself.
    """
    if not is_s3_uri(uri):
        raise RepotuneError(f"not an s3:// URI: {uri!r} (expected s3://BUCKET/PREFIX)")
    bucket, _, prefix = minio_to_s3(uri)[len(S3_SCHEME) :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise RepotuneError(f"{uri!r}: {bucket!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    return bucket, prefix.lstrip("/")


def _dir_prefix(prefix: str) -> str:
    """A key prefix that names a folder: empty (the bucket) or ending in one slash."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def endpoint_url() -> str | None:
    """The S3 endpoint URL from ``S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``; None means AWS."""
    return next((os.environ[name] for name in ENDPOINT_VARS if os.environ.get(name)), None)


def client_from_env(*, check_reachable: bool = True) -> Minio:
    """A ``Minio`` client configured from the environment (see the module docstring).

    With ``check_reachable`` it opens (and closes) a TCP connection to the endpoint first, so a wrong
    or dead endpoint is reported at once, by name, rather than on the first upload.
    """
    endpoint_var = next((name for name in ENDPOINT_VARS if os.environ.get(name)), None)
    endpoint_url = os.environ[endpoint_var] if endpoint_var else DEFAULT_ENDPOINT
    host, port, secure = _split_endpoint(endpoint_url, endpoint_var)
    access_key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
    for name, value in (("AWS_ACCESS_KEY_ID", access_key), ("AWS_SECRET_ACCESS_KEY", secret_key)):
        if not value:
            raise RepotuneError(f"{name} is not set: the object store at {endpoint_url} needs credentials")
    region = next((os.environ[name] for name in REGION_VARS if os.environ.get(name)), None)
    if check_reachable:
        _check_reachable(host, port, endpoint_url, endpoint_var)
    return Minio(
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",  # an IPv6 literal needs its brackets
        access_key=access_key,
        secret_key=secret_key,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        secure=secure,
        region=region,
        http_client=http_client(),
    )


def http_client() -> urllib3.PoolManager:
    """The HTTP pool for ``Minio``: short connect timeout, and no retries of its own.

    minio's default pool retries 5 times inside urllib3 with a 5-minute connect timeout, so a dead
    endpoint takes many minutes to report; retries happen here instead (:class:`RetryPolicy`), where
    they are bounded, logged, and cover S3's SlowDown as well.
    """
    import certifi

    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=False,
    )


def _split_endpoint(url: str, variable: str | None) -> tuple[str, int, bool]:
    source = f" (from {variable})" if variable else ""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RepotuneError(f"endpoint {url!r}{source} must look like http://host:port or https://host")
    if parts.path.strip("/"):
        raise RepotuneError(f"endpoint {url!r}{source} must not have a path; put the bucket in the s3:// URI")
    try:
        port = parts.port
    except ValueError as exc:
        raise RepotuneError(f"endpoint {url!r}{source}: {exc}") from None
    secure = parts.scheme == "https"
    return parts.hostname, port or (443 if secure else 80), secure


def _check_reachable(host: str, port: int, url: str, variable: str | None) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        source = f" (set by {variable})" if variable else " (set S3_ENDPOINT_URL to use another)"
        raise RepotuneError(f"cannot reach the object store at {url}{source}: {exc}") from None


def _endpoint(client: Any) -> str:
    # minio keeps the endpoint in a private attribute; only used to word error messages.
    base = getattr(client, "_base_url", None)
    host = getattr(base, "host", None)
    if not host:
        return "the object store"
    return f"{'https' if getattr(base, 'is_https', True) else 'http'}://{host}"


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", None)
        return exc.code in _TRANSIENT_CODES or (status is not None and status >= 500)
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        # a non-XML answer, typically a proxy's 502/503 page; minio keeps the status privately
        return getattr(exc, "_code", 0) >= 500
    return False


def _call(client: Any, what: str, fn: Callable[[], T], retry: RetryPolicy) -> T:
    """``fn()`` with retries on transient errors; other and final failures become RepotuneError.

    ``fn`` must be safe to repeat (each try re-opens files and streams).
    """
    waited = 0.0
    for attempt in range(1, retry.attempts + 1):
        try:
            return fn()
        except (MinioException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            wait = min(retry.max_wait_s, retry.first_wait_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            if not _is_transient(exc) or attempt == retry.attempts or waited + wait > retry.total_wait_s:
                raise _user_error(client, what, exc, attempt) from exc
            log.warning(
                "%s: %s; retrying in %.1f s (try %d of %d)",
                what,
                _reason(exc),
                wait,
                attempt + 1,
                retry.attempts,
            )
            time.sleep(wait)
            waited += wait
    raise AssertionError("unreachable")  # the loop returns or raises


def _reason(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _user_error(client: Any, what: str, exc: BaseException, attempts: int) -> RepotuneError:
    endpoint = _endpoint(client)
    tries = f" after {attempts} tries" if attempts > 1 else ""
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return RepotuneError(f"{what}: cannot reach the object store at {endpoint}{tries}: {_reason(exc)}")
    if isinstance(exc, S3Error) and exc.code == "NoSuchBucket":
        return RepotuneError(f"{what}: bucket {exc.bucket_name!r} does not exist at {endpoint}")
    if isinstance(exc, S3Error) and exc.code in (
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ):
        return RepotuneError(
            f"{what}: {exc.code} from {endpoint}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "and the bucket's permissions"
        )
    return RepotuneError(f"{what}: {_reason(exc)} (from {endpoint}{tries})")


def _client(client: Minio | None) -> Minio:
    return client if client is not None else client_from_env()


def upload_file(
    local: str | os.PathLike[str],
    uri: str,
    *,
    client: Minio | None = None,
    part_size: int = 0,
    retry: RetryPolicy = RETRY,
) -> str:
    """Uploads one file to ``uri`` (a ``.../`` URI means "into this folder, same name"); returns the URI.

    One object is all-or-nothing in S3 (a multipart upload becomes visible only when completed), so a
    single file needs no marker.
    """
    path = Path(local)
    if not path.is_file():
        raise RepotuneError(f"{path} is not a file")
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        key = f"{key}{path.name}"
    dest = f"{S3_SCHEME}{bucket}/{key}"
    with _publishing(dest):
        client = _client(client)
        _require_bucket(client, bucket, f"uploading {path} to {dest}", retry)
        _put_file(client, path, bucket, key, part_size, retry)
    return dest


def _put_file(client: Minio, path: Path, bucket: str, key: str, part_size: int, retry: RetryPolicy) -> None:
    _call(
        client,
        f"uploading {path} to s3://{bucket}/{key}",
        lambda: client.fput_object(bucket, key, str(path), part_size=part_size),
        retry,
    )


def upload_dir(
    local_dir: str | os.PathLike[str],
    uri: str,
    *,
    client: Minio | None = None,
    part_size: int = 0,
    retry: RetryPolicy = RETRY,
) -> dict[str, Any]:
    """Uploads every file under ``local_dir`` to the prefix ``uri``, then the ``_COMPLETE`` marker.

    Any marker already there is removed first, so while the upload runs the prefix reads as absent.
    Returns the marker's content: ``files`` (relative path and size in bytes, sorted), ``total_bytes``
    and ``completed_at`` (UTC, ISO 8601).
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise RepotuneError(f"{root} is not a folder")
    bucket, prefix = parse_s3_uri(uri)
    prefix = _dir_prefix(prefix)
    files = _local_files(root)
    with _publishing(f"{S3_SCHEME}{bucket}/{prefix}"):
        client = _client(client)
        _require_bucket(client, bucket, f"uploading {root} to s3://{bucket}/{prefix}", retry)
        return _upload_files(client, root, files, bucket, prefix, part_size, retry)


def _require_bucket(client: Minio, bucket: str, what: str, retry: RetryPolicy) -> None:
    """Refuses a bucket that is not there before the first byte goes out.

    MinIO and AWS answer NoSuchBucket to a write into a missing bucket, but SeaweedFS (KFP's own store)
    creates the bucket instead, so a mistyped ``artifacts_root`` would publish somewhere nobody looks.
    A credential allowed to write objects but not to look at the bucket (AccessDenied) is let through.
    """
    try:
        found = _call(client, what, lambda: client.bucket_exists(bucket), retry)
    except RepotuneError as exc:
        if isinstance(exc.__cause__, S3Error) and exc.__cause__.code == "AccessDenied":
            return
        raise
    if not found:
        raise RepotuneError(f"{what}: bucket {bucket!r} does not exist at {_endpoint(client)}")


def _upload_files(
    client: Minio,
    root: Path,
    files: list[tuple[str, int]],
    bucket: str,
    prefix: str,
    part_size: int,
    retry: RetryPolicy,
) -> dict[str, Any]:
    _call(
        client,
        f"removing the old marker at s3://{bucket}/{prefix}{MARKER}",
        lambda: client.remove_object(bucket, f"{prefix}{MARKER}"),
        retry,
    )
    for relative, _ in files:
        _put_file(client, root / relative, bucket, f"{prefix}{relative}", part_size, retry)
    marker = {
        "files": [{"path": relative, "size": size} for relative, size in files],
        "total_bytes": sum(size for _, size in files),
        "completed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    body = json.dumps(marker, indent=2, sort_keys=True).encode()
    _call(
        client,
        f"writing s3://{bucket}/{prefix}{MARKER}",
        lambda: client.put_object(
            bucket, f"{prefix}{MARKER}", io.BytesIO(body), len(body), content_type="application/json"
        ),
        retry,
    )
    return marker


@contextlib.contextmanager
def _publishing(destination: str) -> Iterator[None]:
    """Object-store failures inside become :class:`PublishError` (bad local input stays RepotuneError)."""
    try:
        yield
    except PublishError:
        raise
    except RepotuneError as exc:
        raise PublishError(str(exc), destination=destination) from exc


def _local_files(root: Path) -> list[tuple[str, int]]:
    """(relative POSIX path, size) of every regular file under ``root``, sorted; a local marker is skipped."""
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        # a stray local _COMPLETE would be overwritten by the real marker, so it is not uploaded
        if path.is_file() and relative != MARKER:
            files.append((relative, path.stat().st_size))
    return files


def read_marker(
    uri: str, *, client: Minio | None = None, retry: RetryPolicy = RETRY
) -> dict[str, Any] | None:
    """The ``_COMPLETE`` marker of the prefix ``uri``, or None when the prefix is absent or unfinished."""
    bucket, prefix = parse_s3_uri(uri)
    where = f"{S3_SCHEME}{bucket}/{_dir_prefix(prefix)}{MARKER}"
    marker = read_json(where, client=client, retry=retry)
    if marker is not None and (not isinstance(marker, dict) or not isinstance(marker.get("files"), list)):
        raise RepotuneError(f"{where} has no file list; was it written by repotune?")
    return marker


def read_json(uri: str, *, client: Minio | None = None, retry: RetryPolicy = RETRY) -> Any | None:
    """The JSON document in the object ``uri``, or None when there is no such object (or bucket)."""
    bucket, key = parse_s3_uri(uri)
    client = _client(client)

    def get() -> bytes | None:
        try:
            response = client.get_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    data = _call(client, f"reading s3://{bucket}/{key}", get, retry)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        raise RepotuneError(f"s3://{bucket}/{key} is not JSON; was it written by repotune?") from None


def remove_dir(uri: str, *, client: Minio | None = None, retry: RetryPolicy = RETRY) -> int:
    """Deletes the folder at the prefix ``uri``; returns how many objects it held (0: nothing there).

    The ``_COMPLETE`` marker goes first, so that a reader never takes a half-deleted folder for a
    finished upload (one cut short reads as an unfinished upload, which readers skip), then every
    other object under the prefix, in batches of up to 1,000 (S3's DeleteObjects).
    """
    bucket, prefix = parse_s3_uri(uri)
    prefix = _dir_prefix(prefix)
    if not prefix:
        raise RepotuneError(f"refusing to delete the whole bucket s3://{bucket}/: name a folder in it")
    client = _client(client)
    keys = [obj.object_name for obj in _list_objects(client, bucket, prefix, retry, recursive=True)]
    if not keys:
        return 0
    marker = f"{prefix}{MARKER}"
    if marker in keys:
        _call(client, f"removing s3://{bucket}/{marker}", lambda: client.remove_object(bucket, marker), retry)

    def remove_rest() -> None:
        rest = [DeleteObject(key) for key in keys if key != marker]
        errors = list(client.remove_objects(bucket, rest))  # lazy: the requests go out as it is read
        if errors:
            raise RepotuneError(
                f"removing s3://{bucket}/{prefix}: {len(errors)} objects not deleted, the first "
                f"{errors[0].name} ({errors[0].code}: {errors[0].message})"
            )

    _call(client, f"removing s3://{bucket}/{prefix}", remove_rest, retry)
    return len(keys)


def exists_complete(uri: str, *, client: Minio | None = None, retry: RetryPolicy = RETRY) -> bool:
    """True when the prefix ``uri`` holds a finished upload (its ``_COMPLETE`` marker exists)."""
    bucket, prefix = parse_s3_uri(uri)
    return _object_exists(_client(client), bucket, f"{_dir_prefix(prefix)}{MARKER}", retry)


def prefix_etags(uri: str, *, client: Minio | None = None, retry: RetryPolicy = RETRY) -> dict[str, str]:
    """The ETag of every object under the prefix ``uri`` (its marker included), by key relative to it.

    An ETag changes whenever its object's content does: equal maps mean an unchanged folder.
    """
    bucket, prefix = parse_s3_uri(uri)
    prefix = _dir_prefix(prefix)
    objects = _list_objects(_client(client), bucket, prefix, retry, recursive=True)
    return {obj.object_name[len(prefix) :]: str(obj.etag).strip('"') for obj in objects if not obj.is_dir}


def _list_objects(client: Minio, bucket: str, prefix: str, retry: RetryPolicy, *, recursive: bool) -> list:
    return _call(
        client,
        f"listing s3://{bucket}/{prefix}",
        lambda: list(client.list_objects(bucket, prefix=prefix, recursive=recursive)),
        retry,
    )


def _list_keys(client: Minio, bucket: str, prefix: str, retry: RetryPolicy) -> list[tuple[str, int]]:
    objects = _list_objects(client, bucket, prefix, retry, recursive=True)
    return [
        (obj.object_name[len(prefix) :], obj.size or 0)
        for obj in objects
        if not obj.is_dir and obj.object_name != f"{prefix}{MARKER}"
    ]


def download_dir(
    uri: str,
    local_dir: str | os.PathLike[str],
    *,
    require_complete: bool = True,
    client: Minio | None = None,
    retry: RetryPolicy = RETRY,
) -> Path:
    """Downloads the folder at the prefix ``uri`` into ``local_dir`` and returns ``local_dir``.

    Refuses a prefix without ``_COMPLETE`` unless ``require_complete=False`` (then it takes whatever
    objects are there). Files land in a temporary sibling folder that is renamed into place at the end,
    so ``local_dir`` is either the whole download or untouched; an existing ``local_dir`` is replaced.
    """
    bucket, prefix = parse_s3_uri(uri)
    prefix = _dir_prefix(prefix)
    target = Path(local_dir)
    client = _client(client)
    marker = read_marker(uri, client=client, retry=retry)
    if marker is not None:
        files = [(str(entry["path"]), int(entry["size"])) for entry in marker["files"]]
    elif require_complete:
        raise RepotuneError(
            f"s3://{bucket}/{prefix} has no {MARKER} marker: the upload there is missing or unfinished"
        )
    else:
        files = _list_keys(client, bucket, prefix, retry)
        if not files:
            raise RepotuneError(f"s3://{bucket}/{prefix} holds no objects")

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for relative, size in files:
            dest = _inside(staging, relative, uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            key = f"{prefix}{relative}"
            _call(
                client,
                f"downloading s3://{bucket}/{key}",
                lambda key=key, dest=dest: client.fget_object(bucket, key, str(dest)),
                retry,
            )
            if marker is not None and dest.stat().st_size != size:
                raise RepotuneError(
                    f"s3://{bucket}/{key} has {dest.stat().st_size} bytes, its {MARKER} marker says {size}"
                )
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _inside(root: Path, relative: str, uri: str) -> Path:
    """``root / relative``, refusing keys such as ``../x`` that would land outside ``root``."""
    dest = (root / relative).resolve()
    if not dest.is_relative_to(root.resolve()) or not relative:
        raise RepotuneError(f"{uri}: refusing object {relative!r}, it would land outside the target folder")
    return dest


# What rename(2) says when the target is already taken by a folder with files, or by the other type.
_TAKEN = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)
# Rounds of "move the old one aside, rename ours in" lost to other writers before giving up.
_PLACE_ATTEMPTS = 50
_COMPARE_CHUNK = 1 << 20  # bytes read at a time when comparing two copies


def _move_into_place(staging: Path, target: Path) -> None:
    """Renames the complete folder ``staging`` to ``target``; safe with many writers (threads or processes)
    placing the same target at once.

    An absent target is taken in one rename. A target already there with the same content counts as
    success and ``staging`` is dropped, so identical copies racing each other all succeed and readers
    never find the target missing. Other content replaces it: a folder cannot be replaced in one rename,
    so the old one is first moved aside under a name unique to this call (a crash between the two
    renames leaves both copies on disk rather than neither), then removed.
    """
    for _ in range(_PLACE_ATTEMPTS):
        try:
            os.replace(staging, target)
            return
        except OSError as exc:
            if exc.errno not in _TAKEN:
                raise
        if _same_tree(staging, target):
            _remove(staging)
            return
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
        try:
            os.replace(target, old)
        except FileNotFoundError:
            continue  # another writer moved it aside first; start over
        try:
            os.replace(staging, target)
        except OSError as exc:
            if exc.errno not in _TAKEN:
                os.replace(old, target)  # put the old one back rather than leave no target
                raise
            # another writer's complete copy landed between our two renames; compare with that one
            continue
        finally:
            if old.exists() or old.is_symlink():
                _remove(old)
        return
    raise RepotuneError(f"{target}: other writers kept replacing it; gave up after {_PLACE_ATTEMPTS} tries")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _same_tree(left: Path, right: Path) -> bool:
    """True when two folders hold the same names, the same kinds and the same bytes (False when either
    changes or goes away while they are compared)."""
    try:
        if not (left.is_dir() and right.is_dir()) or left.is_symlink() or right.is_symlink():
            return False
        listing = _listing(left)
        if listing != _listing(right):
            return False
        return all(
            _same_bytes(left / name, right / name) for name, (kind, _) in listing.items() if kind == "f"
        )
    except OSError:
        return False


def _listing(root: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            kind = "l" if path.is_symlink() else "d" if path.is_dir() else "f"
            found[path.relative_to(root).as_posix()] = (kind, info.st_size if kind == "f" else 0)
    return found


def _same_bytes(left: Path, right: Path) -> bool:
    with left.open("rb") as a, right.open("rb") as b:
        while True:
            chunk = a.read(_COMPARE_CHUNK)
            if chunk != b.read(_COMPARE_CHUNK):
                return False
            if not chunk:
                return True


def copy_to(
    local_path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    client: Minio | None = None,
    retry: RetryPolicy = RETRY,
) -> str:
    """Copies a local file or folder to ``dest``, a local path or an ``s3://`` URI; returns ``dest``.

    A folder goes to S3 with :func:`upload_dir` (marker last) and to a local path through a temporary
    sibling that is renamed into place; a file goes with :func:`upload_file` or an atomic local copy.
    """
    source = Path(local_path)
    if not source.exists():
        raise RepotuneError(f"{source} does not exist")
    if isinstance(dest, str) and is_s3_uri(dest):
        if source.is_dir():
            upload_dir(source, dest, client=client, retry=retry)
            return dest
        return upload_file(source, dest, client=client, retry=retry)
    _copy_local(source, Path(dest))
    return str(dest)


def fetch(
    src: str | os.PathLike[str],
    local_path: str | os.PathLike[str],
    *,
    client: Minio | None = None,
    retry: RetryPolicy = RETRY,
) -> Path:
    """Brings ``src`` (a local path or an ``s3://`` URI) to ``local_path`` and returns ``local_path``.

    An ``s3://`` prefix with a ``_COMPLETE`` marker becomes a folder; otherwise the URI must name one
    object, which becomes a file. A prefix that holds objects but no marker is refused as unfinished.
    """
    target = Path(local_path)
    if not (isinstance(src, str) and is_s3_uri(src)):
        source = Path(src)
        if not source.exists():
            raise RepotuneError(f"{source} does not exist")
        _copy_local(source, target)
        return target
    client = _client(client)
    if exists_complete(src, client=client, retry=retry):
        return download_dir(src, target, client=client, retry=retry)
    bucket, key = parse_s3_uri(src)
    if key and not key.endswith("/") and _object_exists(client, bucket, key, retry):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            _call(
                client,
                f"downloading {src}",
                lambda: client.fget_object(bucket, key, str(staging)),
                retry,
            )
            os.replace(staging, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
        return target
    # gives the "no _COMPLETE marker" error, which is the likely story for a prefix
    return download_dir(src, target, client=client, retry=retry)


def object_etag(uri: str, *, client: Minio | None = None, retry: RetryPolicy = RETRY) -> str:
    """The ETag of the one object ``uri`` names: changes whenever its content does."""
    client = _client(client)
    bucket, key = parse_s3_uri(uri)
    if not key or not _object_exists(client, bucket, key, retry):
        raise RepotuneError(f"{uri} is not an object in the store")
    stat = _call(client, f"reading {uri}", lambda: client.stat_object(bucket, key), retry)
    return str(stat.etag).strip('"')


def _object_exists(client: Minio, bucket: str, key: str, retry: RetryPolicy) -> bool:
    def stat() -> bool:
        try:
            client.stat_object(bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "ResourceNotFound"):
                return False
            raise
        return True

    return _call(client, f"checking s3://{bucket}/{key}", stat, retry)


def _copy_local(source: Path, target: Path) -> None:
    if source.resolve() == target.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            _move_into_place(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def output_prefix(root: str, source: str, key: str) -> str:
    """``ROOT/<repository>/<key>``: where a run's outputs for one source and revision (and recipe) go."""
    from repotune.sources.slug import source_slug

    return f"{root.rstrip('/')}/{source_slug(source) if source else 'source'}/{key or 'unknown'}"


def publish(
    path: str | os.PathLike[str],
    root: str,
    source: str,
    key: str,
    stage: str,
    *,
    log: Callable[[str], None] = print,
) -> str:
    """Copy a stage's output to ``ROOT/<repository>/<key>/<stage>``; returns the URI, or "" without a root.

    ``root`` is an ``s3://`` URI (or a local folder); ``key`` is the revision for data and the revision
    plus the recipe hash for models, so the prefix is stable for cached pipeline steps. On a cluster
    KFP already stores artifacts in its own bucket; this gives them a readable, per-repository place.
    Raises :class:`PublishError` when the copy does not get there (an unreachable or refusing store,
    a full disk), naming the stage, where its output is, and where it should have gone.
    """
    if not root:
        return ""
    dest = f"{output_prefix(root, source, key)}/{stage}"
    try:
        copy_to(path, dest)
    except (PublishError, OSError) as exc:  # a missing output stays the RepotuneError copy_to gives
        reason = str(exc) if isinstance(exc, PublishError) else f"{type(exc).__name__}: {exc}"
        raise PublishError(
            f"the {stage} output was not published to {dest} (it is complete at {path}): {reason}",
            destination=dest,
        ) from exc
    log(f"published {stage} to {dest}")
    return dest
