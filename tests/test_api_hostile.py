"""The upload API against hostile input: archive bombs, deep JSON, racing uploads, option-looking and
internal repository URLs; and what runs leave on disk. Real ``repotune api`` processes on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.api_helpers import (
    TOKEN,
    ApiProcess,
    make_tar_gz,
    running_api,
    serving_in_thread,
    tar_gz_bomb,
    zip_bomb,
)
from tests.conftest import write_tree

from repotune.api.app import create_app
from repotune.api.db import Database
from repotune.api.deps import get_sources
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore
from repotune.sources.archive import ArchiveSummary, extract, scan

MIB = 1024 * 1024


def _error(response: httpx.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]["message"]


def _upload(client: httpx.Client, path: Path) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post("/v1/sources", files={"file": (path.name, handle, "application/gzip")})


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API with today's default limits (none overridden)."""
    with running_api(tmp_path_factory.mktemp("hostile-api")) as server:
        yield server


def _root(server: ApiProcess) -> Path:
    return server.log.parent


@pytest.mark.integration
def test_the_same_archive_uploaded_8_times_at_once_is_stored_once(api: ApiProcess, tmp_path: Path) -> None:
    for round_ in range(3):
        tree = tmp_path / f"tree{round_}"
        write_tree(tree, {"README.md": f"# round {round_}\n", "src/app.py": "print('hi')\n" * 2000})
        archive = make_tar_gz(tree, tmp_path / f"project{round_}.tar.gz")
        start = threading.Barrier(8)

        def upload(_: int, archive: Path = archive, start: threading.Barrier = start) -> httpx.Response:
            with api.client() as client:
                start.wait()
                return _upload(client, archive)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(upload, range(8)))
        assert [a.status_code for a in answers if a.status_code not in (200, 201)] == [], [
            a.text for a in answers
        ]
        assert len({a.json()["id"] for a in answers}) == 1
        assert sorted(a.json()["created_now"] for a in answers) == [False] * 7 + [True]
        source_id = answers[0].json()["id"]
        assert (Path(answers[0].json()["stored"]) / "archive.tar.gz").read_bytes() == archive.read_bytes()
    stored = sorted(os.listdir(_root(api) / "store" / "sources"))
    assert len(stored) == 3 and source_id in stored and not [n for n in stored if n.startswith(".")]
    assert os.listdir(_root(api) / "work" / "tmp") == []


@pytest.mark.integration
def test_a_1_gib_zip_bomb_is_refused_by_the_default_limits(api: ApiProcess, tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path / "bomb.zip", 1024 * MIB)
    assert bomb.stat().st_size < 1.1 * MIB
    with api.client() as client:
        message = _error(_upload(client, bomb), 422, "unsafe_or_invalid_archive")
        assert "bomb.zip" in message and "more than 100 times" in message
        assert client.get("/healthz").status_code == 200
    assert not (_root(api) / "store" / "sources" / hashlib.sha256(bomb.read_bytes()).hexdigest()).exists()
    assert os.listdir(_root(api) / "work" / "tmp") == []


@pytest.mark.integration
def test_one_bomb_member_among_incompressible_ones_is_refused(api: ApiProcess, tmp_path: Path) -> None:
    # 30 MiB of noise stored as is, then 200 MiB of zeros in 200 KiB: 7.6 times over all, 1,000 times
    # for the zeros' member, and 230 MiB in all, under the 1 GiB expansion limit.
    mixed = zip_bomb(tmp_path / "mixed.zip", 200 * MIB, padding_bytes=30 * MIB)
    with api.client() as client:
        message = _error(_upload(client, mixed), 422, "unsafe_or_invalid_archive")
    assert "member 'project/zeros.txt'" in message


@pytest.mark.integration
def test_a_tar_gz_bomb_is_refused_by_the_whole_streams_ratio(api: ApiProcess, tmp_path: Path) -> None:
    bomb = tar_gz_bomb(tmp_path / "bomb.tar.gz", 200 * MIB)
    with api.client() as client:
        message = _error(_upload(client, bomb), 422, "unsafe_or_invalid_archive")
    assert "the archive expands more than 100 times" in message


def test_a_scan_counts_what_extracting_writes_and_writes_nothing(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_tree(tree, {"README.md": "# x\n", "src/a.py": "a = 1\n" * 1000, "src/b/c.txt": "c"})
    archive = make_tar_gz(tree, tmp_path / "x.tar.gz")
    before = sorted(tmp_path.rglob("*"))
    summary = scan(archive)
    assert sorted(tmp_path.rglob("*")) == before
    root = extract(archive, tmp_path / "out")
    files = [p for p in root.rglob("*") if p.is_file()]
    assert (summary.files, summary.bytes) == (len(files), sum(p.stat().st_size for p in files)) == (3, 6005)


def test_the_default_limits_are_modest() -> None:
    settings = ApiSettings(store="/tmp/x", work_dir=Path("/tmp/x"), db_path=Path("/tmp/x/db"), tokens=("t",))
    assert settings.max_expanded_bytes == 1024 * MIB and settings.max_compression_ratio == 100


@pytest.mark.integration
def test_health_is_answered_while_an_upload_is_being_checked(tmp_path: Path) -> None:
    """The archive check runs in a worker thread: held there on purpose (the store below waits for the
    test's signal inside its check), the server must still answer /healthz. Were the check on the event
    loop, the health request would wait for it and time out."""
    settings = ApiSettings(
        store=str(tmp_path / "store"), work_dir=tmp_path / "work", db_path=tmp_path / "db", tokens=(TOKEN,)
    )
    entered, release = threading.Event(), threading.Event()

    class HeldStore(SourceStore):
        def _check(self, archive: Path) -> ArchiveSummary:
            entered.set()
            assert release.wait(60), "the test never let the check go on"
            return super()._check(archive)

    tree = tmp_path / "tree"
    write_tree(tree, {"README.md": "# held\n"})
    archive = make_tar_gz(tree, tmp_path / "held.tar.gz")
    app = create_app(settings)
    held = HeldStore(settings, Database(settings.db_path))
    app.dependency_overrides[get_sources] = lambda: held
    with serving_in_thread(app) as url, ThreadPoolExecutor(1) as pool:
        headers = {"Authorization": f"Bearer {TOKEN}"}

        def upload() -> httpx.Response:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                return _upload(client, archive)

        pending = pool.submit(upload)
        try:
            assert entered.wait(60), "the upload never reached its check"
            health = httpx.get(f"{url}/healthz", timeout=10)
        finally:
            release.set()
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert pending.result().status_code == 201


@pytest.mark.integration
def test_deeply_nested_json_is_a_400_in_the_apis_error_body(api: ApiProcess) -> None:
    deep = b'{"repo_url": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    json_type = {"Content-Type": "application/json"}
    with api.client() as client:
        for path in ("/v1/sources", "/v1/runs", "/v1/completions"):
            assert "deeper than 32 levels" in _error(
                client.post(path, content=deep, headers=json_type), 400, "json_too_deep"
            )
        # Brackets inside strings are text, not levels; 20 real levels are only a wrong body.
        text = {"repo_url": "[" * 5000, "ref": "main"}
        _error(client.post("/v1/sources", json=text), 422, "invalid_request")
        nested = b'{"source_id": ' + b"[" * 20 + b"]" * 20 + b', "recipe": "tiny-cpu"}'
        _error(client.post("/v1/runs", content=nested, headers=json_type), 422, "invalid_request")
        # A body past 16 MiB is refused before it is read whole, with or without a declared length.
        huge = b'{"prompt": "' + b"x" * (17 * MIB) + b'"}'
        _error(client.post("/v1/completions", content=huge, headers=json_type), 413, "request_too_large")
        chunks = (huge[i : i + MIB] for i in range(0, len(huge), MIB))
        _error(client.post("/v1/completions", content=chunks, headers=json_type), 413, "request_too_large")
        assert client.get("/healthz").status_code == 200
    with api.client(token=None) as anonymous:  # the token is checked before the body is read
        _error(anonymous.post("/v1/runs", content=deep, headers=json_type), 401, "unauthorized")
