"""The upload API: real HTTP requests to ``repotune api`` processes on 127.0.0.1, plus the pure decisions
(how a run that lost its process is settled, which recipes and tokens are accepted) in-process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from tests.api_helpers import (
    TOKEN,
    ApiProcess,
    echo_model_server,
    make_tar_gz,
    multipart_stream,
    refused,
    running_api,
    serving_in_thread,
    tar_with_member,
    upload,
    zip_bomb,
    zip_with_symlink,
)
from tests.conftest import SAMPLE_FILES, write_tree
from tests.s3_server import running_s3_server, s3_environment

from repotune import storage
from repotune.api.app import create_app
from repotune.api.auth import token_matches
from repotune.api.db import Database
from repotune.api.deps import get_runs
from repotune.api.errors import ApiError
from repotune.api.recipes import choose_recipe
from repotune.api.runs import LOST, Runs, process_start, settle
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore, detect_format
from repotune.errors import RepotuneError
from repotune.pipelines.status import RunStatus
from repotune.train.recipe import shipped_recipes_dir

MIB = 1024 * 1024
TEST_NET = "192.0.2.0/24"


@pytest.fixture(scope="module")
def model_server() -> Iterator[tuple[str, list[dict]]]:
    with echo_model_server() as server:
        yield server


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, model_server: tuple[str, list[dict]]
) -> Iterator[ApiProcess]:
    root = tmp_path_factory.mktemp("api")
    with running_api(
        root,
        REPOTUNE_API_MAX_UPLOAD_MB="64",
        REPOTUNE_API_MAX_EXPANDED_MB="80",
        REPOTUNE_API_MODEL_URL=model_server[0],
        # This machine resolves no public name: repository URLs use TEST-NET-1 addresses, allowed here.
        REPOTUNE_API_SOURCE_NETWORKS=TEST_NET,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def small_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API with a 1 MiB upload cap and no model configured."""
    with running_api(tmp_path_factory.mktemp("small-api"), REPOTUNE_API_MAX_UPLOAD_MB="1") as server:
        yield server


@pytest.fixture
def project_tar(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    write_tree(tree, {k: v for k, v in SAMPLE_FILES.items() if isinstance(v, str)})
    return make_tar_gz(tree, tmp_path / "project.tar.gz")


@pytest.mark.integration
def test_health_needs_no_token_and_the_spec_is_served(api: ApiProcess) -> None:
    with api.client(token=None) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        spec = client.get("/openapi.json").json()
    assert {"/v1/sources", "/v1/runs", "/v1/runs/{run_id}/report", "/v1/completions",
            "/v1/runs/{run_id}/cancel"} <= set(spec["paths"])  # fmt: skip
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    # the body guard's answers are documented where a body is read
    for path in ("/v1/runs", "/v1/completions", "/v1/sources"):
        assert {"400", "413"} <= set(spec["paths"][path]["post"]["responses"]), path


@pytest.mark.integration
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x", f"bearer {TOKEN[:-1]}"],
)
def test_a_missing_or_wrong_token_is_401_with_a_challenge(api: ApiProcess, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=api.url, headers=headers) as client:
        for response in (
            client.get("/v1/runs"),
            client.post("/v1/sources", content=b"{not json", headers={"Content-Type": "application/json"}),
            client.get("/v1/no-such-route"),
        ):
            refused(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.integration
def test_every_configured_token_works(api: ApiProcess) -> None:
    for token in (TOKEN, "second-token"):
        with api.client(token=token) as client:
            assert client.get("/v1/runs").status_code == 200


@pytest.mark.integration
def test_a_50_mb_upload_streams_with_flat_memory_and_twice_gives_the_same_id(
    api: ApiProcess, tmp_path: Path
) -> None:
    tree = tmp_path / "big"
    write_tree(tree, {"README.md": "# big\n", "data/blob.bin": os.urandom(50 * MIB)})
    archive = make_tar_gz(tree, tmp_path / "big.tar.gz")
    assert archive.stat().st_size > 50 * MIB  # random bytes do not compress
    with api.client() as client:
        client.get("/v1/runs")  # the first request's imports and allocations are not the upload's
        before = api.peak_rss_kib()
        first = upload(client, archive)
        assert first.status_code == 201, first.text
        grown_mib = (api.peak_rss_kib() - before) / 1024
        # The whole upload in memory would add 50+ MiB; chunks, hashing and a chunked extraction add little.
        assert grown_mib < 20, f"server peak memory grew by {grown_mib:.0f} MiB during a 50 MiB upload"
        info = first.json()
        assert info["kind"] == "archive" and info["format"] == ".tar.gz" and info["created_now"] is True
        assert info["size_bytes"] == archive.stat().st_size and info["files"] == 2
        assert info["id"] == info["sha256"] and len(info["id"]) == 64
        assert info["expanded_bytes"] >= 50 * MIB
        stored = Path(info["stored"]) / "archive.tar.gz"
        assert stored.read_bytes() == archive.read_bytes()

        again = upload(client, archive)
        assert again.status_code == 200 and again.json()["id"] == info["id"]
        assert again.json()["created_now"] is False
        assert client.get(f"/v1/sources/{info['id']}").json()["files"] == 2
        refused(client.get(f"/v1/sources/{'0' * 64}"), 404, "source_not_found")


@pytest.mark.integration
def test_an_upload_over_the_cap_is_413_and_leaves_nothing(small_api: ApiProcess, tmp_path: Path) -> None:
    tmp_folder = small_api_root(small_api) / "work" / "tmp"
    with small_api.client() as client:
        # Sent chunked (no Content-Length): the cap is found while streaming.
        body, content_type = multipart_stream("big.tar.gz", (b"x" * 65536 for _ in range(48)))
        response = client.post("/v1/sources", content=body, headers={"Content-Type": content_type})
        assert "1 MiB" in refused(response, 413, "upload_too_large")
        # With a Content-Length over the cap: refused before reading.
        big = tmp_path / "big.tar.gz"
        big.write_bytes(os.urandom(2 * MIB))
        refused(upload(client, big), 413, "upload_too_large")
        assert client.get("/healthz").status_code == 200
    assert list(tmp_folder.iterdir()) == []
    assert not (small_api_root(small_api) / "store" / "sources").exists()


def small_api_root(server: ApiProcess) -> Path:
    return server.log.parent


@contextlib.contextmanager
def upload_cut_short(server: ApiProcess) -> Iterator[Path]:
    """An upload of which the server has written part of the file to disk (yields that file); the
    client's connection is closed on exit, the rest never sent."""
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/sources HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary=cut\r\nContent-Length: {8 * MIB}\r\n\r\n"
        '--cut\r\nContent-Disposition: form-data; name="file"; filename="cut.tar.gz"\r\n\r\n'
    )
    folder = small_api_root(server) / "work" / "tmp"
    with socket.create_connection((host, int(port))) as client:
        client.sendall(head.encode() + os.urandom(256 * 1024))
        deadline = time.monotonic() + 30
        while not (partial := list(folder.glob("upload-*.part"))) or not partial[0].stat().st_size:
            assert time.monotonic() < deadline, "the server never wrote the upload's first bytes"
            time.sleep(0.05)
        yield partial[0]


@pytest.mark.integration
def test_a_client_gone_mid_upload_is_one_line_in_the_log_and_leaves_nothing(api: ApiProcess) -> None:
    start = api.log.stat().st_size
    with upload_cut_short(api) as partial:
        pass
    deadline = time.monotonic() + 30
    while "the client disconnected" not in (logged := api.log.read_bytes()[start:].decode()):
        assert time.monotonic() < deadline, logged
        time.sleep(0.05)
    assert "Traceback" not in logged and "unhandled error" not in logged, logged
    assert not partial.exists()
    with api.client() as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.integration
def test_partial_uploads_of_a_killed_api_are_removed_at_its_next_start(tmp_path: Path) -> None:
    root = tmp_path / "api"
    with running_api(root) as server, upload_cut_short(server) as partial:
        server.process.kill()  # as kill -9: nothing of the API's own cleanup runs
        server.process.wait()
    assert partial.exists()
    others = [partial.parent / name for name in ("upload-notes.txt", "mine.part")]
    for other in others:
        other.write_text("not an upload of the API's\n")
    with running_api(root):
        assert not partial.exists()
        assert all(other.exists() for other in others)


@pytest.mark.integration
def test_a_zip_bomb_is_refused(api: ApiProcess, tmp_path: Path) -> None:
    bomb = zip_bomb(tmp_path / "bomb.zip", 100 * MIB)  # the API allows 80 MiB expanded
    assert bomb.stat().st_size < MIB
    with api.client() as client:
        message = refused(upload(client, bomb), 422, "unsafe_or_invalid_archive")
    assert "bomb" in message and "bomb.zip" in message


@pytest.mark.integration
def test_members_that_escape_are_refused(api: ApiProcess, tmp_path: Path) -> None:
    escaping = tarfile.TarInfo("project/../../evil.sh")
    absolute = tarfile.TarInfo("/etc/cron.d/evil")
    traversal_zip = tmp_path / "traversal.zip"
    with zipfile.ZipFile(traversal_zip, "w") as zf:
        zf.writestr("project/README.md", "hello\n")
        zf.writestr("../outside.txt", "gotcha\n")
    with api.client() as client:
        for archive, expected in (
            (tar_with_member(tmp_path / "dotdot.tar.gz", escaping, b"rm -rf /\n"), "'..'"),
            (tar_with_member(tmp_path / "absolute.tar.gz", absolute, b"* * * * * root true\n"), "absolute"),
            (traversal_zip, "'..'"),
        ):
            assert expected in refused(upload(client, archive), 422, "unsafe_or_invalid_archive")
    assert not (tmp_path.parent / "evil.sh").exists()


@pytest.mark.integration
def test_link_members_are_skipped(api: ApiProcess, tmp_path: Path) -> None:
    symlink = tarfile.TarInfo("project/passwd")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hardlink = tarfile.TarInfo("project/shadow")
    hardlink.type, hardlink.linkname = tarfile.LNKTYPE, "/etc/shadow"
    with api.client() as client:
        for archive in (
            tar_with_member(tmp_path / "symlink.tar.gz", symlink),
            tar_with_member(tmp_path / "hardlink.tar.gz", hardlink),
            zip_with_symlink(tmp_path / "symlink.zip"),
        ):
            stored = upload(client, archive)  # a repository may hold links: never extracted, not refused
            assert stored.is_success, stored.text
            assert stored.json()["files"] == 1  # README.md alone


@pytest.mark.integration
def test_bodies_that_are_not_archives_are_refused(api: ApiProcess, tmp_path: Path) -> None:
    text = tmp_path / "notes.tar.gz"
    text.write_text("not an archive at all\n")
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    with api.client() as client:
        refused(upload(client, text), 422, "not_an_archive")
        refused(upload(client, empty), 422, "empty_archive")
        refused(client.post("/v1/sources", files={"other": ("a.zip", b"PK")}), 422, "missing_file")
        refused(client.post("/v1/sources", content=b"abc", headers={"Content-Type": "text/plain"}), 415)
        refused(client.post("/v1/sources", content=b"{", headers={"Content-Type": "application/json"}), 400)
        refused(client.post("/v1/sources", json={"url": "https://example.com/x.git"}), 422, "invalid_request")


@pytest.mark.integration
def test_sources_in_an_s3_store_are_found_by_a_fresh_database(tmp_path: Path, project_tar: Path) -> None:
    store_uri = "s3://repotune-api/store"
    with running_s3_server() as endpoint, s3_environment(endpoint):
        storage.client_from_env().make_bucket("repotune-api")
        with running_api(tmp_path / "api", REPOTUNE_API_STORE=store_uri) as server, server.client() as client:
            first = upload(client, project_tar)
            assert first.status_code == 201, first.text
            assert first.json()["stored"] == f"{store_uri}/sources/{first.json()['id']}"
            assert upload(client, project_tar).json()["id"] == first.json()["id"]
            github = client.post("/v1/sources", json={"github": "octocat/hello-world", "ref": "main"}).json()
        # Another API instance (or one whose database was lost) shares the store and finds both.
        settings = ApiSettings(
            store=store_uri, work_dir=tmp_path / "other", db_path=tmp_path / "other.sqlite3", tokens=("t",)
        )
        sources = SourceStore(settings, Database(settings.db_path))
        info = sources.get(first.json()["id"])
        assert info == {k: v for k, v in first.json().items() if k != "created_now"}
        local = Path(sources.run_argument(info))
        assert local.is_relative_to(tmp_path / "other") and local.read_bytes() == project_tar.read_bytes()
        assert sources.run_argument(sources.get(github["id"])) == "github:octocat/hello-world"
        assert sources.get("0" * 64) is None


@pytest.mark.integration
def test_repository_sources_are_recorded_by_description(api: ApiProcess) -> None:
    with api.client() as client:
        first = client.post(
            "/v1/sources", json={"repo_url": "https://192.0.2.10/team/project.git", "ref": "v1"}
        )
        assert first.status_code == 201, first.text
        again = client.post(
            "/v1/sources", json={"repo_url": "https://192.0.2.10/team/project.git", "ref": "v1"}
        )
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        other_ref = client.post("/v1/sources", json={"repo_url": "https://192.0.2.10/team/project.git"})
        assert other_ref.json()["id"] != first.json()["id"]
        github = client.post("/v1/sources", json={"github": "octocat/hello-world"})
        assert github.status_code == 201 and github.json()["github"] == "octocat/hello-world"
        assert client.get(f"/v1/sources/{github.json()['id']}").json()["kind"] == "github"
        scp = client.post("/v1/sources", json={"repo_url": "git@192.0.2.11:team/project.git"})
        assert scp.status_code == 201, scp.text
        for bad in (
            {"repo_url": "/srv/repos/private"},
            {"repo_url": "https://user:secret@example.com/x.git"},
            {"repo_url": "--upload-pack=touch /tmp/x"},
            {"repo_url": "https://example.com/x.git", "ref": "--output=/tmp/x"},
            {"repo_url": "https://example.com/x.git", "extra": 1},
            {"github": "not a repo"},
            {"github": "owner/.."},
        ):
            message = refused(client.post("/v1/sources", json=bad), 422, "invalid_request")
            assert message
        # Well-formed, but refused by the server's policy: a scheme it does not allow, a private address.
        for url in ("file:///etc", "https://10.0.0.5/team/project.git"):
            refused(client.post("/v1/sources", json={"repo_url": url}), 422, "source_not_allowed")
        # A token in the query (GitLab's private_token, a proxy's access_token) would be stored, shown by
        # GET /v1/sources/ID and written to the run's log; the server's git credentials are the place.
        for url in (
            "https://192.0.2.10/team/project.git?access_token=SEKRET123",
            "https://192.0.2.10/team/project.git?private_token=SEKRET123",
            "https://192.0.2.10/team/project.git#SEKRET123",
            "ssh://git@192.0.2.11/team/project.git?token=SEKRET123",
            "git@192.0.2.11:team/project.git?token=SEKRET123",
        ):
            response = client.post("/v1/sources", json={"repo_url": url})
            assert "configure credentials on the server" in refused(response, 422, "invalid_request"), url
            assert "SEKRET123" not in response.text


@pytest.mark.integration
def test_runs_refuse_unknown_sources_recipes_and_overrides(api: ApiProcess) -> None:
    with api.client() as client:
        source = client.post("/v1/sources", json={"github": "octocat/spoon-knife"}).json()["id"]
        refused(client.post("/v1/runs", json={"source_id": "0" * 64, "recipe": "tiny-cpu"}), 404)
        for recipe in ("no-such-recipe", "/etc/passwd", "../configs/tiny-cpu", "configs/tiny-cpu.yaml"):
            message = refused(client.post("/v1/runs", json={"source_id": source, "recipe": recipe}), 422)
            assert "tiny-cpu" in message  # the known recipes are listed
        for overrides, expected in (({"no_such_setting": 1}, "no_such_setting"), ({"max_steps": "many"}, "")):
            body = {"source_id": source, "recipe": "tiny-cpu", "overrides": overrides}
            assert expected in refused(client.post("/v1/runs", json=body), 422, "invalid_overrides")
        # what the operator's recipe fixes: where checkpoints go, what is read as a model, the hardware
        # and the time budget; a client tunes training only
        fixed = {"checkpoint_uri": "s3://elsewhere/x", "base_model": "/etc", "resources.nodes": 64,
                 "data.retrieval_embedding_model": "/etc/passwd", "resources.gpus_per_node": 8,
                 "max_minutes": 1e9, "serving.memory": "1Ti"}  # fmt: skip
        for key, value in fixed.items():
            body = {"source_id": source, "recipe": "tiny-cpu", "overrides": {key: value}}
            assert "is fixed by the server's recipe" in refused(
                client.post("/v1/runs", json=body), 422, "invalid_overrides"
            ), key
        # Not JSON, but Python's parser reads them; a run would only fail on them minutes later.
        template = '{"source_id": "%s", "recipe": "tiny-cpu", "overrides": {"learning_rate": %s}}'
        for number in ("NaN", "Infinity", "-Infinity", "1e999"):
            raw = template % (source, number)
            response = client.post("/v1/runs", content=raw, headers={"Content-Type": "application/json"})
            assert "'learning_rate'" in refused(response, 422, "invalid_overrides"), number
        refused(client.post("/v1/runs", json={"source_id": source}), 422, "invalid_request")
        refused(client.get(f"/v1/runs/{'0' * 32}"), 404, "run_not_found")
        refused(client.get(f"/v1/runs/{'0' * 32}/report"), 404, "run_not_found")
        refused(client.get("/v1/runs/not-an-id"), 422, "invalid_request")
        assert client.get("/v1/runs").json() == {"runs": []}


@pytest.mark.integration
def test_completions_are_forwarded_to_the_model(
    api: ApiProcess, model_server: tuple[str, list[dict]]
) -> None:
    _, received = model_server
    with api.client() as client:
        answer = client.post(
            "/v1/completions", json={"prompt": "def add(", "max_tokens": 8, "temperature": 0}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["text"] == "echo: def add("
        assert received[-1] == {
            "path": "/openai/v1/completions",
            "body": {"prompt": "def add(", "max_tokens": 8, "temperature": 0},
        }
        refused(
            client.post("/v1/completions", json={"prompt": "x", "stream": True}), 400, "stream_not_supported"
        )
        refused(client.post("/v1/completions", json={"max_tokens": 8}), 422, "invalid_request")


@pytest.mark.integration
def test_completions_without_a_model_are_503(small_api: ApiProcess) -> None:
    with small_api.client() as client:
        message = refused(client.post("/v1/completions", json={"prompt": "x"}), 503, "no_model")
    assert "REPOTUNE_API_MODEL_URL" in message


@pytest.mark.integration
def test_the_api_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOTUNE_API_")}
    env["REPOTUNE_API_STORE"] = str(tmp_path / "store")
    done = subprocess.run(
        [sys.executable, "-m", "repotune", "api", "--port", "1"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert "REPOTUNE_API_TOKENS is not set" in done.stderr and "--insecure-no-auth" in done.stderr
    assert "Traceback" not in done.stderr
    with running_api(tmp_path / "open", "--insecure-no-auth", REPOTUNE_API_TOKENS="") as server:
        assert httpx.get(f"{server.url}/v1/runs").status_code == 200


@pytest.mark.integration
def test_runs_survive_an_api_restart(tmp_path: Path, project_tar: Path) -> None:
    root = tmp_path / "restart"
    with running_api(root) as server, server.client() as client:
        source = upload(client, project_tar).json()["id"]
        created = client.post("/v1/runs", json={"source_id": source, "recipe": "tiny-cpu"})
        assert created.status_code == 202, created.text
        run = created.json()
        assert run["state"] == "running" and run["pid"] and run["backend"] == "local"
    try:
        with running_api(root) as server, server.client() as client:
            again = client.get(f"/v1/runs/{run['id']}")
            assert again.status_code == 200, again.text
            assert {k: again.json()[k] for k in ("source_id", "recipe", "run_dir", "pid", "created")} == {
                k: run[k] for k in ("source_id", "recipe", "run_dir", "pid", "created")
            }
            assert [r["id"] for r in client.get("/v1/runs").json()["runs"]] == [run["id"]]
            assert client.get(f"/v1/runs/{run['id']}/log").status_code == 200
            # The run outlived the first API (its own session); once its process is gone, this API,
            # which did not start it, settles it from what it left behind.
            _stop(run["pid"])
            settled = client.get(f"/v1/runs/{run['id']}").json()
            assert settled["state"] == "failed" and settled["finished"], settled
            # a report that will never come is not "not ready yet"
            message = refused(client.get(f"/v1/runs/{run['id']}/report"), 404, "report_not_available")
            assert "failed before its evaluation report" in message
    finally:
        _stop(run["pid"])


def _stop(pid: int) -> None:
    """Ends a run's process group (the run is its session leader) and waits until it is gone."""
    if process_start(pid) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_start(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_settle_decides_a_finished_run_from_its_status_and_exit_code() -> None:
    succeeded = RunStatus.from_dict({"state": "succeeded", "error": None})
    failed = RunStatus.from_dict({"state": "failed", "error": "train: out of memory"})
    running = RunStatus.from_dict({"state": "running", "error": None})
    assert settle(running, None, alive=True) is None
    assert settle(succeeded, None, alive=False) == ("succeeded", None)
    assert settle(succeeded, 0, alive=False) == ("succeeded", None)
    assert settle(failed, 1, alive=False) == ("failed", "train: out of memory")
    assert settle(failed, None, alive=False) == ("failed", "train: out of memory")
    assert settle(running, None, alive=False) == ("failed", LOST)
    assert settle(None, None, alive=False) == ("failed", LOST)
    state, error = settle(None, 3, alive=False)
    assert state == "failed" and "code 3" in error
    state, error = settle(succeeded, -9, alive=False)  # killed after writing success: not trusted
    assert state == "failed" and "code -9" in error
    state, error = settle(running, 0, alive=False)
    assert state == "failed" and "code 0" in error


def _insert_run(db: Database, run_id: str, run_dir: Path, pid: int | None, pid_start: str | None) -> None:
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO runs (id, source_id, recipe, overrides, backend, state, created, run_dir, pid, "
            "pid_start) VALUES (?, ?, 'tiny-cpu', '{}', 'local', 'running', '2025-01-01T00:00:00', ?, ?, ?)",
            (run_id, "f" * 64, str(run_dir), pid, pid_start),
        )


def test_reconcile_settles_runs_whose_process_is_gone(tmp_path: Path) -> None:
    settings = ApiSettings(
        store=str(tmp_path / "store"),
        work_dir=tmp_path / "work",
        db_path=tmp_path / "db.sqlite3",
        tokens=("t",),
    )
    db = Database(settings.db_path)
    runs = Runs(settings, db, SourceStore(settings, db))
    finished = subprocess.Popen(["true"])
    finished.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cases = {
            "a" * 32: ({"state": "succeeded", "finished": "2025-01-01T01:00:00+00:00"}, finished.pid, None),
            "b" * 32: ({"state": "failed", "error": "evaluate: no eval data"}, finished.pid, None),
            "c" * 32: ({"state": "running", "stages": {}}, finished.pid, None),
            "d" * 32: (None, None, None),
            "e" * 32: ({"state": "running"}, sleeper.pid, process_start(sleeper.pid)),
            # the pid is alive but belongs to a process started at another time: a reused pid
            "f" * 32: ({"state": "running"}, sleeper.pid, "1"),
        }
        for run_id, (status, pid, start) in cases.items():
            run_dir = tmp_path / "runs" / run_id
            run_dir.mkdir(parents=True)
            if status is not None:
                (run_dir / "status.json").write_text(json.dumps(status))
            _insert_run(db, run_id, run_dir, pid, start)

        assert sorted(runs.reconcile()) == sorted(k for k in cases if k != "e" * 32)
        rows = {run_id: runs.get(run_id) for run_id in cases}
        assert rows["a" * 32]["state"] == "succeeded"
        assert rows["a" * 32]["finished"] == "2025-01-01T01:00:00+00:00"
        assert (rows["b" * 32]["state"], rows["b" * 32]["error"]) == ("failed", "evaluate: no eval data")
        for lost in ("c" * 32, "d" * 32, "f" * 32):
            assert (rows[lost]["state"], rows[lost]["error"]) == ("failed", LOST)
        assert rows["e" * 32]["state"] == "running"
        # a settled run stays settled even if its status.json changes later
        (tmp_path / "runs" / ("c" * 32) / "status.json").write_text('{"state": "succeeded"}')
        assert runs.get("c" * 32)["state"] == "failed"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert runs.reconcile() == ["e" * 32]
    assert runs.get("e" * 32)["error"] == LOST


def test_recipes_are_names_or_paths_inside_the_recipe_folders(tmp_path: Path) -> None:
    shipped = shipped_recipes_dir()
    assert shipped.is_dir()
    folders = (shipped,)
    assert choose_recipe("tiny-cpu", folders).path == shipped / "tiny-cpu.yaml"
    assert choose_recipe("tiny-cpu.yaml", folders).name == "tiny-cpu"
    assert choose_recipe(str(shipped / "tiny-cpu.yaml"), folders).name == "tiny-cpu"
    outside = tmp_path / "mine.yaml"
    outside.write_text("max_steps: 1\n")
    for value in (str(outside), "../tiny-cpu", "tiny-cpu/../x", "/etc/passwd", "", ".hidden"):
        with pytest.raises(ApiError) as caught:
            choose_recipe(value, folders)
        assert caught.value.status == 422


def test_tokens_are_all_compared() -> None:
    assert token_matches("b", ("a", "b"))
    assert not token_matches("", ("a", "b"))
    assert not token_matches("a ", ("a",))
    assert not token_matches("é", ("e",))


def test_settings_refuse_a_server_without_tokens_unless_told(tmp_path: Path) -> None:
    env = {"REPOTUNE_API_STORE": str(tmp_path)}
    with pytest.raises(RepotuneError, match="REPOTUNE_API_TOKENS"):
        ApiSettings.from_env(env)
    assert ApiSettings.from_env(env, allow_no_auth=True).tokens == ()
    loaded = ApiSettings.from_env(
        {**env, "REPOTUNE_API_TOKENS": " a, b ,", "REPOTUNE_API_MAX_UPLOAD_MB": "1.5"}
    )
    assert loaded.tokens == ("a", "b") and loaded.max_upload_bytes == int(1.5 * MIB)
    assert loaded.db_path == tmp_path.resolve() / "api.sqlite3"
    with pytest.raises(RepotuneError, match="REPOTUNE_API_MAX_UPLOAD_MB"):
        ApiSettings.from_env({**env, "REPOTUNE_API_TOKENS": "a", "REPOTUNE_API_MAX_UPLOAD_MB": "lots"})
    s3 = ApiSettings.from_env({"REPOTUNE_API_STORE": "s3://bucket/api", "REPOTUNE_API_TOKENS": "a"})
    assert s3.local_store is None and s3.work_dir != Path("s3:")


def test_formats_are_read_from_the_bytes(tmp_path: Path, project_tar: Path) -> None:
    assert detect_format(project_tar) == ".tar.gz"
    plain = tmp_path / "plain.zip"  # the name lies; the bytes decide
    with tarfile.open(plain, "w") as tar:
        tar.add(project_tar, arcname="inner.tar.gz")
    assert detect_format(plain) == ".tar"
    zipped = zip_with_symlink(tmp_path / "x.tar.gz")
    assert detect_format(zipped) == ".zip"
    (tmp_path / "text").write_text("hello")
    assert detect_format(tmp_path / "text") is None


# Examples per operation and generation mode; REPOTUNE_FUZZ_EXAMPLES raises it for a longer run.
FUZZ_EXAMPLES = int(os.environ.get("REPOTUNE_FUZZ_EXAMPLES", "25"))
JSON_OPERATIONS = ("/v1/sources", "/v1/runs", "/v1/completions")


def _hostile_bodies() -> st.SearchStrategy[tuple[str, bytes, str]]:
    """(path, body, content type): nesting up to 20,000 levels, random JSON, bodies past the caps,
    bytes that are not JSON at all, under JSON's and other content types."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    )
    random_json = values.map(lambda value: json.dumps(value).encode())

    def nested(depth: int, opener: bytes, key: str) -> bytes:
        inner = opener * depth + b"1" + (b"]" if opener == b"[" else b"}") * depth
        return b'{"' + key.encode() + b'": ' + inner + b"}"

    deep = st.builds(
        nested,
        st.integers(1, 20_000),
        st.sampled_from([b"[", b'{"a": ']),
        st.sampled_from(["repo_url", "github", "prompt", "source_id", "overrides"]),
    )
    huge = st.sampled_from([64 * 1024 + 1, MIB, 16 * MIB + 1]).map(
        lambda n: b'{"prompt": "' + b"x" * n + b'"}'
    )
    body = st.one_of(random_json, deep, deep, huge, st.binary(max_size=2000))
    content_type = st.sampled_from(
        ["application/json", "application/problem+json", "text/plain", "multipart/form-data; boundary=x", ""]
    )
    return st.tuples(st.sampled_from(JSON_OPERATIONS), body, content_type)


@pytest.mark.integration
def test_the_openapi_spec_holds_no_server_errors(api: ApiProcess) -> None:
    """Schemathesis cases (valid and invalid) for every operation of /openapi.json, then hostile bodies
    (deep, huge, random, not JSON) for the operations that read one; none may get a 5xx.

    Driven through hypothesis directly: schemathesis's pytest plugin (``from_fixture``) reads a pytest
    internal that pytest 9 no longer has. Source ids are SHA-256 digests, so generated runs name sources
    that do not exist and no run starts.
    """
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call(headers=auth)
                statuses[response.status_code] += 1
                case.validate_response(response, checks=[not_a_server_error], headers=auth)

            try:
                check()
            except Unsatisfiable:
                pass  # no invalid input exists for an operation without parameters (GET /healthz)
            except Exception as exc:
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")

    with httpx.Client(base_url=api.url, headers=auth, timeout=120) as client:

        @given(request=_hostile_bodies())
        @settings(
            max_examples=3 * FUZZ_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def hostile(request: tuple[str, bytes, str]) -> None:
            path, body, content_type = request
            response = client.post(path, content=body, headers={"Content-Type": content_type})
            statuses[response.status_code] += 1
            assert response.status_code < 500, (
                f"POST {path} ({content_type}, {len(body)} bytes): {response.text}"
            )
            assert set(response.json()) == {"error"} or response.status_code < 300, response.text

        try:
            hostile()
        except Exception as exc:
            failures.append(f"hostile bodies: {exc}")
    server_errors = sum(n for code, n in statuses.items() if code >= 500)
    by_status = dict(sorted(statuses.items()))
    print(f"random requests: {sum(statuses.values())}, 5xx: {server_errors}, by status: {by_status}")
    assert not failures, "\n\n".join(failures)
    assert server_errors == 0 and sum(statuses.values()) >= 8 * FUZZ_EXAMPLES


@pytest.mark.integration
def test_the_fuzzing_started_no_runs(api: ApiProcess) -> None:
    with api.client() as client:
        assert client.get("/v1/runs", params={"limit": 500}).json()["runs"] == []


@pytest.mark.slow
@pytest.mark.integration
def test_a_run_followed_to_its_report(tmp_path: Path, sample_repo: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "repotune", "run", "--help"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"`repotune run` is not available yet: {done.stderr.strip()[-300:]}")
    archive = tmp_path / "repo.tar.gz"
    # The .git folder goes too: the run reads the history from it, as from a clone.
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sample_repo, arcname="repo")
    with running_api(tmp_path / "api") as server, server.client() as client:
        source = upload(client, archive).json()["id"]
        created = client.post(
            "/v1/runs", json={"source_id": source, "recipe": "tiny-cpu", "overrides": {"max_steps": 4}}
        )
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]
        refused(client.get(f"/v1/runs/{run_id}/report"), 404, "report_not_ready")
        # A bound on waiting, not a measure: about a minute on an idle machine, five on a busy one.
        deadline = time.monotonic() + 900
        try:
            while True:
                run = client.get(f"/v1/runs/{run_id}").json()
                if run["state"] != "running" or time.monotonic() > deadline:
                    break
                time.sleep(2)
        finally:
            _stop(created.json()["pid"])  # a run outlives the API on purpose; not the test
        log = client.get(f"/v1/runs/{run_id}/log").text
        assert run["state"] == "succeeded", f"{run}\n{log[-3000:]}"
        assert run["stages"] and run["stages"]["train"]["state"] in ("succeeded", "cached")
        assert run["metrics"] and run["finished"] and isinstance(run["promote"], bool)
        report = client.get(f"/v1/runs/{run_id}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/markdown")
        assert report.text.strip()
    # Everything the run wrote is in its folder under the API's work folder (or the API's cache
    # folder); nothing went to the home folder (~/.repotune, ~/.cache) or elsewhere.
    root = tmp_path / "api"
    assert [p for p in (root / "home").rglob("*")] == []
    home = root / "work" / "runs" / run_id
    assert {p.name for p in home.iterdir()} == {"output", "work", "tmp", "run.log"}
    assert (home / "work" / "kfp").is_dir() and (home / "work" / "mlflow.db").is_file()
    assert (home / "output" / "status.json").is_file()
    assert {p.name for p in root.iterdir()} <= {
        "home",
        "store",
        "work",
        "api.sqlite3",
        *(p.name for p in root.glob("api-*.log")),
    }
    assert {p.name for p in (root / "work").iterdir()} <= {"runs", "tmp", "cache", "api.sqlite3"}


@pytest.mark.integration
def test_a_run_is_cancelled_and_ends_failed_saying_so(tmp_path: Path, sample_repo: Path) -> None:
    archive = tmp_path / "repo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sample_repo, arcname="repo")
    with running_api(tmp_path / "api") as server, server.client() as client:
        source = upload(client, archive).json()["id"]
        created = client.post("/v1/runs", json={"source_id": source, "recipe": "tiny-cpu"})
        assert created.status_code == 202, created.text
        run_id = created.json()["id"]
        try:
            cancelled = client.post(f"/v1/runs/{run_id}/cancel")
            assert cancelled.status_code == 202, cancelled.text
            deadline = time.monotonic() + 120  # a bound on waiting: SIGTERM, then the run's own shutdown
            while (run := client.get(f"/v1/runs/{run_id}").json())["state"] == "running":
                assert time.monotonic() < deadline, run
                time.sleep(0.5)
        finally:
            _stop(created.json()["pid"])
        assert run["state"] == "failed" and run["error"].startswith("cancelled by a client"), run
        refused(client.post(f"/v1/runs/{run_id}/cancel"), 409, "run_finished")
        refused(client.post(f"/v1/runs/{'0' * 32}/cancel"), 404, "run_not_found")


@pytest.mark.integration
def test_a_run_being_started_is_running_to_every_other_request(tmp_path: Path, sample_repo: Path) -> None:
    """Between its record and its process a run has no pid. Held there on purpose (the launch below
    waits for the test's signal before it starts the process), the run must be "running" to every other
    request: listed and shown so, not settled as lost; counted against REPOTUNE_API_MAX_ACTIVE_RUNS; and
    not cancellable until it has a process. Once started, it is followed and cancelled as any other."""
    api_settings = ApiSettings(
        store=str(tmp_path / "store"),
        work_dir=tmp_path / "work",
        db_path=tmp_path / "db.sqlite3",
        tokens=(TOKEN,),
        recipe_dirs=(shipped_recipes_dir(),),
        max_active_runs=1,
    )
    entered, release = threading.Event(), threading.Event()

    class HeldRuns(Runs):
        def _launch(self, *args: Any, **kwargs: Any) -> None:
            entered.set()
            assert release.wait(60), "the test never let the launch go on"
            super()._launch(*args, **kwargs)

    archive = tmp_path / "repo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(sample_repo, arcname="repo")
    app = create_app(api_settings)
    held = HeldRuns(api_settings, Database(api_settings.db_path), app.state.sources)
    app.dependency_overrides[get_runs] = lambda: held
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with (
        serving_in_thread(app) as url,
        httpx.Client(base_url=url, headers=headers, timeout=60) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        source = upload(client, archive).json()["id"]
        body = {"source_id": source, "recipe": "tiny-cpu"}
        pending = pool.submit(client.post, "/v1/runs", json=body)
        try:
            assert entered.wait(60), "the run never reached its launch"
            (listed,) = client.get("/v1/runs").json()["runs"]
            shown = client.get(f"/v1/runs/{listed['id']}").json()
            assert listed["state"] == shown["state"] == "running" and shown["error"] is None, shown
            refused(client.post("/v1/runs", json=body), 429, "too_many_runs")
            refused(client.post(f"/v1/runs/{listed['id']}/cancel"), 409, "run_starting")
        finally:
            release.set()
            created = pending.result()
        run = created.json()
        try:
            assert created.status_code == 202, created.text
            assert run["id"] == listed["id"] and run["state"] == "running" and run["pid"], run
            assert client.post(f"/v1/runs/{run['id']}/cancel").status_code == 202
            deadline = time.monotonic() + 120  # a bound on waiting: SIGTERM, then the run's own shutdown
            while (run := client.get(f"/v1/runs/{run['id']}").json())["state"] == "running":
                assert time.monotonic() < deadline, run
                time.sleep(0.5)
        finally:
            if created.json().get("pid"):
                _stop(created.json()["pid"])  # a run outlives the API on purpose; not the test
        assert run["state"] == "failed" and run["error"].startswith("cancelled by a client"), run


@pytest.mark.integration
def test_runs_go_to_a_kfp_cluster_when_one_is_configured(tmp_path: Path) -> None:
    """With REPOTUNE_KFP_HOST the run is submitted through the kfp SDK (to a stand-in of the KFP API)."""
    from tests.kfp_api import running_kfp_api

    with (
        running_kfp_api() as kfp,
        running_api(
            tmp_path / "api", REPOTUNE_KFP_HOST=kfp.url, REPOTUNE_API_SOURCE_NETWORKS=TEST_NET
        ) as server,
    ):
        with server.client() as client:
            source = client.post(
                "/v1/sources", json={"repo_url": "https://192.0.2.20/team/app.git", "ref": "v2"}
            )
            started = client.post(
                "/v1/runs",
                json={"source_id": source.json()["id"], "recipe": "tiny-cpu", "overrides": {"max_steps": 3}},
            )
            assert started.status_code == 202, started.text
        (submitted,) = kfp.runs.values()
        assert submitted["runtime_config"]["parameters"] == {
            "source": "https://192.0.2.20/team/app.git",
            "ref": "v2",
            "training": {"max_steps": 3},
        }
        spec = submitted["pipeline_spec"].get("pipeline_spec", submitted["pipeline_spec"])
        recipe = spec["root"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["recipe"]
        assert "base_model: tiny" in recipe["runtimeValue"]["constant"]  # built with the chosen recipe
