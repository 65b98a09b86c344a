"""Shared fixtures: real git repositories and source trees built in temporary folders."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

TIERS = ("integration", "slow", "faults")

# Under pytest-xdist (`make test` runs `-n auto`), each worker gets its share of the cores for torch's
# threads, and so do the processes its tests start (OMP_NUM_THREADS is inherited): two workers with
# two threads each on a 2-core machine would oversubscribe it. Set before any test imports torch.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_share)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test without a slower tier belongs to the default `unit` tier.
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Example",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Example",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, date: str | None = None) -> str:
    env = {**os.environ, **GIT_ENV}
    if date is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    proc = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return proc.stdout


def write_tree(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


SAMPLE_FILES: dict[str, str | bytes] = {
    "README.md": "# Sample\n\nA sample project used by repotune's tests. It adds numbers.\n",
    "src/sample/__init__.py": '"""Sample package."""\n\nfrom sample.math import add\n\n__all__ = ["add"]\n',
    "src/sample/math.py": (
        "def add(a: int, b: int) -> int:\n"
        '    """Return the sum of a and b."""\n'
        "    return a + b\n\n\n"
        "def mul(a: int, b: int) -> int:\n"
        "    return a * b\n"
    ),
    "scripts/run": "#!/usr/bin/env python3\nimport sys\n\nprint('running', sys.argv[1:])\n",
    "docs/guide.rst": "Guide\n=====\n\nCall ``add(1, 2)`` to add two numbers together.\n",
    ".gitignore": "*.log\nsecret_dir/\n",
    "debug.log": "this line is ignored by .gitignore\n",
    "node_modules/left-pad/index.js": "module.exports = function leftPad() {}\n",
    "package-lock.json": '{"lockfileVersion": 3}\n',
    "logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "data.weird": b"abc\x00\x01\x02binary payload without a known extension",
}


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    root = tmp_path / "sample"
    write_tree(root, SAMPLE_FILES)
    return root


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    """A real git repository with one commit per entry of ``commits`` (message, files, ISO date)."""

    def make(commits: list[tuple[str, dict[str, str | bytes], str]], name: str = "repo") -> Path:
        repo = tmp_path / name
        repo.mkdir()
        git(repo, "init", "--quiet", "--initial-branch=main")
        for message, files, date in commits:
            write_tree(repo, files)
            git(repo, "add", "--all")
            git(repo, "commit", "--quiet", "--message", message, date=date)
        return repo

    return make


@pytest.fixture
def sample_repo(make_repo: Callable[..., Path]) -> Path:
    tracked = {k: v for k, v in SAMPLE_FILES.items() if k not in ("debug.log",)}
    return make_repo(
        [
            (
                "Add the sample package\n\nIt adds numbers.",
                {"src/sample/math.py": SAMPLE_FILES["src/sample/math.py"]},
                "2024-01-01T10:00:00+00:00",
            ),
            ("Add docs, scripts and assets", tracked, "2024-02-01T10:00:00+00:00"),
            (
                "Fix typo in the guide",
                {"docs/guide.rst": "Guide\n=====\n\nCall ``add(1, 2)`` to add numbers.\n"},
                "2024-03-01T10:00:00+00:00",
            ),
        ]
    )


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models built by tests (the tiny model, a converted SmolLM2) go to a session folder, not ~/.cache."""
    folder = tmp_path_factory.mktemp("model-cache")
    previous = os.environ.get("REPOTUNE_CACHE")
    os.environ["REPOTUNE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("REPOTUNE_CACHE", None)
    else:
        os.environ["REPOTUNE_CACHE"] = previous


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests.test_train.PROJECT`` ingested and cleaned: training data for tiny models."""
    from tests.test_train import PROJECT

    from repotune import clean, ingest
    from repotune.clean import CleanConfig
    from repotune.ingest import IngestConfig

    root = tmp_path_factory.mktemp("project")
    write_tree(root / "tree", PROJECT)
    ingest.run(IngestConfig(source=str(root / "tree"), output=root / "ingest"))
    clean.run(CleanConfig(input=root / "ingest", output=root / "clean", workers=1))
    return root / "clean"


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_s3_server():
    """Stops the session's SeaweedFS (started by the first test that asks for S3) when the session ends."""
    yield
    from tests.s3_server import stop_shared_server

    stop_shared_server()


@pytest.fixture(scope="session")
def s3_server():
    """The session's SeaweedFS S3 server (``repotune.pipelines.seaweedfs.S3Server``), started on first use."""
    from tests.s3_server import shared_server

    return shared_server()
