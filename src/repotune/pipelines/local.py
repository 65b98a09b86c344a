"""`repotune run`: the whole pipeline on this machine through ``kfp.local``, with the cluster's components.

kfp.local's SubprocessRunner runs each lightweight component in a subprocess of this Python (no
container), keeps artifacts under ``WORKDIR/kfp``, and caches steps by their inputs in
``WORKDIR/kfp/.kfp_cache``: a second run on the same commit and recipe reuses ingest, clean, train and
evaluate. ``resolve-source`` (which decides the commit) and ``deploy`` always run. What it does not
do that a cluster does: retries, resource requests, Kubernetes Secrets (the environment is used as is)
and parallel steps.

The run's progress is written to ``RUN_DIR/status.json`` as the stages start and end (the upload API
and scripts follow it), in the schema of :class:`repotune.pipelines.status.RunStatus`. What kfp.local
prints goes to ``RUN_DIR/run.log``; a person sees one line per stage, the training progress and the
errors (:mod:`repotune.pipelines.display`).

Before the first step, the run checks what its steps would otherwise find out minutes in: the
credentials its source, artifacts root and tracking call for (:mod:`repotune.pipelines.credentials`,
as each step checks them again on a cluster), that the MLflow server and the object store answer, and
that a local source is of the project of the registered model's champion (:func:`check_champion_project`).
With ``local_s3`` it starts a SeaweedFS S3 server on 127.0.0.1 for the run
(:mod:`repotune.pipelines.seaweedfs`), publishes every stage's outputs there as a cluster run would,
and stops it when the run ends, however it ends.

    status = run_local(RunConfig(source="https://github.com/org/repo.git", recipe="tiny-cpu"))
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repotune.atomic import prepare_output
from repotune.errors import RepotuneError
from repotune.pipelines.credentials import ARTIFACTS_ROOT
from repotune.pipelines.display import RunOutput
from repotune.pipelines.parameters import RESUME_ENV
from repotune.pipelines.status import LEAD_TASKS, STAGES, TASK_STAGE, RunLayout, RunStatus, StageState, now
from repotune.sources.settings import ServiceSettings
from repotune.train import DEFAULT_RECIPE

if TYPE_CHECKING:
    from rich.console import Console

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"^Executing task '([\w-]+)'")
_FINISHED = re.compile(r"^Task '([\w-]+)' finished with status (\w+)")
_CACHE_HIT = re.compile(r"^Task ([\w-]+) cache hit")
# Only the promotion condition (the pipeline's first dsl.If, so KFP names it condition-1) means deploy was
# skipped; the Hub export's condition nested inside it (condition-2) is skipped on every run without
# hub_repo, before or after deploy has run.
_SKIPPED = re.compile(r"^Skipping conditional task condition-1\b")
_OUTPUTS = re.compile(r"^Task '([\w-]+)' outputs:")
_ARTIFACT = re.compile(r"(\w+): \w+\( name='[^']*',\s*uri='([^']*)'")
LOCAL_S3_ROOT = ARTIFACTS_ROOT
"""Where ``--local-s3`` publishes when ``--artifacts`` names no other place on it: where a cluster run
publishes by default."""


@dataclass(frozen=True)
class RunConfig:
    source: str | tuple[str, ...]
    """A local folder or archive, a git URL, github:OWNER/REPO, confluence:SPACE, jira:PROJECT or
    notion:[ID]; or several of them, read into one dataset (REPO confluence:ENG jira:ENG)."""
    recipe: str = DEFAULT_RECIPE
    """Recipe: a shipped name (configs/NAME.yaml) or a .yaml path."""
    ref: str | None = None
    """Branch, tag or commit of a git URL."""
    include: str | None = None
    """Record kinds, comma-separated: code,docs,commits,issues,wiki,diagrams."""
    training: dict[str, Any] = field(default_factory=dict)
    """Recipe settings by dotted key (`--set max_steps=10 --set data.seq_len=512`)."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """Evaluation settings (`--eval line_samples=30`; `--eval policy.min_relative_gain=0.05` for the
    promotion policy)."""
    run_dir: Path | None = None
    """Run folder for status.json and the report (default: WORKDIR/runs/<UTC time>)."""
    workdir: Path | None = None
    """Artifacts, step cache and local MLflow store (default ~/.repotune)."""
    tracking_uri: str | None = None
    """MLflow URI (default: a local store)."""
    artifacts_root: str | None = None
    """s3:// prefix (or a local folder) that also receives each stage's outputs."""
    local_s3: bool = False
    """Start a SeaweedFS S3 server on 127.0.0.1 for the run (data in WORKDIR/s3) and publish every
    stage's outputs to it, at --artifacts or s3://repotune/runs; stopped when the run ends."""
    model_name: str = "repotune"
    """Registered model name in MLflow."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Further pipeline parameters by name (namespace, deploy_name, runtime, ...), as the compiled
    pipeline lists them; the InferenceService is only rendered here (deploy_apply is false)."""
    services: ServiceSettings = field(default_factory=ServiceSettings)
    """Where the wiki and tracker sources are and what to read of them (the ``source_settings``)."""

    def __post_init__(self) -> None:
        from repotune.records import parse_include

        if not isinstance(self.source, str):
            sources = tuple(self.source)
            if not sources:
                raise RepotuneError("give at least one source")
            object.__setattr__(self, "source", sources[0] if len(sources) == 1 else sources)
        parse_include(self.include)  # a wrong kind fails now, not minutes later in the ingest step
        from repotune.sources import git

        if self.ref is not None and not any(git.is_git_url(spec) for spec in self.sources):
            # a local checkout is read as it is on disk: a ref would be silently ignored
            raise RepotuneError(
                f"--ref applies only to a git URL source; to train on {self.ref} of a local checkout, give "
                f"it as file:///path/to/repo --ref {self.ref}"
            )
        root = self.artifacts_root
        if root and "://" in root and not root.startswith("s3://"):
            raise RepotuneError(f"--artifacts {root!r}: expected s3://BUCKET/PREFIX or a local folder")
        if root and "://" not in root:
            object.__setattr__(self, "artifacts_root", str(Path(root).expanduser().resolve()))
        if self.local_s3 and self.artifacts_root and not self.artifacts_root.startswith("s3://"):
            raise RepotuneError(
                f"--artifacts {self.artifacts_root!r}: with --local-s3 it names a place on that store, "
                "s3://BUCKET/PREFIX"
            )

    def folders(self) -> tuple[Path, Path]:
        """The work folder and the run folder, absolute, with their defaults filled in."""
        workdir = (self.workdir or default_workdir()).resolve()
        run_dir = self.run_dir or workdir / "runs" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return workdir, run_dir.resolve()

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source, in the order given: the pipeline's ``source`` and then its ``more_sources``."""
        return (self.source,) if isinstance(self.source, str) else self.source

    def arguments(self) -> dict[str, Any]:
        """The pipeline's parameters for this run (all but ``source``)."""
        return {
            "more_sources": list(self.sources[1:]),
            "source_settings": self.services.parameters(),
            "ref": self.ref or "",
            "include": self.include or "",
            "training": dict(self.training),
            "evaluation": dict(self.evaluation),
            "model_name": self.model_name,
            "tracking": True,  # the run always has a tracking URI: given, or a local store
            "deploy_apply": False,  # no cluster here: deploy renders the InferenceService only
            "artifacts_root": self.published_root() or "",
            **self.parameters,
        }

    def published_root(self) -> str | None:
        """Where stage outputs are published: ``artifacts_root``, or with ``local_s3`` the default place."""
        return self.artifacts_root or (LOCAL_S3_ROOT if self.local_s3 else None)


class StatusWriter(logging.Filter):
    """Follows kfp.local's task log lines and keeps ``status.json`` up to date.

    kfp.local reports task starts, ends, cache hits and skipped conditions only as log records on the
    root logger (and resets the root logger's handlers), so a filter on the root logger, which it
    leaves alone, is the one place to see them. The filter never drops a record.
    """

    def __init__(
        self, path: Path, stages: tuple[str, ...], on_stage: Callable[[str, StageState], None] | None = None
    ) -> None:
        super().__init__()
        self.path = path
        self.on_stage = on_stage
        self.status = RunStatus.new(stages)
        self.outputs: dict[str, dict[str, str]] = {}
        """Each finished task's artifacts, name to local path, as kfp.local lists them."""
        self._active: dict[str, str] = {}
        """The tasks started and not yet ended, each with its stage."""
        self.save()

    def save(self) -> None:
        self.status.write(self.path)

    def stage(self, name: str, state: StageState) -> None:
        entry = self.status.stages[name]
        if state == "running" and entry.state == "running":
            # resolve-source then ingest: one stage. The display is told again, since another stage may
            # have run in between (retrieval-index starts score-base, and train may run before it).
            if self.on_stage is not None:
                self.on_stage(name, state)
            return
        if state == "running" or entry.started is None:
            entry.started = entry.started or now()
        if state != "running":
            entry.finished = now()
        entry.state = state
        self.save()
        if self.on_stage is not None:
            self.on_stage(name, state)

    def running(self) -> str | None:
        """The stage running now, if any."""
        return next((name for name, entry in self.status.stages.items() if entry.state == "running"), None)

    def culprit(self) -> str | None:
        """The stage a failure belongs to: the one whose task is running, else one kfp already reported
        failed (not one that a finished task only led into)."""
        return next(iter(self._active.values()), None) or next(
            (name for name, entry in self.status.stages.items() if entry.state == "failed"), None
        )

    def failed(self, error: str) -> None:
        """The run ended without finishing: the running stage failed, the ones after it never ran.

        A stage whose own task never started is not one of the failed, though a task leading into it
        ran (retrieval-index shows score-base running, and kfp.local may run train first): it goes back
        to pending, as a stage that was not run."""
        self.status.state, self.status.finished, self.status.error = "failed", now(), error
        for name, entry in self.status.stages.items():
            if entry.state != "running":
                continue
            if name not in self._active.values():
                entry.state, entry.started = "pending", None
                continue
            entry.state, entry.finished = "failed", now()
            if self.on_stage is not None:
                self.on_stage(name, "failed")
        self.save()

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        if match := _EXECUTING.match(message):
            self._task(match.group(1), "running")
        elif match := _FINISHED.match(message):
            self._task(match.group(1), "succeeded" if match.group(2) == "SUCCESS" else "failed")
        elif match := _CACHE_HIT.match(message):
            self._task(match.group(1), "cached")
        elif _SKIPPED.match(message):
            self.stage("deploy", "skipped")
        elif match := _OUTPUTS.match(message):
            self.outputs[match.group(1)] = dict(_ARTIFACT.findall(message))
        return True

    def _task(self, task: str, state: StageState) -> None:
        stage = TASK_STAGE.get(task)
        if stage is None:
            return
        if state == "running":
            self._active[task] = stage
        else:
            self._active.pop(task, None)
        if task in LEAD_TASKS and state in ("succeeded", "cached"):
            return  # the stage's own task ends it
        self.stage(stage, state)


@contextlib.contextmanager
def _watching(writer: StatusWriter) -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    # kfp logs with the module-level logging.info(), which installs a default stderr handler when the
    # root logger has none: a handler that drops everything keeps those duplicates of our lines away
    # (kfp's own context still prints its task logs through its handler)
    quiet = logging.NullHandler()
    root.addHandler(quiet)
    root.addFilter(writer)
    root.setLevel(logging.INFO)  # cache hits are logged at INFO outside kfp's own logging context
    try:
        yield
    finally:
        root.removeFilter(writer)
        root.removeHandler(quiet)
        root.setLevel(level)


def default_workdir() -> Path:
    """Where kfp.local keeps artifacts, its cache and the local MLflow store: ``$REPOTUNE_HOME``,
    else ``~/.repotune``; outside the source, so a run never changes the tree it reads."""
    return Path(os.environ.get("REPOTUNE_HOME") or Path.home() / ".repotune").expanduser()


def local_tracking_uri(workdir: Path) -> str:
    """A local MLflow store with a model registry: SQLite where SQLAlchemy is installed (the full
    ``mlflow`` package), else MLflow's file store."""
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        return (workdir / "mlruns").resolve().as_uri()
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def run_local(
    config: RunConfig, *, log: Callable[[str], None] = print, console: Console | None = None
) -> RunStatus:
    """Run the pipeline for ``config.source`` under kfp.local; returns the final status (also in
    ``RUN_DIR/status.json``). MLflow goes to ``config.tracking_uri``, else ``MLFLOW_TRACKING_URI``,
    else a local store in the work folder.

    ``log`` gets what a person should see (a line per stage, training progress, errors); the full
    output goes to ``RUN_DIR/run.log``. With a terminal ``console`` the running stage is a live line on
    it instead (:class:`repotune.pipelines.display.RunOutput`).
    """
    from repotune.config import from_struct
    from repotune.evaluate import settings_from
    from repotune.pipelines.pipeline import build_pipeline
    from repotune.train import resolve_recipe

    sources = tuple(_absolute_source(spec) for spec in config.sources)
    source = sources[0]
    config = replace(config, source=sources)
    pipeline = build_pipeline(config.recipe, retries=False)  # a bad recipe fails here, before any work
    # so do bad settings, which the train and evaluate steps would otherwise reject minutes in
    resolve_recipe(config.recipe, from_struct(config.training))
    settings_from(dict(config.evaluation), "--eval")
    workdir, run_dir = config.folders()
    tracking = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(workdir)
    root = config.published_root()
    check_before_run(sources, root, tracking, local_s3=config.local_s3, given=config.services.environment())
    _check_folders(workdir, run_dir, sources)
    check_champion_project(sources, tracking, config.model_name)
    with contextlib.ExitStack() as stack:
        # the train step's checkpoints outlive its output folder, which kfp.local makes anew every run
        environment: dict[str, str | None] = {
            "MLFLOW_TRACKING_URI": tracking,
            RESUME_ENV: str(workdir / "checkpoints"),
        }
        if config.local_s3:
            from repotune import storage
            from repotune.pipelines import seaweedfs

            bucket, _ = storage.parse_s3_uri(str(root))
            server = stack.enter_context(seaweedfs.running(workdir / "s3", buckets=[bucket]))
            environment.update({**dict.fromkeys(_S3_ENV), **server.environment()})
            log(f"object store: SeaweedFS S3 at {server.endpoint} for this run (data in {server.folder})")
        stack.enter_context(_environment(environment))
        if root is not None and root.startswith("s3://"):
            check_object_store(root)
        workdir.mkdir(parents=True, exist_ok=True)
        layout = RunLayout(run_dir)
        prepare_output(run_dir, (layout.status.name, layout.log.name), "run folder")
        # what a run before this one left
        for earlier in (layout.report, layout.report_html, layout.manifest, layout.serve_log):
            earlier.unlink(missing_ok=True)
        output = RunOutput(layout.log, log, console)
        stack.callback(output.close)
        writer = StatusWriter(layout.status, STAGES, output.stage)
        published = f"; publishing to {root}" if root else ""
        named = " + ".join(sources)
        output.note(f"run: {named} with recipe {config.recipe}; MLflow at {tracking}{published}")
        output.note(f"full log: {layout.log}")
        task = _run_pipeline(pipeline, source, config, workdir, writer, output, stack)
        _collect(writer, task.outputs, run_dir)
        if root:
            from repotune.storage import output_prefix

            # ingest and clean under it, and the model and evaluation under the recipe's key
            writer.status.artifacts = output_prefix(
                root, source, task.outputs["model"].metadata.get("commit", "")
            )
            writer.save()
    return writer.status


_S3_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE")  # a user's own AWS session must not reach the local store


def _run_pipeline(
    pipeline: Any,
    source: str,
    config: RunConfig,
    workdir: Path,
    writer: StatusWriter,
    output: RunOutput,
    stack: contextlib.ExitStack,
) -> Any:
    """The pipeline under kfp.local, its output into ``output``; a failure as one ``RepotuneError``."""
    from kfp import local

    stack.enter_context(_inside(workdir))
    stack.enter_context(_watching(writer))
    stack.enter_context(contextlib.redirect_stdout(output))
    stack.enter_context(_warnings_into(output))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),  # this Python, which has repotune installed
        pipeline_root=str(workdir / "kfp"),
        enable_caching=True,
    )
    try:
        # the image name does not contain "python"; the subprocess runner uses this Python anyway
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # each step's CPU and memory requests are for a cluster; a local run has no use for them and
        # kfp.local says so twice a step in run.log
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        return pipeline(source=config.sources[0], **config.arguments())
    except KeyboardInterrupt:
        output.interrupted()
        writer.failed("interrupted")
        raise
    except Exception as exc:  # kfp raises RuntimeError naming the failed task
        stage = writer.culprit()
        writer.failed(_short(exc))
        reason = output.failures.get(stage or "", "") or _short(exc)
        step = f"the {stage} step" if stage else "the pipeline"
        raise RepotuneError(f"{step} failed: {reason} (full log: {output.log_path})") from None


@contextlib.contextmanager
def _warnings_into(stream: Any) -> Iterator[None]:
    """Python warnings of this process go to ``stream`` (the run's log) rather than to the terminal."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: stream.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        yield


def check_before_run(
    source: str | tuple[str, ...],
    root: str | None,
    tracking: str,
    *,
    local_s3: bool = False,
    given: dict[str, str] | None = None,
) -> None:
    """What the steps would find out minutes in, checked in a second: the credentials the sources, the
    artifacts root and MLflow call for in this environment (as each step checks them again; ``given``:
    variables the run's settings stand in for), and whether the MLflow server answers. (The object
    store is checked once it is known to be up: :func:`check_object_store`.)"""
    from repotune.pipelines import credentials

    env = {**os.environ, **(given or {}), "MLFLOW_TRACKING_URI": tracking}
    for step in credentials.STEPS:
        # the local store brings its own keys, so only the source's S3 needs count then
        needs = credentials.needs(step, artifacts_root="" if local_s3 else root or "", tracking=True)
        for spec in (source,) if isinstance(source, str) else source:
            needs += credentials.needs(step, source=spec)
        credentials.require(step, needs, env, cluster=False)
    if tracking.startswith(("http://", "https://")):
        check_tracking_server(tracking)


def check_tracking_server(uri: str) -> None:
    """One request to the MLflow server at ``uri``; a ``RepotuneError`` in one line when it does not
    answer (MLflow's own retries and their warnings are kept short and quiet)."""
    from repotune.tracking import MlflowTracker

    quiet = logging.getLogger("urllib3.connectionpool")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        MlflowTracker(uri, "repotune").check()
    except RepotuneError as exc:
        raise RepotuneError(f"{exc} (checked before the first step)") from None
    finally:
        quiet.setLevel(level)


def check_champion_project(sources: tuple[str, ...], tracking: str, model_name: str) -> None:
    """The evaluate step refuses a candidate of another project than the registered model's (its
    champion's or, before one, its newest version's); a local source's project is known now, so a run
    that would be refused after training is refused before it. Only where the answer is the step's own:
    a single folder, told apart by its first commit (a checkout's top) or its name (a plain folder), as
    :func:`repotune.evaluate.registry.check_same_project` does; a git URL or an archive is known only
    once read, and left to the step."""
    from repotune.sources import git

    if len(sources) != 1 or not Path(sources[0]).is_dir():
        return
    folder = Path(sources[0])
    if git.is_git_checkout(folder) and git.has_commits(folder):
        root_commit = git.root_commit(folder)
    elif git.enclosing_repository(folder) is None and not (folder / ".git").exists():
        root_commit = None
    else:
        return
    if tracking.startswith("sqlite:///") and not Path(tracking.removeprefix("sqlite:///")).is_file():
        return  # a local store not made yet holds no champion
    from repotune.evaluate import Registry, check_same_project

    try:
        holder = Registry(tracking, model_name).holder()
    except RepotuneError:
        return  # an unreadable registry is the evaluate step's to report, as it always was
    if holder is None:
        return
    try:
        check_same_project(holder[0], str(folder), model_name, root_commit, promoted=holder[1])
    except RepotuneError as exc:
        raise RepotuneError(f"{exc} (checked before the first step)") from None


def check_object_store(root: str) -> None:
    """That the store of ``root`` (s3://BUCKET/PREFIX) answers with these credentials and has the bucket."""
    from repotune import storage

    bucket, _ = storage.parse_s3_uri(root)
    client = storage.client_from_env()  # its own check: a dead endpoint fails here, by name
    try:
        found = client.bucket_exists(bucket)
    except Exception as exc:
        raise RepotuneError(
            f"--artifacts {root}: the object store at {storage.endpoint_url() or storage.DEFAULT_ENDPOINT} "
            f"refused to look up bucket {bucket!r}: {storage_reason(exc)}"
        ) from None
    if not found:
        raise RepotuneError(
            f"--artifacts {root}: bucket {bucket!r} does not exist at "
            f"{storage.endpoint_url() or storage.DEFAULT_ENDPOINT}; create it first"
        )


def storage_reason(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{code} ({getattr(exc, 'message', '')})" if code else str(exc).splitlines()[0]


def _collect(writer: StatusWriter, outputs: dict[str, Any], run_dir: Path) -> None:
    """Results into the status: decision, metrics, the report and the model, copied into the run folder."""
    from repotune.evaluate import EvaluateResult

    result = EvaluateResult.load(Path(outputs["evaluation"].path))
    report = RunLayout(run_dir).report
    shutil.copyfile(result.output.report_md, report)
    if result.output.report_html.is_file():
        shutil.copyfile(result.output.report_html, RunLayout(run_dir).report_html)
    status = writer.status
    if status.stages["deploy"].state == "pending":
        status.stages["deploy"].state = "skipped"
    status.state, status.finished, status.promote = "succeeded", now(), bool(outputs["promoted"])
    status.metrics = result.models_as_dicts()
    status.decision = result.decision.as_dict()
    status.report, status.model = report.name, outputs["model"].path
    status.dataset, status.registered_version = str(result.data), result.registered_version
    manifest = writer.outputs.get("deploy", {}).get("manifest")
    if manifest and Path(manifest).is_file():
        shutil.copyfile(manifest, RunLayout(run_dir).manifest)
        status.manifest = RunLayout(run_dir).manifest.name
    writer.save()


def _check_folders(workdir: Path, run_dir: Path, sources: tuple[str, ...]) -> None:
    """Refuses a work or run folder that is a file, and a work folder inside a local source folder
    that the source does not ignore: its files (the step cache, every artifact) would be read as the
    project's own, and would change the source on every run."""
    import subprocess

    for folder, option in ((workdir, "--workdir"), (run_dir, "-o")):
        if folder.exists() and not folder.is_dir():
            raise RepotuneError(f"{option} {folder} is a file; give a folder")
    for spec in sources:
        source = Path(spec)
        if not source.is_dir() or not workdir.is_relative_to(source):
            continue
        ignored = (
            subprocess.run(["git", "-C", str(source), "check-ignore", "-q", f"{workdir}/"], check=False,
                           capture_output=True).returncode == 0
        )  # fmt: skip
        if not ignored:
            raise RepotuneError(
                f"--workdir {workdir} is inside the source {source}, which does not ignore it: the run's own "
                "files would be read as training data; give a folder outside it, or list it in its .gitignore"
            )


def _absolute_source(source: str) -> str:
    """Components run with another working directory, so a local source becomes an absolute path."""
    from repotune.sources.slug import is_remote

    if is_remote(source):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise RepotuneError(
            f"source {source!r} does not exist (expected a folder, an archive or an s3:// one, a git URL "
            "or github:OWNER/REPO)"
        )
    return str(path.resolve())


@contextlib.contextmanager
def _environment(values: dict[str, str | None]) -> Iterator[None]:
    """``values`` in the environment (None: removed) for the block, and the previous values after it."""
    previous = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Steps run in ``folder``: anything a library writes to its working directory (MLflow's default
    artifact root, for one) lands there, not in the repository being read."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _short(exc: BaseException) -> str:
    return _ANSI.sub("", str(exc)).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


DEMO_STOP = ("\n",)
"""The demo asks for the rest of one line, the unit the evaluate stage scores (and an editor's
single-line completion); a 135M model asked for a block repeats its lines."""
DEMO_MAX_TOKENS = 48


@dataclass(frozen=True)
class DemoQuery:
    """The demo's closing question, as an editor asks it: a held-out file's text before the cursor (at
    the start of a line, after its indentation) and after that line, and the line as the file has it."""

    prompt: str
    """The file's text before the cursor."""
    suffix: str | None
    """The file's text after the line (an editor sends it with every completion), ``None`` for none."""
    expected: str | None
    path: str | None
    """The file's path, sent as ``file_path``: the server frames the prefix under the file's header, as
    training and the evaluate stage do."""


FALLBACK_QUERY = DemoQuery("def fibonacci(n):\n    ", None, None, None)
"""The question when there is no held-out code to draw one from: a function's first line."""


def served_arm(decision: dict[str, Any] | None) -> tuple[list[str], str]:
    """The ``repotune serve`` options that serve the arm evaluation chose (or, not promoted, the best
    candidate arm it found), as the deploy step serves it: ``--retrieval on`` for the candidate with
    retrieval, ``off`` for the candidate alone, and ``--fim on|off`` as the arm filled gaps best
    (``decision.fim``); and words that say so. No options when the run recorded no arm: the server
    then follows how the model was trained."""
    from repotune.evaluate import Arm

    key = (decision or {}).get("arm")
    if not isinstance(key, str):
        return [], "retrieval as the model was trained"
    arm = Arm.from_key(key)
    chosen = "the arm evaluation chose" if (decision or {}).get("promote") else "the best candidate arm"
    options = ["--retrieval", "on" if arm.retrieval else "off"]
    fim = (decision or {}).get("fim")
    if isinstance(fim, bool):
        options += ["--fim", "on" if fim else "off"]
        chosen += ", gaps " + ("as FIM prompts" if fim else "from the prefix alone")
    return options, f"{arm.label}, {chosen}"


def query_served_model(
    model: Path,
    run_dir: Path,
    data_dir: Path | None = None,
    *,
    decision: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Serve ``model`` with ``repotune serve`` on 127.0.0.1 as the arm of ``decision`` (the run's
    status), ask one completion with the ``openai`` client, record the endpoint in the status, and stop
    the server; returns the completion.

    On a cluster the deploy step puts the same predictor (or KServe's vLLM runtime) behind an
    InferenceService; here the server lives only as long as this query.
    """
    import openai

    from repotune.evaluate import rewrites_line_above
    from repotune.serving.server import start_background

    query = demo_query(data_dir)
    layout = RunLayout(run_dir)
    options, served = served_arm(decision)
    log(f"serving {model} on 127.0.0.1 (KServe model server, OpenAI-compatible routes) as {served}")
    asked: dict[str, Any] = {"suffix": query.suffix} if query.suffix is not None else {}
    if query.path is not None:
        asked["extra_body"] = {"file_path": query.path}
    with start_background(model, log_path=layout.serve_log, extra_args=options) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="not-needed-locally", max_retries=0)
        reply = client.completions.create(
            model=server.model_name,
            prompt=query.prompt,
            max_tokens=DEMO_MAX_TOKENS,
            temperature=0,
            stop=list(DEMO_STOP),
            **asked,
        )
        text = reply.choices[0].text
        status = RunStatus.read(layout.status) or RunStatus()
        # the server stops with this function, so the run has no endpoint to record, only the answer
        status.query = {"url": f"{server.openai_url}/completions", "prompt": query.prompt, "completion": text}
        for key, value in (("suffix", query.suffix), ("file_path", query.path), ("expected", query.expected)):
            if value is not None:
                status.query[key] = value
        status.write(layout.status)
    sent = f"file_path {query.path!r}, " if query.path is not None else ""
    if query.suffix is not None:
        sent += f"suffix: {len(query.suffix)} characters of the file after the line, "
    log(f"POST {server.openai_url}/completions  ({sent}stop {list(DEMO_STOP)!r})")
    log(f"prompt ending: {query.prompt[-200:]!r}")
    if query.expected is not None:
        log(f"the file's next line ({query.path}): {query.expected!r}")
    indent = query.prompt[len(query.prompt.rstrip(" \t")) :]
    log(f"completion: {text!r}  (the line written: {indent + text!r})")
    if rewrites_line_above(text, query.prompt):
        # said rather than hidden: the report's line_repeats_line_above_share counts how often it happens
        log("  that is the line above written again: Continue's autocomplete would drop it and show nothing")
    return text


def _string_lines(files: dict[str, str], context_chars: int) -> set[tuple[str, str]]:
    """``(path, text)`` for each line inside a Python string that spans lines (a docstring's second line
    on), ``text`` being the ``context_chars`` characters before that line and the line itself, as a line
    sample holds them (``prefix + expected``): the demo's question is a line of code, and the middle of
    a docstring is prose. Files Python cannot tokenize are skipped."""
    import io
    import tokenize

    from repotune.evaluate import line_spans

    found: set[tuple[str, str]] = set()
    for path, text in files.items():
        if not path.endswith(".py"):
            continue
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        # Lines cut as the evaluate samples cut them (at "\n" only, as tokenize numbers them), so that
        # a line's key here is the sample's ``prefix + expected``.
        spans = line_spans(text)
        for token in tokens:
            if token.type != tokenize.STRING or token.end[0] == token.start[0]:
                continue
            for start, end in spans[token.start[0] : token.end[0]]:  # the lines after the string's first
                found.add((path, text[max(0, start - context_chars) : end]))
    return found


def demo_query(data_dir: Path | None, *, context_chars: int = 1500) -> DemoQuery:
    """A line-completion question from the held-out code (Python first), drawn as the evaluate stage
    draws its line samples (in a temporal split, a line the repository added after the training cut),
    with up to ``context_chars`` of the file on either side of the line, as an editor sends them
    (``prompt`` and ``suffix``) and as evaluation scores a gap: after the line, only the lines that were
    there before it (``existing_after``). The answer shows what was learned and can be read against the
    line the file really has. Without held-out code: the start of a function."""
    from repotune.clean import CleanLayout
    from repotune.evaluate import ScoringConfig, draw_samples, existing_after
    from repotune.records import read_records

    eval_path = CleanLayout(data_dir).eval if data_dir is not None else None
    if eval_path is None or not eval_path.is_file():
        return FALLBACK_QUERY
    config = ScoringConfig(
        line_samples=200, fim_samples=0, commit_samples=0, forgetting_files=0, context_chars=context_chars
    )
    records = list(read_records(eval_path))
    lines = draw_samples(records, config).lines
    by_path = {r.file_path: r for r in records if r.file_path}
    files = {path: record.content for path, record in by_path.items()}
    prose = _string_lines(files, context_chars)
    # A line of code (not a comment, nor a line of a docstring) with a few lines before it; Python first.
    usable = [
        s
        for s in lines
        if s.prefix.count("\n") >= 4
        and not s.expected.lstrip().startswith(("#", '"', "'", "//", "*"))
        and (s.path, s.prefix + s.expected) not in prose
    ]
    if not usable:
        return FALLBACK_QUERY
    sample = min(usable, key=lambda s: not s.path.endswith(".py"))
    # The cursor where an editor puts it on a fresh line: after the line's indentation. The server
    # holds that trailing whitespace back from the prompt's tokens and has the model write it
    # (``repotune.serving.healing``), as the evaluate stage holds back the newline.
    indent = sample.expected[: len(sample.expected) - len(sample.expected.lstrip())]
    text = files[sample.path]
    # The line's end in its file: the sample holds the text before it (``prefix``) and the line.
    end = text.index(sample.prefix + sample.expected) + len(sample.prefix + sample.expected)
    suffix = existing_after(by_path[sample.path], end, context_chars)
    return DemoQuery(sample.prefix + indent, suffix, sample.expected, sample.path)
