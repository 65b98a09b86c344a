"""Pipeline runs: started as ``python -m repotune run`` subprocesses (or submitted to KFP), followed through
their ``status.json``, with their state kept in SQLite so that runs outlive an API restart.

A run's local folder (under ``REPOTUNE_API_WORK_DIR/runs/<id>/``, see :class:`RunHome`) holds everything
the run writes: ``output/`` (the RUN_DIR given to ``repotune run``, where it keeps ``status.json`` and its
results), ``work/`` (its work folder: kfp.local's artifacts and step cache, and the local MLflow store
unless MLFLOW_TRACKING_URI names a server), ``tmp/`` (its TMPDIR) and ``run.log`` (its stdout and stderr).
Caches the runs share (converted base models, Hugging Face files) are under ``REPOTUNE_API_WORK_DIR/cache``.
Finished runs' folders are removed after REPOTUNE_API_KEEP_RUNS newer ones or REPOTUNE_API_KEEP_DAYS days.
The subprocess starts in its own session, so stopping the API does not stop it; an API started later
finds it through its recorded pid and start time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from repotune import storage
from repotune.api.db import Database
from repotune.api.errors import ApiError
from repotune.api.policy import git_pins
from repotune.api.recipes import RecipeChoice
from repotune.api.schemas import RunInfo, StageInfo
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore, now
from repotune.errors import RepotuneError
from repotune.pipelines.status import RunLayout, RunStatus

FINAL_STATES = ("succeeded", "failed")
LOST = "lost: the API restarted while it ran and no final status was written"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
LOG_TAIL_BYTES = 2000
# The API's own settings (its tokens, the model's token among them): a run has no business seeing them.
_PRIVATE_ENV_PREFIX = "REPOTUNE_API_"


@dataclass(frozen=True)
class RunHome:
    """The folder of one local run: everything it writes, removed whole by retention."""

    root: Path

    @property
    def output(self) -> Path:
        """The RUN_DIR of ``repotune run``: status.json, the report, the run's results."""
        return self.root / "output"

    @property
    def work(self) -> Path:
        """The run's work folder (``--workdir``): kfp.local's artifacts and cache, a local MLflow store."""
        return self.root / "work"

    @property
    def tmp(self) -> Path:
        """The run's TMPDIR."""
        return self.root / "tmp"

    @property
    def log(self) -> Path:
        """The run's stdout and stderr."""
        return self.root / "run.log"


def process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, from /proc), "" when alive but the platform has
    no /proc, or None when there is no such live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return ""
        return ""
    # The command name (field 2) may hold spaces and parentheses, so split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_time = fields[0], fields[19]
    return None if state in ("Z", "X") else start_time


def is_alive(pid: int | None, recorded_start: str | None) -> bool:
    """True when ``pid`` is still the process that was started (not a later one that reused the pid)."""
    if pid is None:
        return False
    current = process_start(pid)
    if current is None:
        return False
    return not recorded_start or not current or current == recorded_start


def read_status(run_dir: Path | None) -> RunStatus | None:
    """The run's ``status.json``, or None when it is absent or not a run status."""
    return RunStatus.read(RunLayout(run_dir).status) if run_dir is not None else None


def stored_status(row: dict[str, Any]) -> RunStatus | None:
    """The status last saved with a run (its status.json, or its KFP state), or None."""
    try:
        return RunStatus.from_dict(json.loads(row["status"])) if row["status"] else None
    except ValueError:
        return None


def settle(status: RunStatus | None, exit_code: int | None, alive: bool) -> tuple[str, str | None] | None:
    """A run's final state and error once its process is gone, or None while it still runs.

    ``exit_code`` is known only for a process this API started and waited for; a process left by an
    earlier API instance is judged by its status.json alone.
    """
    if alive:
        return None
    state = status.state if status else None
    error = status.error if status else None
    if exit_code is not None and exit_code != 0:
        if state == "failed" and error:
            return "failed", str(error)
        return "failed", f"`repotune run` exited with code {exit_code} without a final status.json"
    if state == "succeeded":
        return "succeeded", None
    if state == "failed":
        return "failed", str(error) if error else "the run failed (status.json gives no error)"
    if exit_code == 0:
        return "failed", "`repotune run` exited with code 0 but status.json does not say it finished"
    return "failed", LOST


def _when(timestamp: str | None) -> datetime:
    """An ISO 8601 time from the database (naive ones are UTC); the distant past when there is none."""
    if not timestamp:
        return datetime.min.replace(tzinfo=UTC)
    moment = datetime.fromisoformat(timestamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def expired(
    rows: list[dict[str, Any]], keep_runs: int | None, keep_days: float | None, moment: datetime
) -> list[str]:
    """The finished runs among ``rows`` whose folders go: those with ``keep_runs`` newer finished runs,
    and those that finished more than ``keep_days`` days before ``moment``. Running runs and runs
    already removed are never chosen (and do not count among the kept)."""
    finished = [r for r in rows if r["state"] in FINAL_STATES and not r.get("removed")]
    finished.sort(key=lambda r: (_when(r["finished"] or r["created"]), r["id"]), reverse=True)
    chosen = []
    for position, row in enumerate(finished):
        too_many = keep_runs is not None and position >= keep_runs
        too_old = keep_days is not None and moment - _when(row["finished"] or row["created"]) > timedelta(
            days=keep_days
        )
        if too_many or too_old:
            chosen.append(row["id"])
    return chosen


def log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a run's log as text ("" when there is no log)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _ref(registered: Sequence[dict[str, Any]]) -> str | None:
    """The ref of the run: the git repository's, else the first source's (a ref belongs to one source)."""
    git = [info for info in registered if info["kind"] == "git"]
    return (git or list(registered))[0].get("ref")


def _check_services(services: Sequence[str]) -> None:
    """A wiki or tracker source needs its site and credentials in this server's environment, which a
    local run inherits: refused now, in one line naming them, rather than by the run's first check."""
    from repotune.pipelines import credentials

    for spec in services:
        gaps = credentials.missing(credentials.needs("ingest", source=spec))
        if gaps:
            need, unset = gaps[0]
            raise ApiError(
                409,
                "source_not_configured",
                f"{spec}: this server has no {' and '.join(unset)} set (the {need.secret.name} settings)",
            )


def _kfp_submit_module():
    """The lead's KFP submission module, imported only when a KFP host is configured."""
    try:
        from repotune.pipelines import submit
    except ImportError as exc:
        raise ApiError(
            503,
            "kfp_unavailable",
            f"REPOTUNE_KFP_HOST is set but repotune.pipelines.submit cannot be imported ({exc}); "
            "unset REPOTUNE_KFP_HOST to run pipelines on this machine",
        ) from None
    return submit


CANCEL_GRACE_S = 60.0
"""Seconds a cancelled run has to stop on SIGTERM before it is killed."""


class Runs:
    """Creates runs and answers what they are doing; every state change goes through SQLite."""

    def __init__(self, settings: ApiSettings, db: Database, sources: SourceStore) -> None:
        self.settings, self.db, self.sources = settings, db, sources
        self.home = settings.work_dir / "runs"
        # Processes this API instance started and is waiting for, by run id: only their exit codes
        # are known, and they are settled by their waiting thread, not by polling.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._cancelled: set[str] = set()
        # Runs this API instance is starting, by id: recorded "running" but with no process yet (no pid,
        # not in _children). Never settled meanwhile: a poll would find no process and call them lost.
        self._starting: set[str] = set()

    def cancel(self, row: dict[str, Any]) -> dict[str, Any]:
        """Stops a running local run: SIGTERM to its process group, which ends ``repotune run`` as Ctrl-C
        does (the step stopped, the local object store shut down, the status saying so), then SIGKILL
        if it is still there after ``CANCEL_GRACE_S``. Returns the row; 409 for a finished run or one on
        KFP (terminated in the KFP UI)."""
        row = self.refresh(row)
        if row["state"] != "running":
            raise ApiError(409, "run_finished", f"run {row['id']} has already {row['state']}")
        if row["id"] in self._starting:
            raise ApiError(
                409, "run_starting", f"run {row['id']} is still starting; cancel it again in a moment"
            )
        if row["backend"] == "kfp":
            raise ApiError(
                409, "cancel_on_kfp", f"run {row['id']} runs on KFP as {row.get('kfp_run_id')}: stop it there"
            )
        pid = row["pid"]
        if not is_alive(pid, row["pid_start"]):
            return self.refresh(row)
        self._cancelled.add(row["id"])
        os.killpg(pid, signal.SIGTERM)  # the run was started in its own session: its group is its pid

        def escalate() -> None:
            deadline = time.monotonic() + CANCEL_GRACE_S
            while time.monotonic() < deadline:
                if not is_alive(pid, row["pid_start"]):
                    return
                time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

        threading.Thread(target=escalate, name=f"cancel-{row['id']}", daemon=True).start()
        return row

    def reconcile(self) -> list[str]:
        """Settles runs left "running" by an earlier API instance whose process is gone; returns their ids."""
        with self.db.connect() as conn:
            rows = [dict(r) for r in conn.execute("SELECT * FROM runs WHERE state = 'running'")]
        changed = []
        for row in rows:
            if self.refresh(row)["state"] != "running":
                changed.append(row["id"])
        return changed

    def get(self, run_id: str) -> dict[str, Any] | None:
        if not RUN_ID.match(run_id):
            return None
        with self.db.connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else self.refresh(dict(row))

    def list(self, limit: int, state: str | None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs", []
        if state is not None:
            query, args = query + " WHERE state = ?", [state]
        with self.db.connect() as conn:
            rows = conn.execute(query + " ORDER BY created DESC, id LIMIT ?", [*args, limit]).fetchall()
        return [self.refresh(dict(row)) for row in rows]

    def refresh(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with the latest status folded in; a run whose process is gone is settled for good."""
        if row["state"] in FINAL_STATES:
            return row
        if row["backend"] == "kfp":
            return self._refresh_kfp(row)
        run_dir = Path(row["run_dir"]) if row["run_dir"] else None
        status = read_status(run_dir)
        # _starting is looked at first: a run leaves it only once it is in _children (or has finished).
        if row["id"] in self._starting or row["id"] in self._children:
            if status is not None:
                row["status"] = self._save_status(row["id"], status)
            return row
        decision = settle(status, row["exit_code"], is_alive(row["pid"], row["pid_start"]))
        if decision is None:
            if status is not None:
                row["status"] = self._save_status(row["id"], status)
            return row
        return self._finish(row["id"], *decision, status=status, exit_code=row["exit_code"])

    def _save_status(self, run_id: str, status: RunStatus) -> str:
        """Saves ``status`` with a running run; returns it as saved (JSON)."""
        saved = json.dumps(status.to_dict())
        with self.db.connect() as conn:
            conn.execute("UPDATE runs SET status = ? WHERE id = ? AND state = 'running'", (saved, run_id))
        return saved

    def _finish(
        self,
        run_id: str,
        state: str,
        error: str | None,
        *,
        status: RunStatus | None,
        exit_code: int | None,
    ) -> dict[str, Any]:
        finished = (status.finished if status else None) or now()
        if run_id in self._cancelled and state == "failed":
            error = "cancelled by a client (POST /v1/runs/ID/cancel)"
        with self.db.connect() as conn:
            # Only a running run changes; whichever of the waiting thread and a poll comes second is a no-op.
            changed = conn.execute(
                "UPDATE runs SET state = ?, error = ?, finished = ?, exit_code = ?, "
                "status = COALESCE(?, status) WHERE id = ? AND state = 'running'",
                (state, error, finished, exit_code, json.dumps(status.to_dict()) if status else None, run_id),
            ).rowcount
            row = dict(conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
        if changed:
            # A run finished: older ones may now be past retention. In the background: removing a
            # model's folder can take a while, and this may be a GET's thread.
            threading.Thread(target=self.prune, name="prune-runs", daemon=True).start()
        return row

    def prune(self, moment: datetime | None = None) -> list[str]:
        """Removes the folders of finished runs past REPOTUNE_API_KEEP_RUNS / _KEEP_DAYS and marks their
        records removed; returns their ids. Safe to run from several threads at once."""
        with self.db.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    "SELECT id, state, created, finished, removed FROM runs "
                    "WHERE state != 'running' AND removed IS NULL"
                )
            ]
        chosen = expired(rows, self.settings.keep_runs, self.settings.keep_days, moment or datetime.now(UTC))
        for run_id in chosen:
            home = RunHome(self.home / run_id)
            shutil.rmtree(home.root, ignore_errors=True)
            if home.root.exists():
                continue  # not all of it could be removed; tried again at the next prune
            with self.db.connect() as conn:
                conn.execute("UPDATE runs SET removed = ? WHERE id = ? AND removed IS NULL", (now(), run_id))
        return chosen

    def active(self) -> int:
        with self.db.connect() as conn:
            rows = [dict(r) for r in conn.execute("SELECT * FROM runs WHERE state = 'running'")]
        return sum(1 for row in rows if self.refresh(row)["state"] == "running")

    def create(
        self,
        source: dict[str, Any],
        recipe: RecipeChoice,
        overrides: dict[str, Any],
        more: Sequence[dict[str, Any]] = (),
        services: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Start a run over ``source`` (and ``more`` registered sources and ``services``, wiki and tracker
        sources, for the same dataset)."""
        pins: dict[str, str] = {}
        registered = [source, *more]
        gits = [info for info in registered if info["kind"] == "git"]
        if len(gits) > 1:
            raise ApiError(
                422,
                "too_many_repositories",
                "a run reads at most one git repository (give the others as archives)",
            )
        if gits:
            # Checked again now: the policy, or what the host name resolves to, may have changed since the
            # source was added. A local run's git is then pinned to the addresses just checked.
            parsed, addresses = self.sources.policy.check(gits[0]["repo_url"])
            pins = git_pins(parsed, addresses, os.environ)
        submit = None
        if not self.settings.kfp_host:
            _check_services(services)
        else:
            # Checked before a run record exists: without these no KFP run can start at all.
            submit = _kfp_submit_module()
            archives = any(info["kind"] == "archive" for info in registered)
            if archives and not storage.is_s3_uri(self.settings.store):
                raise ApiError(
                    409,
                    "store_not_shared",
                    "a KFP cluster cannot read this API's local store; "
                    "set REPOTUNE_API_STORE to an s3:// prefix",
                )
        with self._lock:
            # Counted and inserted under one lock, so concurrent requests cannot overshoot the limit.
            if self.active() >= self.settings.max_active_runs:
                raise ApiError(
                    429,
                    "too_many_runs",
                    f"{self.settings.max_active_runs} runs are already in progress "
                    "(REPOTUNE_API_MAX_ACTIVE_RUNS); try again when one finishes",
                )
            run_id = uuid.uuid4().hex
            backend = "local" if submit is None else "kfp"
            run_home = self.home / run_id
            self._starting.add(run_id)  # before the row exists: no poll may see it without its process
            with self.db.connect() as conn:
                conn.execute(
                    "INSERT INTO runs (id, source_id, recipe, overrides, backend, state, created, run_dir, "
                    "more_sources) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                    (
                        run_id,
                        source["id"],
                        recipe.name,
                        json.dumps(overrides, sort_keys=True),
                        backend,
                        now(),
                        str(RunHome(run_home).output) if backend == "local" else None,
                        json.dumps({"source_ids": [info["id"] for info in more], "services": list(services)}),
                    ),
                )
        try:
            if submit is not None:
                self._submit_kfp(submit, run_id, registered, services, recipe, overrides)
            else:
                self._launch(run_id, run_home, registered, services, recipe, overrides, pins)
        except ApiError as exc:
            self._finish(run_id, "failed", exc.message, status=None, exit_code=None)
            raise
        except Exception as exc:  # whatever stopped the start, the record must not stay "running"
            self._finish(run_id, "failed", f"could not start the run: {exc}", status=None, exit_code=None)
            raise ApiError(502, "run_not_started", f"could not start the run: {exc}") from None
        finally:
            with self._lock:
                self._starting.discard(run_id)
        found = self.get(run_id)
        assert found is not None  # inserted above
        return found

    def command(
        self,
        source: dict[str, Any] | Sequence[dict[str, Any]],
        recipe: RecipeChoice,
        overrides: dict[str, Any],
        run_dir: Path,
        services: Sequence[str] = (),
    ) -> list[str]:
        """The ``repotune run`` command line for this run (one registered source or several, then the
        ``services``); ``run_dir`` is ``RUN_HOME/output``, and the run's artifacts, step cache and local
        MLflow store go to ``RUN_HOME/work``."""
        registered = [source] if isinstance(source, dict) else list(source)
        layout = RunHome(run_dir.parent)
        # --no-query: a local run's model server would stop with the run; completions go to a deployed one
        argv = [sys.executable, "-m", "repotune", "run", "--recipe", str(recipe.path)]
        argv += ["--output", str(run_dir), "--workdir", str(layout.work), "--no-query"]
        ref = _ref(registered)
        if ref:
            argv += ["--ref", ref]
        for key, value in sorted(overrides.items()):
            # JSON scalars are valid YAML, which is how `--set` reads values (strings stay strings).
            argv += ["--set", f"{key}={json.dumps(value)}"]
        # The sources last, after "--": whatever they look like, they are never read as options.
        return [*argv, "--", *(self.sources.run_argument(info) for info in registered), *services]

    def environment(self, run_home: Path, pins: Mapping[str, str] | None = None) -> dict[str, str]:
        """The run's environment: the API's, less its own REPOTUNE_API_* settings (its tokens among them),
        with every place a run writes to by default moved under the run's folder (temporary files, the
        pipeline's work folder) or the API's cache folder (models and Hugging Face files, shared by
        runs) unless the API's environment names them; plus ``pins`` (see ``policy.git_pins``)."""
        layout, cache = RunHome(run_home), self.settings.work_dir / "cache"
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_ENV_PREFIX)}
        env.update(PYTHONUNBUFFERED="1", TMPDIR=str(layout.tmp), REPOTUNE_HOME=str(layout.work))
        env.setdefault("REPOTUNE_CACHE", str(cache / "repotune"))
        env.setdefault("HF_HOME", str(cache / "huggingface"))
        env.setdefault("XDG_CACHE_HOME", str(cache))
        env.update(pins or {})
        return env

    def _launch(
        self,
        run_id: str,
        run_home: Path,
        registered: list[dict[str, Any]],
        services: Sequence[str],
        recipe: RecipeChoice,
        overrides: dict[str, Any],
        pins: Mapping[str, str],
    ) -> None:
        layout = RunHome(run_home)
        for folder in (layout.root, layout.work, layout.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        argv = self.command(registered, recipe, overrides, layout.output, services)
        env = self.environment(run_home, pins)
        with layout.log.open("ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=run_home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # an API restart (or Ctrl-C in its terminal) leaves the run going
            )
        self._children[run_id] = process
        with self.db.connect() as conn:
            conn.execute(
                "UPDATE runs SET pid = ?, pid_start = ? WHERE id = ?",
                (process.pid, process_start(process.pid), run_id),
            )
        threading.Thread(target=self._wait, args=(run_id, process), name=f"run-{run_id}", daemon=True).start()

    def _wait(self, run_id: str, process: subprocess.Popen[bytes]) -> None:
        exit_code = process.wait()
        with self.db.connect() as conn:
            row = conn.execute("SELECT run_dir FROM runs WHERE id = ?", (run_id,)).fetchone()
        run_dir = Path(row["run_dir"])
        status = read_status(run_dir)
        decision = settle(status, exit_code, alive=False)
        assert decision is not None  # not alive
        state, error = decision
        if state == "failed" and status is None:
            tail = log_tail(RunHome(run_dir.parent).log).strip()
            error = f"{error}; last output:\n{tail}" if tail else error
        self._finish(run_id, state, error, status=status, exit_code=exit_code)
        self._children.pop(run_id, None)

    def _submit_kfp(
        self,
        submit: Any,
        run_id: str,
        registered: list[dict[str, Any]],
        services: Sequence[str],
        recipe: RecipeChoice,
        overrides: dict[str, Any],
    ) -> None:
        first, *more = [
            self.sources.archive_uri(info) if info["kind"] == "archive" else self.sources.run_argument(info)
            for info in registered
        ]
        # The pipeline's own parameters; the recipe is what the pipeline is built with (its resources).
        arguments: dict[str, Any] = {"source": first}
        if more or services:
            arguments["more_sources"] = [*more, *services]
        ref = _ref(registered)
        if ref:
            arguments["ref"] = ref
        if overrides:
            arguments["training"] = dict(overrides)
        kfp_run_id = submit.submit_run(
            self.settings.kfp_host, arguments, f"repotune-{run_id[:12]}", recipe=str(recipe.path)
        )
        with self.db.connect() as conn:
            conn.execute("UPDATE runs SET kfp_run_id = ? WHERE id = ?", (kfp_run_id, run_id))

    def _refresh_kfp(self, row: dict[str, Any]) -> dict[str, Any]:
        if not row["kfp_run_id"] or not self.settings.kfp_host:
            return row
        try:
            raw = _kfp_submit_module().run_state(self.settings.kfp_host, row["kfp_run_id"])
        except ApiError:
            return row
        except Exception as exc:  # the cluster being unreachable must not fail a GET; say so instead
            row["status"] = json.dumps(RunStatus(error=f"cannot reach KFP: {exc}").to_dict())
            return row
        status = RunStatus.from_kfp(raw)
        if status.state in FINAL_STATES:
            error = status.error or f"KFP run {row['kfp_run_id']} ended {raw.get('state')}"
            return self._finish(
                row["id"], status.state, None if status.state == "succeeded" else error, status=status,
                exit_code=None,
            )  # fmt: skip
        row["status"] = self._save_status(row["id"], status)
        return row

    def view(self, row: dict[str, Any]) -> RunInfo:
        """The run as the API shows it: its record with the last status folded in."""
        status = stored_status(row) or RunStatus()
        stages = {name: StageInfo(**dataclasses.asdict(stage)) for name, stage in status.stages.items()}
        base = f"/v1/runs/{row['id']}"
        more = json.loads(row.get("more_sources") or "{}")
        return RunInfo(
            id=row["id"],
            source_id=row["source_id"],
            more_source_ids=more.get("source_ids", []),
            services=more.get("services", []),
            recipe=row["recipe"],
            overrides=json.loads(row["overrides"]),
            backend=row["backend"],
            state=row["state"],
            created=row["created"],
            started=status.started or row["created"],
            finished=row["finished"] if row["state"] in FINAL_STATES else None,
            error=row["error"] if row["state"] == "failed" else None,
            stages=stages or None,
            metrics=status.metrics,
            promote=status.promote,
            decision=status.decision,
            model=status.model,
            endpoint=status.endpoint,
            report_url=f"{base}/report" if self.report(row) is not None else None,
            log_url=f"{base}/log" if row["backend"] == "local" and not row.get("removed") else None,
            pid=row["pid"],
            run_dir=row["run_dir"],
            kfp_run_id=row["kfp_run_id"],
            removed=row.get("removed"),
        )

    def report(self, row: dict[str, Any]) -> Path | None:
        """The run's evaluation report (report.md) as a local file, or None while there is none (or no
        longer: retention removed it)."""
        if row.get("removed"):
            return None
        status = stored_status(row)
        if row["state"] == "running":
            status = read_status(Path(row["run_dir"]) if row["run_dir"] else None) or status
        report = status.report if status is not None else None
        if not report:
            return None
        if storage.is_s3_uri(report):
            local = self.home / row["id"] / "report.md"
            if not local.is_file():
                try:
                    storage.fetch(report, local)
                except RepotuneError:
                    return None
            return local
        if not row["run_dir"]:
            return None
        run_dir = Path(row["run_dir"]).resolve()
        path = (run_dir / report).resolve()
        # status.json names the report relative to RUN_DIR; anything pointing outside it is not served.
        if not path.is_relative_to(run_dir) or not path.is_file():
            return None
        return path
