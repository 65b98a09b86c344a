"""The upload API against hostile input: archive bombs, deep JSON, racing uploads, option-looking and
internal repository URLs; and what runs leave on disk. Real ``repotune api`` processes on 127.0.0.1."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from tests.api_helpers import (
    TOKEN,
    ApiProcess,
    echo_model_server,
    long_name_bomb,
    make_tar_gz,
    refused,
    running_api,
    serving_in_thread,
    tar_gz_bomb,
    upload,
    zip_bomb,
)
from tests.conftest import write_tree

from repotune.api.app import create_app
from repotune.api.db import Database
from repotune.api.deps import get_sources
from repotune.api.errors import ApiError
from repotune.api.policy import SourcePolicy, git_pins, parse_repo_url
from repotune.api.recipes import choose_recipe
from repotune.api.runs import RunHome, Runs, expired
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore
from repotune.errors import RepotuneError
from repotune.sources import git
from repotune.sources.archive import ArchiveSummary, extract, scan
from repotune.sources.revision import resolve_revision
from repotune.train import shipped_recipes_dir

MIB = 1024 * 1024


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

        def send(_: int, archive: Path = archive, start: threading.Barrier = start) -> httpx.Response:
            with api.client() as client:
                start.wait()
                return upload(client, archive)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
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
        message = refused(upload(client, bomb), 422, "unsafe_or_invalid_archive")
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
        message = refused(upload(client, mixed), 422, "unsafe_or_invalid_archive")
    assert "member 'project/zeros.txt'" in message


@pytest.mark.integration
def test_a_tar_gz_bomb_is_refused_by_the_whole_streams_ratio(api: ApiProcess, tmp_path: Path) -> None:
    bomb = tar_gz_bomb(tmp_path / "bomb.tar.gz", 200 * MIB)
    with api.client() as client:
        message = refused(upload(client, bomb), 422, "unsafe_or_invalid_archive")
    assert "the archive expands more than 100 times" in message


@pytest.mark.integration
def test_a_long_name_header_bomb_is_refused_in_little_memory(api: ApiProcess, tmp_path: Path) -> None:
    # 256 MiB of one member's name in 260 KB: read whole, it took 2 bytes of memory a byte of name, and
    # the upload was accepted (4 bytes of files); the header is refused before it is read.
    bomb = long_name_bomb(tmp_path / "longname.tar.gz", 256 * MIB)
    with api.client() as client:
        client.get("/v1/runs")
        before = api.peak_rss_kib()
        message = refused(upload(client, bomb), 422, "unsafe_or_invalid_archive")
        grown_mib = (api.peak_rss_kib() - before) / 1024
    assert message.startswith(f"archive longname.tar.gz: a GNU long-name header declares {256 * MIB} bytes")
    assert grown_mib < 50, f"server peak memory grew by {grown_mib:.0f} MiB checking a 260 KB upload"


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

        def send() -> httpx.Response:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                return upload(client, archive)

        pending = pool.submit(send)
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
            assert "deeper than 32 levels" in refused(
                client.post(path, content=deep, headers=json_type), 400, "json_too_deep"
            )
        # Brackets inside strings are text, not levels; 20 real levels are only a wrong body.
        text = {"repo_url": "[" * 5000, "ref": "main"}
        refused(client.post("/v1/sources", json=text), 422, "invalid_request")
        nested = b'{"source_id": ' + b"[" * 20 + b"]" * 20 + b', "recipe": "tiny-cpu"}'
        refused(client.post("/v1/runs", content=nested, headers=json_type), 422, "invalid_request")
        # A body past 16 MiB is refused before it is read whole, with or without a declared length.
        huge = b'{"prompt": "' + b"x" * (17 * MIB) + b'"}'
        refused(client.post("/v1/completions", content=huge, headers=json_type), 413, "request_too_large")
        chunks = (huge[i : i + MIB] for i in range(0, len(huge), MIB))
        refused(client.post("/v1/completions", content=chunks, headers=json_type), 413, "request_too_large")
        assert client.get("/healthz").status_code == 200
    with api.client(token=None) as anonymous:  # the token is checked before the body is read
        refused(anonymous.post("/v1/runs", content=deep, headers=json_type), 401, "unauthorized")


@pytest.mark.integration
@pytest.mark.parametrize("style", ["root_path", "mount"])
def test_the_token_is_needed_under_a_path_prefix(tmp_path: Path, style: str) -> None:
    """Served under /repotune (uvicorn's root_path behind a proxy that strips it, or mounted in another
    app), the path the middleware sees starts with the prefix: /v1 must still need the token, and an
    upload must still stream past the JSON body limits (a .tar's bytes, unlike gzip's, hold its files'
    text: 100 levels of brackets here)."""
    app = create_app(_settings(tmp_path))
    if style == "mount":
        served, prefix, config = Starlette(routes=[Mount("/repotune", app=app)]), "/repotune", {}
    else:
        served, prefix, config = app, "", {"root_path": "/repotune"}
    tree = tmp_path / "tree"
    write_tree(tree, {"README.md": "# brackets\n", "data.json": "[" * 100 + "]" * 100})
    archive = tmp_path / "brackets.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname="project")
    with serving_in_thread(served, **config) as url:
        with httpx.Client(base_url=url + prefix) as anonymous:
            assert anonymous.get("/healthz").status_code == 200
            refused(anonymous.get("/v1/runs"), 401, "unauthorized")
            refused(upload(anonymous, archive), 401, "unauthorized")
        with httpx.Client(base_url=url + prefix, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            assert client.get("/v1/runs").json() == {"runs": []}
            stored = upload(client, archive)
            assert stored.status_code == 201, stored.text
            assert stored.json()["files"] == 2


OPTION_LOOKING = [
    "-uX@host:path",
    "--upload-pack=touch /tmp/x",
    "ssh://-oProxyCommand=touch%20x/repo.git",
    "ssh://-oProxyCommand=x@example.com/repo.git",
    "git@example.com:-oProxyCommand=x",
    "git://-example.com/repo.git",
]


@pytest.mark.parametrize("url", OPTION_LOOKING)
def test_urls_that_look_like_options_are_not_repository_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_repo_url(url)
    if url.startswith("-"):  # nor does ingest take it for a git URL
        assert not git.is_git_url(url)


def test_the_source_policy_refuses_internal_addresses_unless_their_network_is_allowed() -> None:
    dns = {
        "public.example": ["93.184.216.34"],
        "git.corp.example": ["10.1.2.3"],
        "rebound.example": ["93.184.216.34", "127.0.0.1"],  # every address must be allowed
        "metadata.google.internal": ["169.254.169.254"],
        "v6.example": ["2606:2800:220:1::1"],
    }

    def resolver(host: str, port: int) -> list[str]:
        if host in dns:
            return dns[host]
        return [str(ipaddress.ip_address(host))]  # a literal resolves to itself

    policy = SourcePolicy(("https", "ssh", "git"), resolver=resolver)
    assert policy.check("https://public.example/team/app.git")[1] == [ipaddress.ip_address("93.184.216.34")]
    assert policy.check("git@v6.example:team/app.git")[0].scheme == "ssh"
    for url, wanted in [
        ("https://127.0.0.1:8080/x.git", "loopback, private"),
        ("https://git.corp.example/x.git", "REPOTUNE_API_SOURCE_NETWORKS"),
        ("https://rebound.example/x.git", "127.0.0.1"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://metadata.google.internal/x.git", "metadata"),
        ("git://[::ffff:169.254.169.254]/x.git", "metadata"),
        ("https://100.100.100.200/x.git", "metadata"),
        ("https://[fe80::1]/x.git", "metadata"),
        ("https://0.0.0.0/x.git", "metadata"),
        ("http://public.example/x.git", "REPOTUNE_API_SOURCE_SCHEMES"),
        ("file:///srv/git/app.git", "REPOTUNE_API_SOURCE_SCHEMES"),
    ]:
        with pytest.raises(ApiError) as caught:
            policy.check(url)
        assert (caught.value.status, caught.value.code) == (422, "source_not_allowed"), url
        assert wanted in caught.value.message, (url, caught.value.message)

    inside = SourcePolicy(
        ("https", "file"),
        hosts=("*.corp.example", "public.example"),
        networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("0.0.0.0/0")),
        resolver=resolver,
    )
    assert inside.check("https://git.corp.example/x.git")[1] == [ipaddress.ip_address("10.1.2.3")]
    assert inside.check("file:///srv/git/app.git")[0].host is None
    everywhere = SourcePolicy(
        ("https",),
        networks=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        resolver=resolver,
    )
    assert everywhere.check("https://127.0.0.1/x.git")[1] == [ipaddress.ip_address("127.0.0.1")]
    for url in ("https://169.254.169.254/x.git", "https://metadata.google.internal/x.git"):
        with pytest.raises(ApiError, match="never allowed"):  # whatever networks are allowed
            everywhere.check(url)
    with pytest.raises(ApiError, match="REPOTUNE_API_SOURCE_HOSTS"):
        inside.check("https://other.example/x.git")
    with pytest.raises(ApiError) as unknown:
        SourcePolicy(("https",), resolver=lambda host, port: socket.getaddrinfo("", None)).check(
            "https://nowhere.example/x.git"
        )
    assert unknown.value.code == "source_host_unknown"


def test_the_real_resolver_is_asked_and_localhost_needs_its_network() -> None:
    with pytest.raises(ApiError, match="loopback"):
        SourcePolicy(("https",)).check("https://localhost/x.git")
    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    parsed, addresses = SourcePolicy(("https",), networks=loopback).check("https://localhost/x.git")
    assert parsed.host == "localhost" and addresses and all(a.is_loopback for a in addresses)
    # 2130706433 is 127.0.0.1 written as one number: decided on what it resolves to, not on its text
    with pytest.raises(ApiError, match="loopback"):
        SourcePolicy(("https",)).check("https://2130706433/x.git")


@pytest.mark.integration
def test_the_api_refuses_option_looking_and_internal_repository_urls(api: ApiProcess) -> None:
    with api.client() as client:
        for url in OPTION_LOOKING:
            refused(client.post("/v1/sources", json={"repo_url": url}), 422, "invalid_request")
        for url in (
            "https://127.0.0.1:8080/team/app.git",
            "https://169.254.169.254/latest/meta-data/",
            "git://[::ffff:169.254.169.254]/x.git",
            "https://2130706433/x.git",
            "ssh://git@10.0.0.5/team/app.git",
            "http://93.184.216.34/team/app.git",
            "file:///etc",
        ):
            refused(client.post("/v1/sources", json={"repo_url": url}), 422, "source_not_allowed")
        assert client.get("/v1/runs").json() == {"runs": []}
    assert not (_root(api) / "store" / "sources").exists() or all(
        json.loads((p / "source.json").read_text())["kind"] == "archive"
        for p in (_root(api) / "store" / "sources").iterdir()
    )


@pytest.mark.integration
def test_git_is_given_every_url_after_the_end_of_its_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git's own argv, as a wrapper in front of the real git records it: a URL never stands where git
    reads options (``git clone -- URL DEST``, ``git ls-remote -- URL REF``)."""
    log = tmp_path / "argv.jsonl"
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"with open({str(log)!r}, 'a') as out:\n    out.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"os.execv({shutil.which('git')!r}, ['git', *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    cloned = ["-uX@host:path", "--upload-pack=touch x", "ssh://-oProxyCommand=touch%20x/r.git"]
    for url in cloned:
        with pytest.raises(RepotuneError):
            git.clone(url, tmp_path / "dest", None)
    listed = ["ssh://-oProxyCommand=touch%20x/r.git", f"file://{tmp_path}/missing.git"]
    for url in listed:
        with pytest.raises(RepotuneError):
            resolve_revision(url)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [argv[0] for argv in calls] == ["clone"] * len(cloned) + ["ls-remote"] * len(listed)
    for argv, url in zip(calls, cloned + listed, strict=True):
        assert url in argv and "--" in argv[: argv.index(url)], argv


def test_a_run_command_ends_its_options_before_the_source(tmp_path: Path) -> None:
    settings = ApiSettings(
        store=str(tmp_path / "s"), work_dir=tmp_path / "w", db_path=tmp_path / "db", tokens=("t",)
    )
    db = Database(settings.db_path)
    runs = Runs(settings, db, SourceStore(settings, db))
    source = {"kind": "git", "repo_url": "https://example.com/team/app.git", "ref": "main"}
    recipe = choose_recipe("tiny-cpu", (shipped_recipes_dir(),))
    argv = runs.command(source, recipe, {"max_steps": 2}, tmp_path / "run" / "output")
    assert argv[-2:] == ["--", "https://example.com/team/app.git"]
    assert argv.index("--") == len(argv) - 2 and "--workdir" in argv


@pytest.mark.integration
def test_a_runs_git_reaches_the_checked_address_and_follows_no_redirect() -> None:
    """The pins a run gets (git's http.curloptResolve, no redirects) honoured by real git: a name that
    does not resolve at all reaches the checked address, and a redirect elsewhere is not followed."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/elsewhere.git")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        parsed = parse_repo_url(f"http://repo.invalid:{port}/team/app.git")
        env = {**os.environ, **git_pins(parsed, [ipaddress.ip_address("127.0.0.1")], os.environ)}
        env.update(GIT_TERMINAL_PROMPT="0")
        done = subprocess.run(
            ["git", "ls-remote", "--", parsed.url], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode != 0
    assert requests and all(path.startswith("/team/app.git/info/refs") for path in requests), requests


def _settings(tmp_path: Path, **changes: object) -> ApiSettings:
    return ApiSettings(
        store=str(tmp_path / "store"), work_dir=tmp_path / "work", db_path=tmp_path / "db", tokens=(TOKEN,),
        **changes,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_runs_writes_are_sent_under_the_apis_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REPOTUNE_HOME", "REPOTUNE_CACHE", "HF_HOME", "XDG_CACHE_HOME", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REPOTUNE_API_TOKENS", "api-secret")
    monkeypatch.setenv("REPOTUNE_API_MODEL_TOKEN", "model-secret")
    settings = _settings(tmp_path)
    db = Database(settings.db_path)
    runs = Runs(settings, db, SourceStore(settings, db))
    home = settings.work_dir / "runs" / ("a" * 32)
    env = runs.environment(home)
    assert Path(env["TMPDIR"]).is_relative_to(home) and Path(env["REPOTUNE_HOME"]).is_relative_to(home)
    for name in ("REPOTUNE_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        assert Path(env[name]).is_relative_to(settings.work_dir / "cache"), name
    assert "REPOTUNE_API_TOKENS" not in env and "REPOTUNE_API_MODEL_TOKEN" not in env
    source = {"kind": "github", "github": "octocat/hello-world", "ref": None}
    argv = runs.command(source, choose_recipe("tiny-cpu", (shipped_recipes_dir(),)), {}, home / "output")
    assert Path(argv[argv.index("--workdir") + 1]).is_relative_to(home)
    assert Path(argv[argv.index("--output") + 1]).is_relative_to(home)
    # Where the API's own environment names a place, that place is the configured one.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert runs.environment(home)["HF_HOME"] == str(tmp_path / "hf")


def test_which_finished_runs_expire() -> None:
    moment = datetime(2026, 3, 1, tzinfo=UTC)

    def row(run_id: str, state: str, finished: str | None, removed: str | None = None) -> dict:
        return {
            "id": run_id,
            "state": state,
            "created": "2026-01-01T00:00:00",
            "finished": finished,
            "removed": removed,
        }

    rows = [
        row("new", "succeeded", "2026-02-28T00:00:00+00:00"),
        row("mid", "failed", "2026-02-20T00:00:00+00:00"),
        row("old", "succeeded", "2026-01-02T00:00:00"),  # naive: UTC
        row("gone", "succeeded", "2026-01-01T00:00:00+00:00", removed="2026-02-01T00:00:00+00:00"),
        row("busy", "running", None),
    ]
    assert expired(rows, None, None, moment) == []
    assert expired(rows, 2, None, moment) == ["old"]
    assert expired(rows, None, 30, moment) == ["old"]
    assert expired(rows, 1, 30, moment) == ["mid", "old"]
    assert expired(rows, 0, None, moment) == ["new", "mid", "old"]


@pytest.mark.integration
def test_retention_removes_old_run_folders_and_marks_their_records(tmp_path: Path) -> None:
    settings = _settings(tmp_path, keep_runs=3, keep_days=20)
    app = create_app(settings)
    runs: Runs = app.state.runs
    moment = datetime.now(UTC)
    days_ago = {"f": 0.5, "a": 1, "b": 2, "c": 3, "d": 30, "e": None}
    finished = {
        k: None if d is None else (moment - timedelta(days=d)).isoformat() for k, d in days_ago.items()
    }
    for name, when in finished.items():
        run_id = name * 32
        home = RunHome(runs.home / run_id)
        (home.output).mkdir(parents=True)
        (home.output / "report.md").write_text("# report\n")
        (home.work / "kfp").mkdir(parents=True)
        (home.work / "kfp" / "model.safetensors").write_bytes(b"\0" * 1024)
        home.log.write_text("log\n")
        status = {"state": "running" if when is None else "succeeded", "report": "report.md"}
        (home.output / "status.json").write_text(json.dumps(status))
        with runs.db.connect() as conn:
            conn.execute(
                "INSERT INTO runs (id, source_id, recipe, overrides, backend, state, created, finished, "
                "run_dir, pid, pid_start, status) VALUES (?, ?, 'tiny-cpu', '{}', 'local', ?, "
                "'2026-01-01T00:00:00+00:00', ?, ?, ?, ?, ?)",
                (run_id, "0" * 64, "running" if when is None else "succeeded", when, str(home.output),
                 os.getpid() if when is None else None, None, json.dumps(status)),
            )  # fmt: skip

    # c has three newer finished runs; d is that too, and older than 20 days; e is still running.
    assert sorted(runs.prune(moment)) == ["c" * 32, "d" * 32]
    assert sorted(p.name[0] for p in runs.home.iterdir()) == ["a", "b", "e", "f"]
    assert runs.prune(moment) == []  # and the app's start below prunes nothing more
    with (
        serving_in_thread(app) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c,
    ):
        gone = c.get(f"/v1/runs/{'c' * 32}").json()
        assert gone["removed"] and gone["report_url"] is None and gone["log_url"] is None
        assert "REPOTUNE_API_KEEP_RUNS" in refused(c.get(f"/v1/runs/{'c' * 32}/report"), 404, "run_removed")
        refused(c.get(f"/v1/runs/{'d' * 32}/log"), 404, "run_removed")
        kept = c.get(f"/v1/runs/{'a' * 32}").json()
        assert kept["removed"] is None and kept["report_url"]
        assert c.get(f"/v1/runs/{'a' * 32}/report").text == "# report\n"


def test_a_database_from_before_retention_gains_its_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:  # the runs table as the previous version created it
        conn.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, source_id TEXT NOT NULL, recipe TEXT NOT NULL, "
            "overrides TEXT NOT NULL, backend TEXT NOT NULL, state TEXT NOT NULL, created TEXT NOT NULL, "
            "finished TEXT, run_dir TEXT, pid INTEGER, pid_start TEXT, exit_code INTEGER, kfp_run_id TEXT, "
            "error TEXT, status TEXT)"
        )
    Database(path)
    Database(path)  # a second start finds it there
    with sqlite3.connect(path) as conn:
        assert "removed" in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}


@pytest.mark.integration
def test_completions_carry_the_models_token_which_is_never_logged(tmp_path: Path) -> None:
    secret = "model-secret-4f9a17"
    assert secret not in repr(_settings(tmp_path, model_token=secret))
    with echo_model_server(token=secret) as (model, received):
        with running_api(
            tmp_path / "ok", REPOTUNE_API_MODEL_URL=model, REPOTUNE_API_MODEL_TOKEN=secret
        ) as server:
            with server.client() as client:
                answer = client.post("/v1/completions", json={"prompt": "def add("})
            assert answer.status_code == 200, answer.text
            assert received[-1]["authorization"] == f"Bearer {secret}"
        with (
            running_api(
                tmp_path / "wrong", REPOTUNE_API_MODEL_URL=model, REPOTUNE_API_MODEL_TOKEN="not-the-token"
            ) as wrong,
            wrong.client() as client,
        ):
            message = refused(client.post("/v1/completions", json={"prompt": "x"}), 502, "model_auth_failed")
        assert "refused the API's token" in message and "not-the-token" not in message
        with (
            running_api(tmp_path / "none", REPOTUNE_API_MODEL_URL=model) as tokenless,
            tokenless.client() as client,
        ):
            message = refused(client.post("/v1/completions", json={"prompt": "x"}), 502, "model_auth_failed")
        assert "REPOTUNE_API_MODEL_TOKEN" in message
    for log in (server.log, wrong.log):
        assert secret not in log.read_text() and "not-the-token" not in log.read_text()
