"""The `repotune` command as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def repotune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repotune.cli", *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_ingest_then_clean_from_the_command_line(sample_repo: Path, tmp_path: Path) -> None:
    done = repotune("ingest", str(sample_repo), "-o", str(tmp_path / "in"))
    assert done.returncode == 0, done.stderr
    assert "ingested" in done.stderr and "skipped:" in done.stderr
    manifest = json.loads((tmp_path / "in" / "manifest.json").read_text())
    assert manifest["kept"]["commit"] == 3
    done = repotune("clean", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "kept" in done.stderr
    for name in ("train.jsonl", "eval.jsonl", "stats.json", "report.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def _one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in done.stderr


def test_bad_input_gives_one_line_and_exit_2(tmp_path: Path) -> None:
    _one_line_error(
        repotune("ingest", str(tmp_path / "missing"), "-o", str(tmp_path / "o")), "does not exist"
    )
    _one_line_error(
        repotune("ingest", str(tmp_path), "-o", str(tmp_path / "o"), "--include", "code,binaries"),
        "unknown kind 'binaries'",
    )
    corrupt = tmp_path / "broken.zip"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    _one_line_error(repotune("ingest", str(corrupt), "-o", str(tmp_path / "o")), "corrupt or unreadable")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.py", "print('escaped')\n")
    _one_line_error(repotune("ingest", str(evil), "-o", str(tmp_path / "o")), "escapes the archive")
    _one_line_error(
        repotune("ingest", f"file://{tmp_path}/nothing.git", "-o", str(tmp_path / "o")), "cannot clone"
    )
    _one_line_error(repotune("ingest", "github:not-a-repo", "-o", str(tmp_path / "o")), "github:OWNER/REPO")
    _one_line_error(
        repotune("clean", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")), "no records.jsonl"
    )
    _one_line_error(
        repotune("ingest", str(tmp_path), "-o", str(tmp_path / "o"), "--since", "last tuesday"), "--since"
    )
    (tmp_path / "empty").mkdir()
    _one_line_error(
        repotune("ingest", str(tmp_path / "empty"), "-o", str(tmp_path / "o")), "yielded no records"
    )
    assert not (tmp_path / "o" / "records.jsonl").exists()


def test_help_lists_the_stages() -> None:
    done = repotune("--help")
    assert done.returncode == 0
    assert "ingest" in done.stdout and "clean" in done.stdout
