"""Experiment tracking behind one small interface: MLflow, or nothing.

Training code talks to a ``Tracker`` and never to MLflow directly, so tests of other stages use
``NullTracker`` and a tracking server that goes away mid-run cannot stop a training job::

    tracker = make_tracker(os.environ.get("MLFLOW_TRACKING_URI"), "repotune", rank=rank)
    tracker.check()  # RepotuneError now, naming the URI, if the server cannot be reached
    provenance = data_provenance(data_dir)  # {"dataset.source": "github:org/repo", "dataset.commit": ...}
    name, tags = stage_run("train", provenance, recipe_label("smollm2-135m", "lora"))
    with tracker.start_run(name, tags):  # "repo@3f2c1ab · smollm2-135m lora · train"
        for context, dataset in split_datasets(data_dir).items():
            tracker.log_dataset(dataset, context)  # MLflow's "Datasets used"
        tracker.log_params({"recipe": asdict(recipe)})
        tracker.log_metrics({"train/loss": 1.23}, step=10)
        tracker.log_artifact(Path("model/train_summary.json"))

An evaluation run names itself from the model's ``train_summary.json`` (``evaluate_run``): the same
repository, commit and recipe, and the train run (``SUMMARY_RUN_ID_KEY``) as its parent, so MLflow shows
it nested under the run that trained the model. ``log_model`` logs a model folder as an MLflow model
(the ``pyfunc`` flavor of ``repotune.pyfunc_model``) that ``mlflow.pyfunc.load_model`` loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from repotune.decoding import LINE_REPEAT_PENALTY, check_line_penalty
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
# Logging a model copies its files with a tqdm bar per call ("Downloading artifacts"), which in a
# pipeline step's log is twenty lines of carriage returns saying nothing; repotune's stages report
# their own progress. Only defaults: a value already in the environment wins.
MLFLOW_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def mlflow_env_defaults() -> None:
    """Set ``MLFLOW_ENV_DEFAULTS`` in this process where the environment does not set them already."""
    for name, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)


# Consecutive failed calls after which a run stops talking to the server. A refused connection fails in
# milliseconds; a silent network costs at most this many times 2 x MLFLOW_HTTP_REQUEST_TIMEOUT.
MAX_CONSECUTIVE_FAILURES = 3

STAGE_TAG = "repotune.stage"
SOURCE_KEY = "dataset.source"
"""Provenance key (a run tag, and a key of ``train_summary.json``'s ``data``): the ingested source."""
COMMIT_KEY = "dataset.commit"
"""Provenance key: the commit SHA of that source, when it has one."""
SOURCE_TYPE_KEY = "dataset.source_type"
TRAIN_RUN_TAG = "repotune.train_run_id"
"""On an evaluation run: the MLflow run that trained the model it evaluated."""
PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's own tag for nested runs; the UI shows the run under its parent, with a link."""
SUMMARY_RUN_ID_KEY = "mlflow_run_id"
"""The key of ``train_summary.json`` that holds the train run's id (null without tracking)."""
WEIGHTS_PATH_TAG = "repotune.weights_path"
"""On a logged model: where, inside its artifacts, the Hugging Face model folder lies."""
MODEL_ARTIFACT = "model"
"""The pyfunc artifact name, and so the folder name, of the model files (``artifacts/model``)."""
WEIGHTS_PATH = f"artifacts/{MODEL_ARTIFACT}"
# What the MLflow model needs to load and serve (rapidfuzz for repotune.decoding, which goes with it);
# pinned to what logged it, so `mlflow models serve` builds the same environment. Local version labels
# (torch's "+cpu") are not on PyPI: dropped.
MODEL_REQUIREMENTS = ("mlflow", "torch", "transformers", "safetensors", "rapidfuzz")
RETRIEVAL_REQUIREMENTS = ("bm25s", "numpy")
"""Added to the MLflow model's requirements where the model carries a retrieval index."""
MAX_NEW_TOKENS = 64
"""Default ``max_tokens`` of the pyfunc model's signature (``repotune.pyfunc_model.MAX_TOKENS`` too)."""

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
        self, run_name: str, tags: Mapping[str, Any] | None = None, *, started: float | None = None
    ) -> contextlib.AbstractContextManager[str | None]:
        """A context in which one run is active; it ends FINISHED, FAILED (exception) or KILLED
        (KeyboardInterrupt). Yields the run id. ``started``: when the work the run records began (epoch
        seconds), for a run opened once that work is done; default now."""
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

    def log_dataset(self, dataset: DatasetInfo, context: str) -> None:
        """Record ``dataset`` as an input of the run (MLflow's "Datasets used"); ``context`` is its
        role: ``training`` or ``evaluation``."""
        ...

    def log_model(
        self,
        folder: Path,
        *,
        exclude: tuple[str, ...] = (),
        line_repeat_penalty: float = LINE_REPEAT_PENALTY,
        retrieval: bool = False,
    ) -> str | None:
        """Log the Hugging Face model ``folder`` (minus the glob patterns ``exclude``) as an MLflow model
        of this run that ``mlflow.pyfunc.load_model`` loads, decoding with ``line_repeat_penalty`` (the
        one it was scored with) and, with ``retrieval``, with context from the index the folder carries
        (as the arm that was scored); return its model id (None when not logged)."""
        ...


class NullTracker:
    """Tracking switched off: every call does nothing."""

    run_id: str | None = None

    def check(self) -> None:
        return None

    @contextlib.contextmanager
    def start_run(
        self, run_name: str, tags: Mapping[str, Any] | None = None, *, started: float | None = None
    ) -> Iterator[str | None]:
        yield None

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        return None

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        return None

    def log_dataset(self, dataset: DatasetInfo, context: str) -> None:
        return None

    def log_model(
        self,
        folder: Path,
        *,
        exclude: tuple[str, ...] = (),
        line_repeat_penalty: float = LINE_REPEAT_PENALTY,
        retrieval: bool = False,
    ) -> str | None:
        return None


class MlflowTracker:
    """Logs to the MLflow tracking backend at ``tracking_uri`` (an ``http(s)://`` server, or a local
    store such as ``sqlite:///mlflow.db``), into the experiment named ``experiment`` (created if missing).

    Uses ``MlflowClient`` with explicit run ids rather than MLflow's process-global active run, and
    sets MLflow's environment defaults for this process (``MLFLOW_ENV_DEFAULTS``: shorter HTTP retries
    and timeouts, no progress bars).
    Inside a run, a failing call logs one warning (per run) and is skipped; after
    ``max_failures`` failures in a row the run stops calling the server at all.
    """

    def __init__(self, tracking_uri: str, experiment: str, *, max_failures: int = MAX_CONSECUTIVE_FAILURES):
        if not tracking_uri:
            raise ValueError("MlflowTracker needs a tracking URI; use make_tracker() to switch tracking off")
        mlflow_env_defaults()
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
            f"cannot reach the MLflow tracking server at {self.tracking_uri} ({short_reason(err)}); start "
            "it, or fix --tracking-uri (MLFLOW_TRACKING_URI)"
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
                return self._client.create_experiment(
                    self.experiment, artifact_location=beside_database(self.tracking_uri, self.experiment)
                )
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
    def start_run(
        self, run_name: str, tags: Mapping[str, Any] | None = None, *, started: float | None = None
    ) -> Iterator[str | None]:
        if self._run_id is not None:
            raise RuntimeError(f"MLflow run {self._run_id} is still active; runs do not nest")
        start_time = int(started * 1000) if started is not None else None
        try:
            run = self._client.create_run(
                self._experiment_id(), run_name=run_name, tags=_tags(tags or {}), start_time=start_time
            )
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
                    short_reason(err),
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

    def log_dataset(self, dataset: DatasetInfo, context: str) -> None:
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        def send() -> None:
            entity = dataset.to_mlflow()._to_mlflow_entity()
            tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
            self._client.log_inputs(self._run_id, datasets=[DatasetInput(entity, tags=tags)])

        self._guard(f"logging dataset {dataset.name}", send)

    def log_model(
        self,
        folder: Path,
        *,
        exclude: tuple[str, ...] = (),
        line_repeat_penalty: float = LINE_REPEAT_PENALTY,
        retrieval: bool = False,
    ) -> str | None:
        """The MLflow 3 logged-model path of ``mlflow.pyfunc.log_model``, through this tracker's client
        rather than MLflow's process-global run: create the logged model as an output of the run, save
        the pyfunc model locally, upload it, mark it ready. Costs one local copy of ``folder`` (MLflow
        copies pyfunc artifacts) for the length of the upload. repotune's own code goes with it
        (``code_paths``), with ``line_repeat_penalty`` and ``retrieval`` as its ``model_config``:
        ``repotune.pyfunc_model`` decodes with them. ``retrieval`` is logged as false where the folder
        carries no index (``MODEL/retrieval/``) to retrieve from."""
        from repotune.retrieval.shipped import model_index

        check_line_penalty(line_repeat_penalty)
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no Hugging Face model (config.json)")
        searchable = retrieval and model_index(folder) is not None
        config = {"line_repeat_penalty": line_repeat_penalty, "retrieval": searchable}
        model_id: list[str] = []

        def send() -> None:
            model_id.append(self._log_model(folder, exclude, config))

        self._guard(f"logging the model {folder}", send)
        return model_id[0] if model_id else None

    def _log_model(self, folder: Path, exclude: tuple[str, ...], config: dict[str, Any]) -> str:
        import mlflow.pyfunc
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
        from mlflow.models import Model

        run = self._client.get_run(self._run_id)
        model = self._client.create_logged_model(
            run.info.experiment_id,
            name=MODEL_ARTIFACT,
            source_run_id=self._run_id,
            params=dict(run.data.params),
            tags={WEIGHTS_PATH_TAG: WEIGHTS_PATH},
        )
        self._client.log_outputs(self._run_id, [LoggedModelOutput(model.model_id, step=0)])
        try:
            # As mlflow's Model.log does: the run's metrics so far also become the model's, so the
            # experiment's model list can compare models by them.
            now_ms = int(time.time() * 1000)
            metrics = [
                Metric(key, value, now_ms, 0, run_id=self._run_id, model_id=model.model_id)
                for key, value in run.data.metrics.items()
            ]
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                self._client.log_batch(self._run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
            with (
                tempfile.TemporaryDirectory(prefix="repotune-mlflow-model-") as tmp,
                warnings.catch_warnings(),
            ):
                # The signature is explicit; an input example would load the model once more only to
                # check it. (MLflow colours its warnings, so the pattern starts with ".*".)
                warnings.filterwarnings(
                    "ignore", message=r".*input example was not provided", category=UserWarning
                )
                files = _linked_tree(folder, Path(tmp) / MODEL_ARTIFACT, exclude)
                code = Path(tmp) / "code" / "repotune"
                shutil.copytree(Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
                local = Path(tmp) / "mlflow-model"
                mlflow.pyfunc.save_model(
                    str(local),
                    python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                    artifacts={MODEL_ARTIFACT: str(files)},
                    code_paths=[str(code)],
                    model_config=config,
                    signature=completion_signature(),
                    pip_requirements=model_requirements(files),
                    mlflow_model=Model(
                        artifact_path=model.artifact_location,
                        run_id=self._run_id,
                        model_id=model.model_id,
                        model_uuid=model.model_id,
                    ),
                )
                self._client.log_model_artifacts(model.model_id, str(local))
        except BaseException:
            with contextlib.suppress(Exception):
                self._client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self._client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id


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


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """One JSONL split as MLflow lists it under "Datasets used": where its records came from and a
    digest of the file, not the rows themselves."""

    name: str
    """``repo@3f2c1ab/train``: the repository, its commit and the split."""
    source: str
    """Where the records were read from: the repository's URL (a GitHub repository's tree at the
    commit), or the local path or archive that was ingested."""
    digest: str
    """The first 16 hex digits of the file's SHA-256: the same records give the same digest."""
    records: int
    """Records (lines) in the file."""
    commit: str | None = None

    def to_mlflow(self) -> Any:
        """This dataset as an ``mlflow.data`` dataset (a ``MetaDataset`` with a record-count profile)."""
        from mlflow.data.meta_dataset import MetaDataset

        info = self

        class JsonlDataset(MetaDataset):
            @property
            def profile(self) -> dict[str, Any]:
                return {"num_rows": info.records} | ({"commit": info.commit} if info.commit else {})

            def to_dict(self) -> dict[str, str]:
                return {**super().to_dict(), "profile": json.dumps(self.profile)}

        return JsonlDataset(_dataset_source(self.source), name=self.name, digest=self.digest)


def beside_database(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: ``mlruns/EXPERIMENT`` beside the
    database. MLflow's default is ``./mlruns`` of whatever folder the process runs in, so a model logged
    from inside a repository would put its weights there. None (MLflow decides) for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    folder = re.sub(r"[^\w.-]", "-", experiment).strip(".-") or "experiment"
    return (database.parent / "mlruns" / folder).as_uri()


def data_provenance(data_dir: Path) -> dict[str, str]:
    """``{"dataset.source": ..., "dataset.source_type": ..., "dataset.commit": ...}`` from a cleaned data
    folder's ``stats.json`` (keys whose value is unknown are left out; empty without ``stats.json``)."""
    from repotune.clean.layout import CleanLayout

    path = CleanLayout(Path(data_dir)).stats
    if not path.is_file():
        return {}
    source = json.loads(path.read_text()).get("source") or {}
    return {f"dataset.{key}": str(value) for key, value in source.items() if value}


def split_datasets(data_dir: Path) -> dict[str, DatasetInfo]:
    """The splits of a cleaned data folder by their MLflow input context: ``training`` (train.jsonl)
    and ``evaluation`` (eval.jsonl), each present only when its file is."""
    from repotune.clean.layout import CleanLayout

    layout = CleanLayout(Path(data_dir))
    provenance = data_provenance(data_dir)
    found = {}
    for context, file in (("training", layout.train), ("evaluation", layout.eval)):
        if file.is_file():
            found[context] = jsonl_dataset(file, provenance)
    return found


def jsonl_dataset(path: Path, provenance: Mapping[str, str]) -> DatasetInfo:
    """A ``DatasetInfo`` for the JSONL file ``path``, from the source and commit in ``provenance``."""
    digest = hashlib.sha256()
    records = 0
    with Path(path).open("rb") as handle:
        for line in handle:
            digest.update(line)
            records += bool(line.strip())
    source = provenance.get(SOURCE_KEY)
    commit = provenance.get(COMMIT_KEY)
    return DatasetInfo(
        name=f"{repository_label(provenance)}/{Path(path).stem}",
        source=_source_url(source, commit) if source else str(Path(path).resolve()),
        digest=digest.hexdigest()[:16],
        records=records,
        commit=commit,
    )


def repository_label(provenance: Mapping[str, str]) -> str:
    """``myrepo@3f2c1ab``: the source's last path component and the short commit (``myrepo`` without
    a commit, ``data`` without a source)."""
    source = provenance.get(SOURCE_KEY, "").rstrip("/")
    name = re.split(r"[/:]", source)[-1] if source else "data"
    for suffix in (".git", ".tar.gz", ".tgz", ".tar", ".zip"):
        name = name.removesuffix(suffix)
    commit = provenance.get(COMMIT_KEY)
    return f"{name or 'data'}@{commit[:7]}" if commit else name or "data"


def recipe_label(base_model: str, method: str) -> str:
    """``smollm2-135m lora``: a recipe as a run name shows it (the base model's last path component)."""
    return f"{str(base_model).rstrip('/').rsplit('/', 1)[-1]} {method}"


def stage_run(
    stage: str, provenance: Mapping[str, str], recipe: str, *, train_run_id: str | None = None
) -> tuple[str, dict[str, str]]:
    """The run name (``myrepo@3f2c1ab · smollm2-135m lora · train``) and tags (the stage, the data's
    provenance and, for a stage after training, the train run as parent) of one stage's run."""
    name = f"{repository_label(provenance)} · {recipe} · {stage}"
    tags = {STAGE_TAG: stage, **{k: str(v) for k, v in provenance.items() if k.startswith("dataset.")}}
    if train_run_id:
        tags |= {TRAIN_RUN_TAG: train_run_id, PARENT_RUN_TAG: train_run_id}
    return name, tags


def evaluate_run(summary: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """``stage_run`` for the evaluation of the model that ``summary`` (its ``train_summary.json``)
    describes: the same repository, commit and recipe, and the train run as parent when it was tracked."""
    recipe = recipe_label(str(summary.get("base_model")), str(summary.get("method")))
    return stage_run(
        "evaluate", summary.get("data") or {}, recipe, train_run_id=summary.get(SUMMARY_RUN_ID_KEY)
    )


def completion_signature() -> Any:
    """The MLflow signature of the pyfunc model: prompts (strings) in, completions out; the
    ``max_tokens`` and ``temperature`` params (0: greedy)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    params = [ParamSpec("max_tokens", "long", MAX_NEW_TOKENS), ParamSpec("temperature", "double", 0.0)]
    return ModelSignature(
        inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]), params=ParamSchema(params)
    )


def model_requirements(folder: Path | None = None) -> list[str]:
    """``MODEL_REQUIREMENTS`` pinned to the installed versions (skipping any not installed), with what
    searching the retrieval index that the model ``folder`` carries needs."""
    from repotune.retrieval.index import MANIFEST_NAME
    from repotune.retrieval.shipped import model_index

    names = list(MODEL_REQUIREMENTS)
    index = model_index(folder) if folder is not None else None
    if index is not None:
        names += RETRIEVAL_REQUIREMENTS
        manifest = json.loads((index / MANIFEST_NAME).read_text(encoding="utf-8"))
        if (manifest.get("config") or {}).get("embedding_model"):
            names.append("sentence-transformers")
    pins = []
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name != "mlflow":
                continue
            version = metadata.version("mlflow-skinny")
        pins.append(f"{name}=={version.split('+')[0]}")
    return pins


def _linked_tree(src: Path, dest: Path, exclude: tuple[str, ...]) -> Path:
    """``src`` without ``exclude`` at ``dest``, hard-linked where the file system allows (no bytes
    copied), copied where it does not."""

    def link_or_copy(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*exclude), copy_function=link_or_copy)
    return dest


def _source_url(source: str, commit: str | None) -> str:
    """A GitHub source as the web address of its tree at ``commit``; any other source as it is."""
    if source.startswith("github:"):
        url = f"https://github.com/{source.removeprefix('github:')}"
        return f"{url}/tree/{commit}" if commit else url
    return source


def _dataset_source(source: str) -> Any:
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    if source.startswith(("http://", "https://")):
        return HTTPDatasetSource(source)
    # A local folder, an archive or an ssh git URL: no MLflow source type fits; keep it as text.
    return CodeDatasetSource({"source": source})


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


def short_reason(err: BaseException) -> str:
    """A short reason: the OS error inside MLflow's long connection messages, else the first line."""
    if errno := _ERRNO.search(str(err)):
        return errno.group(0).rstrip()
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    first = lines[0] if len(lines[0]) <= 300 else lines[0][:300] + "..."
    return f"{type(err).__name__}: {first}"
