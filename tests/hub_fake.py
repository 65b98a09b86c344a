"""A Hugging Face Hub stand-in on 127.0.0.1 for the routes ``huggingface_hub`` calls to create a model
repository, upload a folder in one commit, and read it back.

Routes, in the Hub's shapes (as ``huggingface_hub`` 2.x sends and parses them):

- ``POST /api/repos/create``: ``{"name", "organization", "visibility", "type"}``; 409 (with its
  ``url``) when it exists.
- ``GET /api/models/{repo_id}``: the model's info (``private``, ``sha``, ``siblings``, and ``cardData``
  parsed from README.md's YAML header, as the Hub does).
- ``POST /api/validate-yaml``: ``{"content", "repoType"}``; 400 with ``errors`` for a bad YAML header.
- ``POST /api/models/{repo_id}/preupload/{revision}``: each file's ``uploadMode`` (``lfs`` for the
  binary and large files the Hub's default .gitattributes sends to LFS, else ``regular``).
- ``POST /{repo_id}.git/info/lfs/objects/batch``: the git-lfs batch API, ``basic`` transfer, with
  ``upload`` and ``verify`` actions for objects the store lacks. The upload href is a pre-signed URL, as
  the Hub's S3 URLs are: ``PUT /lfs-upload/{oid}?X-Amz-Signature=...`` needs no Authorization header.
- ``POST /api/models/{repo_id}/commit/{revision}``: the NDJSON commit (``header``, ``file`` base64,
  ``lfsFile`` by sha256, ``deletedFile``); an ``lfsFile`` whose object was never uploaded is refused.
- ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}``: a file, with ``X-Repo-Commit`` and ``ETag``.

Every other request needs ``Authorization: Bearer <token>``. Only the ``main`` revision exists. The Xet
transfer (``hf_xet``, the client's default against huggingface.co) is not spoken here: the client
must run with ``HF_HUB_DISABLE_XET=1``, and a batch request that does not offer ``basic`` is refused.
Unknown routes answer 404 and are recorded in ``unknown``.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import hmac
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

# The LFS patterns of the .gitattributes the Hub writes into a new model repository (abridged).
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite",
    "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*", "*.gguf",
)  # fmt: skip
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends any file over 10 MB to LFS
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Repo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    """Paths whose last commit referenced them as LFS objects."""
    commits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"]


class HubFake:
    """The server's state (``repos``, ``lfs_objects``, ``unknown``) and its address (``url``)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.unknown: list[str] = []
        self.url = ""
        self._lock = threading.Lock()

    def add_repo(self, repo_id: str, *, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        self._commit(repo, "initial commit", {".gitattributes": GITATTRIBUTES.encode()}, set(), [])
        self.repos[repo_id] = repo
        return repo

    def _commit(
        self, repo: Repo, summary: str, files: dict[str, bytes], lfs: set[str], deleted: list[str]
    ) -> str:
        for path in deleted:
            repo.files.pop(path, None)
            repo.lfs_paths.discard(path)
        repo.files.update(files)
        repo.lfs_paths = (repo.lfs_paths - set(files)) | lfs
        parent = repo.commits[-1]["oid"] if repo.commits else ""
        oid = hashlib.sha1(f"{parent}{summary}{sorted(files)}".encode()).hexdigest()
        repo.commits.append({"oid": oid, "summary": summary, "files": sorted(files)})
        return oid

    # The request handling, one method per route; each returns (status, headers, body).

    def handle(
        self, method: str, path: str, query: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        upload = re.fullmatch(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", path)
        if method == "PUT" and upload:
            signature = parse_qs(query).get("X-Amz-Signature", [""])[0]
            if not hmac.compare_digest(signature, self._signature(upload["oid"])):
                return (
                    403,
                    {"Content-Type": "application/xml"},
                    b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
                )
            with self._lock:
                return self._lfs_put(upload["oid"], body)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Invalid credentials in Authorization header")
        routes = [
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", rf"/api/models/{_REPO}", self._info),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", self._lfs_verify),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", self._commit_route),
            ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for verb, pattern, route in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                with self._lock:
                    return route(body=body, **{k: unquote(v) for k, v in match.groupdict().items()})
        self.unknown.append(f"{method} {path}")
        return _error(404, f"no route {method} {path}")

    def _repo(self, repo: str) -> Repo | None:
        return self.repos.get(repo)

    def _create(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            return _error(400, "only model repositories here")
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.repos:
            # The Hub names the existing repository's URL in its 409 (huggingface_hub reads it).
            status, headers, _ = _error(409, "You already created this model repo")
            error = {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
            return status, headers, json.dumps(error).encode()
        # The Hub's default visibility for a new repository is public.
        self.add_repo(repo_id, private=payload.get("visibility", "public") == "private")
        return _json(200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        content = json.loads(body)["content"]
        try:
            _front_matter(content)
        except (yaml.YAMLError, ValueError) as err:
            return _json(400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _info(self, repo: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        found = self._repo(repo)
        if found is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        info = {
            "_id": hashlib.md5(repo.encode()).hexdigest()[:24],
            "id": repo,
            "private": found.private,
            "sha": found.sha,
            "siblings": [{"rfilename": path} for path in sorted(found.files)],
        }
        if "README.md" in found.files:
            info["cardData"] = _front_matter(found.files["README.md"].decode())
        return _json(200, info)

    def _preupload(self, repo: str, rev: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        found = self._repo(repo)
        if found is None or rev != "main":
            return _error(404, "Repository not found", code="RepoNotFound")
        answers = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = (
                any(fnmatch.fnmatch(item["path"].rsplit("/", 1)[-1], p) for p in LFS_PATTERNS)
                or item["size"] >= LFS_MIN_SIZE
                or b"\x00" in sample
            )
            answers.append(
                {"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            )
        return _json(200, {"files": answers, "commitOid": found.sha})

    def _lfs_batch(self, repo: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._repo(repo) is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            return _error(422, "this stand-in speaks only the basic LFS upload transfer")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": self._presigned(obj["oid"]), "header": {}},
                    "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(entry)
        return _json(
            200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json"
        )

    def _signature(self, oid: str) -> str:
        return hmac.new(self.token.encode(), oid.encode(), hashlib.sha256).hexdigest()

    def _presigned(self, oid: str) -> str:
        return f"{self.url}/lfs-upload/{oid}?X-Amz-Expires=900&X-Amz-Signature={self._signature(oid)}"

    def _lfs_put(self, oid: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, "content does not match its oid")
        self.lfs_objects[oid] = body
        return 200, {}, b""

    def _lfs_verify(self, repo: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        payload = json.loads(body)
        stored = self.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            return _error(404, f"object {payload['oid']} not uploaded")
        return _json(200, {"success": True})

    def _commit_route(self, repo: str, rev: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        found = self._repo(repo)
        if found is None or rev != "main":
            return _error(404, "Repository not found", code="RepoNotFound")
        summary, files, lfs, deleted = "", {}, set(), []
        for line in body.decode().splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                summary = value["summary"]
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                stored = self.lfs_objects.get(value["oid"])
                if stored is None or ("size" in value and len(stored) != value["size"]):
                    return _error(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = stored
                lfs.add(value["path"])
            elif item["key"] == "deletedFile":
                deleted.append(value["path"])
            else:
                return _error(400, f"unsupported commit operation {item['key']!r}")
        if not summary:
            return _error(400, "a commit needs a summary")
        oid = self._commit(found, summary, files, lfs, deleted)
        return _json(200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True})

    def _resolve(self, repo: str, rev: str, file: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        found = self._repo(repo)
        if found is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        if rev not in ("main", found.sha):
            return _error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        if file not in found.files:
            return _error(404, "Entry not found", code="EntryNotFound")
        content = found.files[file]
        etag = hashlib.sha256(content).hexdigest() if file in found.lfs_paths else _git_blob_sha(content)
        return 200, {"X-Repo-Commit": found.sha, "ETag": f'"{etag}"'}, content


class _Handler(BaseHTTPRequestHandler):
    hub: HubFake

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        status, headers, content = self.hub.handle(self.command, url.path, url.query, self.headers, body)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def running_hub(token: str) -> Iterator[HubFake]:
    """A ``HubFake`` serving on a free port of 127.0.0.1 until the block ends."""
    hub = HubFake(token)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def _front_matter(content: str) -> dict[str, Any]:
    """The YAML header of a README.md (empty when it has none), as the Hub parses it into cardData."""
    if not content.startswith("---\n"):
        return {}
    header, sep, _ = content[4:].partition("\n---")
    if not sep:
        raise ValueError("the YAML header is not closed by ---")
    data = yaml.safe_load(header) or {}
    if not isinstance(data, dict):
        raise ValueError("the YAML header is not a mapping")
    return data


def _git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _json(
    status: int, payload: Any, content_type: str = "application/json"
) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": content_type}, json.dumps(payload).encode()


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Message": message}
    if code is not None:
        headers["X-Error-Code"] = code
    return status, headers, json.dumps({"error": message}).encode()
