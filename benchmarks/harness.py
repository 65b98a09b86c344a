"""What every benchmark here shares: installing peers, measuring a process tree, printing the results.

- Installers: pinned npm packages into a prefix and PyPI packages into a venv or a ``--target`` folder,
  each reused when the pinned version is already there (the benchmarks keep them in ``.bench/``).
- Measuring: :func:`measure` runs one command in its own session and reports wall and CPU time, the
  kernel's peak RSS of the largest process and the sampled peak RSS and PSS of the whole process tree
  (:class:`TreeRssSampler`, ``/proc`` polled every 50 ms); whatever the command leaves running is ended.
- Printing: aligned tables, the targets block (printed, never asserted) and the machine line.

Linux is assumed for the tree sampling (``/proc``; ``ru_maxrss`` in KiB). MB means 2**20 bytes.
Benchmarks run as scripts (``python benchmarks/NAME.py``), so this module is imported as ``harness``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1024 * 1024
SAMPLE_INTERVAL_S = 0.05
NPM_FLAGS = ("--save-exact", "--no-audit", "--no-fund", "--loglevel=error")


def log(message: str) -> None:
    """Progress for the person watching (stderr), apart from the results (stdout)."""
    print(message, file=sys.stderr, flush=True)


def run_checked(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    log(f"$ {shlex.join(cmd)}")
    return subprocess.run(cmd, check=True, **kwargs)


def npm_install(npm: str, prefix: Path, package: str, version: str) -> Path:
    """``package@version`` installed into ``prefix`` (reused when that version is there); its folder."""
    folder = prefix / "node_modules" / package
    manifest = folder / "package.json"
    if not (manifest.exists() and json.loads(manifest.read_text())["version"] == version):
        prefix.mkdir(parents=True, exist_ok=True)
        run_checked(
            [npm, "install", "--prefix", str(prefix), f"{package}@{version}", *NPM_FLAGS], stdout=sys.stderr
        )
    return folder


def installed_version(python: Path, package: str) -> str | None:
    """The version of ``package`` in the environment of ``python``, or None when it is not installed."""
    if not python.exists():
        return None
    probe = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def venv_install(venv: Path, package: str, version: str) -> Path:
    """``package==version`` in its own venv at ``venv`` (made from the base interpreter, so the peer never
    sees the project's own venv), reused when that version is there; the venv's python."""
    python = venv / "bin" / "python"
    if installed_version(python, package) != version:
        if not python.exists():
            base = getattr(sys, "_base_executable", None) or sys.executable
            run_checked([base, "-m", "venv", str(venv)], stdout=sys.stderr)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        run_checked([*pip, f"{package}=={version}"], stdout=sys.stderr)
    got = installed_version(python, package)
    if got != version:
        raise SystemExit(f"{package} {version} did not install into {venv} (found {got})")
    return python


def target_install(dest: Path, requirements: Sequence[str]) -> Path:
    """``requirements`` (without their dependencies) pip-installed into the folder ``dest``, reused while a
    marker file says they are the same; returns ``dest``."""
    import shutil

    marker = dest / ".benchmark-spec"
    spec = " ".join(requirements)
    if marker.exists() and marker.read_text() == spec:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run_checked([*pip, "--no-deps", "--no-compile", "--target", str(dest), *requirements], stdout=sys.stderr)
    marker.write_text(spec)
    return dest


class TreeRssSampler(threading.Thread):
    """Polls /proc for the summed RSS and PSS of a process and all its live descendants.

    PSS splits pages shared between processes (forked workers, shared libraries) among them, so the
    PSS sum is the tree's real footprint; the RSS sum counts shared pages once per process.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.peak_pss = 0
        self._halt = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.available = Path(f"/proc/{pid}/statm").exists()
        tid = threading.get_native_id()
        self._children_file = Path(f"/proc/{os.getpid()}/task/{tid}/children").exists()
        self.pss_available = Path(f"/proc/{os.getpid()}/smaps_rollup").exists()

    def _children(self, pid: int) -> list[int]:
        kids: list[int] = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
        return kids

    def _all_parents(self) -> dict[int, list[int]]:
        """Fallback without /proc/PID/task/TID/children: one pass over every process's ppid."""
        tree: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
        return tree

    def _rss(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            return 0

    def _pss_of(self, pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def sample(self) -> None:
        rss = pss = 0
        parents = None if self._children_file else self._all_parents()
        todo, seen = [self.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            rss += self._rss(pid)
            if self.pss_available:
                pss += self._pss_of(pid)
            todo.extend(self._children(pid) if parents is None else parents.get(pid, []))
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that have not exited (zombies left unreaped do not count)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    live: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            live.append(int(entry))
    return live


@dataclass
class StepResult:
    cmd: list[str]
    rc: int
    wall_s: float
    cpu_s: float
    maxrss_mb: float  # kernel high-water mark of the largest single process (as /usr/bin/time -v)
    tree_rss_mb: float | None  # sampled peak of the summed RSS of all live processes in the tree
    tree_pss_mb: float | None  # the same for PSS (shared pages split between the processes)


def measure(cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, timeout: float) -> StepResult:
    """Runs ``cmd`` in its own session, its output appended to ``log_path``, killed after ``timeout`` s."""
    with log_path.open("ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
        out.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        sampler = TreeRssSampler(proc.pid)
        if sampler.available:
            sampler.start()
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        timer.cancel()
        if sampler.available:
            sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Anything the tool left running in its session is ours to end (we started it). Helpers such
        # as multiprocessing's resource tracker exit just after their parent, so give them a second.
        deadline = time.monotonic() + 1.0
        while True:
            if not live_group_members(proc.pid):
                break
            if time.monotonic() > deadline:
                log(
                    f"warning: {shlex.join(cmd[:2])} left processes running 1 s after it exited; killing them"
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        if timed_out.is_set():
            out.write(f"\n[benchmark] killed after {timeout:.0f} s\n".encode())
    maxrss = ru.ru_maxrss / (MB if sys.platform == "darwin" else 1024)
    return StepResult(
        cmd=cmd,
        rc=proc.returncode,
        wall_s=wall,
        cpu_s=ru.ru_utime + ru.ru_stime,
        maxrss_mb=maxrss,
        tree_rss_mb=sampler.peak_rss / MB if sampler.available else None,
        tree_pss_mb=sampler.peak_pss / MB if sampler.available and sampler.pss_available else None,
    )


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or "-" when there is none."""
    return "-" if value is None else format(value, spec)


def print_table(head: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> None:
    """A table of text cells: the first ``left`` columns aligned left, the others right, a rule below."""
    table = [list(head), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        cells = [
            c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def status(value: float | None, goal: float, *, higher_is_better: bool = True, missing: str = "N/A") -> str:
    """PASS or MISS for ``value`` against ``goal``; ``missing`` when there is no value."""
    if value is None:
        return missing
    return "PASS" if (value >= goal if higher_is_better else value < goal) else "MISS"


def print_targets(lines: Iterable[str]) -> None:
    """The targets block: one line each, never asserted (a benchmark reports, it does not fail)."""
    print("\nTargets (printed, not asserted):")
    for line in lines:
        print(f"  {line}")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write_json(path: Path, payload: dict[str, Any], **dumps: Any) -> None:
    """The results as JSON at ``path`` (its folder made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, **dumps) + "\n")
    log(f"wrote {path}")


def repository_source() -> str:
    """This repository's own Python source (``src/``) as one text: real code of every kind to tokenize,
    the same on every machine that has the checkout."""
    root = Path(__file__).resolve().parent.parent
    return "".join(path.read_text() for path in sorted((root / "src").rglob("*.py")))
