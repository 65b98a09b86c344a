"""Experiment tracking behind one small interface: MLflow, or nothing.

Training code talks to a ``Tracker`` and never to MLflow directly, so tests of other stages use
``NullTracker`` and a tracking server that goes away mid-run cannot stop a training job::

    tracker = make_tracker(os.environ.get("MLFLOW_TRACKING_URI"), "repotune", rank=rank)
    tracker.check()  # RepotuneError now, naming the URI, if the server cannot be reached
    with tracker.start_run("train-myproject", {"source": "github:org/repo"}):
        tracker.log_params({"recipe": asdict(recipe)})
        tracker.log_metrics({"train/loss": 1.23}, step=10)
        tracker.log_artifact(Path("model/train_summary.json"))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from repotune.errors import RepotuneError

log = logging.getLogger("repotune.tracking")

# MLflow's own limits (mlflow.utils.validation), copied so that this module imports without mlflow.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_PARAMS_OR_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# MLflow retries each HTTP request 7 times with exponential backoff (2 s factor) and a 120 s timeout by
# default: minutes per call against a dead server. One immediate retry (urllib3 waits nothing before
# the first) rides out a dropped keep-alive connection; 10 s is ample for a healthy server to answer.
# Only defaults: a value already in the environment wins.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}

# Consecutive failed calls after which a run stops talking to the server. A refused connection fails in
# milliseconds; a silent network costs at most this many times 2 x MLFLOW_HTTP_REQUEST_TIMEOUT.
MAX_CONSECUTIVE_FAILURES = 3

_BAD_KEY_CHARS = re.compile(r"[^\w\-. /:]")
_ERRNO = re.compile(r"\[Errno -?\d+\][^\"')]+")


@runtime_checkable
class Tracker(Protocol):
    """What training and evaluation log through. Only ``check()`` and ``start_run()`` raise; every
    call inside a run is best effort."""

    @property
    def run_id(self) -> str | None:
        """The active run's id, or None outside a run (and always for ``NullTracker``)."""
        ...

    def check(self) -> None:
        """Raise RepotuneError, naming the tracking URI, when the tracking backend cannot be reached."""
        ...

    def start_run(
        self, run_name: str, tags: Mapping[str, Any] | None = None
    ) -> contextlib.AbstractContextManager[str | None]:
        """A context in which one run is active; it ends FINISHED, FAILED (exception) or KILLED
        (KeyboardInterrupt). Yields the run id."""
        ...

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested mappings and dataclasses become dotted keys (``recipe.lora.rank``)."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (optimizer steps; 0 when None)."""
        ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder (under ``artifact_path``, by default the folder's own name)."""
        ...

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values become strings)."""
        ...


class NullTracker:
    """Tracking switched off: every call does nothing."""

    run_id: str | None = None

    def check(self) -> None:
        return None

    @contextlib.contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[str | None]:
        yield None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None


class MlflowTracker:
    """Logs to the MLflow tracking backend at ``tracking_uri`` (an ``http(s)://`` server, or a local
    store such as ``sqlite:///mlflow.db``), into the experiment named ``experiment`` (created if missing).

    Uses ``MlflowClient`` with explicit run ids rather than MLflow's process-global active run, and
    sets shorter MLflow HTTP retry and timeout defaults for this process (``MLFLOW_HTTP_DEFAULTS``).
    Inside a run, a failing call logs one warning (per run) and is skipped; after
    ``max_failures`` failures in a row the run stops calling the server at all.
    """

    def __init__(self, tracking_uri: str, experiment: str, *, max_failures: int = MAX_CONSECUTIVE_FAILURES):
        if not tracking_uri:
            raise ValueError("MlflowTracker needs a tracking URI; use make_tracker() to switch tracking off")
        for name, value in MLFLOW_HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.max_failures = max_failures
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._run_id: str | None = None
        self._failures = 0
        self._warned = False

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def _unreachable(self, err: Exception) -> RepotuneError:
        return RepotuneError(
            f"cannot reach the MLflow tracking server at {self.tracking_uri} ({_reason(err)}); start it, "
            "fix MLFLOW_TRACKING_URI, or unset it to train without tracking"
        )

    def check(self) -> None:
        try:
            self._client.search_experiments(max_results=1)
        except Exception as err:
            raise self._unreachable(err) from err

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                return self._client.create_experiment(self.experiment)
            except MlflowException as err:
                # Another process (a parallel pipeline run) created it between our two calls.
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self._client.get_experiment_by_name(self.experiment)
        if experiment.lifecycle_stage == "deleted":
            raise RepotuneError(
                f"MLflow experiment {self.experiment!r} at {self.tracking_uri} is deleted; restore it "
                "(mlflow experiments restore) or choose another experiment name"
            )
        return experiment.experiment_id

    @contextlib.contextmanager
    def start_run(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[str | None]:
        if self._run_id is not None:
            raise RuntimeError(f"MLflow run {self._run_id} is still active; runs do not nest")
        try:
            run = self._client.create_run(self._experiment_id(), run_name=run_name, tags=_tags(tags or {}))
        except RepotuneError:
            raise
        except Exception as err:
            raise self._unreachable(err) from err
        self._run_id = run.info.run_id
        self._failures = 0
        self._warned = False
        status = "FAILED"
        try:
            yield self._run_id
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            run_id = self._run_id
            self._guard("ending the run", lambda: self._client.set_terminated(run_id, status))
            self._run_id = None

    def _guard(self, what: str, call: Any) -> None:
        """Run ``call()`` unless the run has given up on the server; never raise."""
        if self._run_id is None:
            raise RuntimeError(f"{what}: no MLflow run is active; call inside `with tracker.start_run(...)`")
        if self._failures >= self.max_failures:
            return
        try:
            call()
        except Exception as err:
            self._failures += 1
            if not self._warned:
                self._warned = True
                log.warning(
                    "MLflow tracking at %s failed while %s (%s); training goes on, and this run stops "
                    "logging to MLflow after %d failures in a row",
                    self.tracking_uri,
                    what,
                    _reason(err),
                    self.max_failures,
                )
            elif self._failures >= self.max_failures:
                log.info(
                    "MLflow run %s: stopped logging after %d failures in a row", self._run_id, self._failures
                )
        else:
            self._failures = 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [
            Param(_key(key), _text(value, MAX_PARAM_VALUE_LENGTH)) for key, value in flatten(params).items()
        ]

        def send() -> None:
            for start in range(0, len(items), MAX_PARAMS_OR_TAGS_PER_BATCH):
                batch = items[start : start + MAX_PARAMS_OR_TAGS_PER_BATCH]
                self._client.log_batch(self._run_id, params=batch, synchronous=True)

        self._guard("logging parameters", send)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        def send() -> None:
            now_ms = int(time.time() * 1000)
            items = [Metric(_key(key), float(value), now_ms, step or 0) for key, value in metrics.items()]
            for start in range(0, len(items), MAX_METRICS_PER_BATCH):
                batch = items[start : start + MAX_METRICS_PER_BATCH]
                self._client.log_batch(self._run_id, metrics=batch, synchronous=True)

        self._guard("logging metrics", send)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)

        def send() -> None:
            if path.is_dir():
                self._client.log_artifacts(self._run_id, str(path), artifact_path or path.name)
            elif path.is_file():
                self._client.log_artifact(self._run_id, str(path), artifact_path)
            else:
                raise FileNotFoundError(f"no file or folder {path}")

        self._guard(f"uploading {path}", send)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, value) for key, value in _tags(tags).items()]

        def send() -> None:
            for start in range(0, len(items), MAX_PARAMS_OR_TAGS_PER_BATCH):
                batch = items[start : start + MAX_PARAMS_OR_TAGS_PER_BATCH]
                self._client.log_batch(self._run_id, tags=batch, synchronous=True)

        self._guard("setting tags", send)


TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


def uri_from_env() -> str | None:
    """``MLFLOW_TRACKING_URI``, or None when it is unset or empty (tracking off): how pipeline steps,
    which get their settings from the environment (Kubernetes Secrets), find the tracking server."""
    return os.environ.get(TRACKING_URI_ENV) or None


def make_tracker(tracking_uri: str | None, experiment: str, rank: int = 0) -> Tracker:
    """The tracker for this process: ``NullTracker`` when ``tracking_uri`` is unset or empty (tracking
    off), or on any rank but 0 of a distributed job (torchrun's ``RANK``: one run per job, not per
    process); else an ``MlflowTracker``. Reading ``MLFLOW_TRACKING_URI`` is the caller's business."""
    if not tracking_uri or rank != 0:
        return NullTracker()
    return MlflowTracker(tracking_uri, experiment)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; dataclass instances are flattened like mappings."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def _key(key: str) -> str:
    # MLflow rejects a whole batch over one bad character or an over-long key.
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY_LENGTH]


def _text(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {_key(str(key)): _text(value, MAX_TAG_VALUE_LENGTH) for key, value in tags.items()}


def _reason(err: BaseException) -> str:
    """A short reason: the OS error inside MLflow's long connection messages, else the first line."""
    if errno := _ERRNO.search(str(err)):
        return errno.group(0).rstrip()
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    first = lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."
    return f"{type(err).__name__}: {first}"
