"""Local copies into one target from many writers at once (threads and processes): the mechanism under
the upload API's store, where the same archive uploaded several times at once lands on the same folder."""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from repotune import storage

ROUNDS = 10


def _tree(root: Path, text: str) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "record.json").write_text(text)
    (root / "sub" / "archive.bin").write_bytes(text.encode() * 4096)
    return root


def _contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _copy_rounds(source: str, target: str, start: threading.Barrier | None = None) -> None:
    if start is not None:
        start.wait()
    for _ in range(ROUNDS):
        storage.copy_to(source, target)


def _process_worker(source: str, target: str, start, failures) -> None:
    start.wait()
    try:
        _copy_rounds(source, target)
    except BaseException as exc:  # reported to the parent, which fails the test with it
        failures.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.integration
def test_identical_copies_from_threads_and_processes_all_succeed_and_leave_nothing(tmp_path: Path) -> None:
    source = _tree(tmp_path / "upload", '{"id": "abc"}')
    target = tmp_path / "store" / "sources" / "abc"
    target.parent.mkdir(parents=True)

    start = threading.Barrier(8)
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(_copy_rounds, str(source), str(target), start) for _ in range(8)]:
            future.result()  # raises what the thread raised

    context = multiprocessing.get_context("spawn")
    process_start, failures = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=_process_worker, args=(str(source), str(target), process_start, failures))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    reported = [failures.get() for _ in range(failures.qsize())] if not failures.empty() else []
    assert reported == [] and [w.exitcode for w in workers] == [0] * 4, reported

    assert _contents(target) == _contents(source)
    assert os.listdir(target.parent) == ["abc"]  # no .abc.*.old or .abc.*.tmp left beside it


def test_the_same_content_is_kept_in_place_and_other_content_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "store" / "abc"
    storage.copy_to(_tree(tmp_path / "first", "one"), target)
    inode = target.stat().st_ino
    storage.copy_to(_tree(tmp_path / "again", "one"), target)
    # Already there with the same bytes: nothing was swapped, so a reader never found it missing.
    assert target.stat().st_ino == inode
    storage.copy_to(_tree(tmp_path / "second", "two"), target)
    assert _contents(target) == _contents(tmp_path / "second")
    assert os.listdir(target.parent) == ["abc"]
