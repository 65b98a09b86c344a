"""A pipeline run's status: one typed schema, written by the runners and read by the upload API.

``repotune run`` (:mod:`repotune.pipelines.local`) writes ``RUN_DIR/status.json`` as the stages start
and end; a run on a KFP cluster is read back through the kfp SDK and mapped onto the same schema
(:meth:`RunStatus.from_kfp`). Readers get a ``RunStatus`` or, for a document that does not fit the
schema, nothing: never a half-checked dict.

    status = RunStatus.read(RunLayout(run_dir).status)
    status.state, status.stages["train"].state, status.metrics["candidate"]["perplexity"]["value"]
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from repotune.atomic import write_json

RunState = Literal["running", "succeeded", "failed"]
StageState = Literal["pending", "running", "succeeded", "failed", "cached", "skipped"]
STAGES = ("ingest", "clean", "score-base", "train", "evaluate", "deploy")
"""The stages a person follows; the pipeline's ``resolve-source`` task counts as the start of ingest.
``score-base`` scores the base model for evaluate: on a cluster it runs beside train."""
TASK_STAGE = {
    "resolve-source": "ingest",
    "retrieval-index": "score-base",
    **{stage: stage for stage in STAGES},
}
"""Which stage each pipeline task belongs to."""
LEAD_TASKS = frozenset({"resolve-source", "retrieval-index"})
"""Tasks that begin a stage's work without finishing it (the commit ingest reads, the index the base
arms and evaluate search): they show their stage running, or failed, never done."""
# KFP's task and run states (V2beta1RuntimeState), lower-cased, as this schema's.
_KFP_TASK_STATES: dict[str, StageState] = {
    "pending": "pending",
    "running": "running",
    "succeeded": "succeeded",
    "skipped": "skipped",
    "failed": "failed",
    "canceling": "failed",
    "canceled": "failed",
    "cancelled": "failed",
    "cached": "cached",
}
_KFP_RUN_STATES: dict[str, RunState] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "error": "failed",
    "canceled": "failed",
    "cancelled": "failed",
    "skipped": "failed",
}


def now() -> str:
    """The current UTC time as the schema writes it (ISO 8601, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunLayout:
    """The files of a run folder (``repotune run -o RUN_DIR``)."""

    folder: Path

    @property
    def status(self) -> Path:
        """The run's ``RunStatus``, rewritten (atomically) at every change."""
        return self.folder / "status.json"

    @property
    def report(self) -> Path:
        """The evaluation report, copied here when the run succeeds."""
        return self.folder / "report.md"

    @property
    def report_html(self) -> Path:
        """The same report as one HTML page (its charts inline), copied here beside it."""
        return self.folder / "report.html"

    @property
    def log(self) -> Path:
        """Everything the run's steps printed (kfp.local's output, colour codes removed)."""
        return self.folder / "run.log"

    @property
    def manifest(self) -> Path:
        """The InferenceService the deploy step rendered (or why it deployed nothing), when it ran."""
        return self.folder / "inferenceservice.yaml"

    @property
    def serve_log(self) -> Path:
        """The model server's log of the closing query (``repotune run`` without ``--no-query``)."""
        return self.folder / "serve.log"


@dataclass
class StageStatus:
    """One stage's state and times (ISO 8601, UTC)."""

    state: StageState = "pending"
    started: str | None = None
    finished: str | None = None


@dataclass
class RunStatus:
    """The run's state, each stage's, and the results once known."""

    state: RunState = "running"
    started: str | None = None
    finished: str | None = None
    stages: dict[str, StageStatus] = field(default_factory=dict)
    """ingest, clean, score-base, train, evaluate, deploy (deploy is ``skipped`` when evaluate did not
    promote)."""
    error: str | None = None
    """Why the run failed (the failed task, in one line)."""
    promote: bool | None = None
    """Whether evaluation promoted the candidate."""
    decision: dict[str, Any] | None = None
    """``Decision.as_dict()``, as in metrics.json: ``{"promote": bool, "reasons": [...], "arm":
    "candidate_retrieval", "retrieval": bool, "reference": "base_retrieval", "fim": bool}``, the
    decision, every finding behind it, the candidate arm chosen (or the best one found), what it was
    compared with, and whether it fills a gap best with FIM prompts (None: not measured)."""
    metrics: dict[str, dict[str, dict[str, Any]]] | None = None
    """The evaluation's metrics by model and name, each ``{"value", "n", "ci_low", "ci_high", ...}``."""
    report: str | None = None
    """The evaluation report: a path relative to the run folder, or an ``s3://`` URI."""
    model: str | None = None
    """Path or URI of the trained model."""
    dataset: str | None = None
    """Path of the cleaned data the model was evaluated on."""
    registered_version: str | None = None
    """The candidate's version in the MLflow registry."""
    endpoint: str | None = None
    """URL of the deployed model, when deployed."""
    artifacts: str | None = None
    """The s3:// (or folder) prefix the stages published their outputs under, when they did."""
    manifest: str | None = None
    """The rendered InferenceService: a path relative to the run folder, when the deploy step ran."""
    query: dict[str, str] | None = None
    """The closing demo query of ``repotune run``: ``{"url", "prompt", "completion"}``."""

    @classmethod
    def new(cls, stages: tuple[str, ...] = STAGES) -> RunStatus:
        """A run that starts now, every stage pending."""
        return cls(started=now(), stages={name: StageStatus() for name in stages})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> RunStatus:
        """The status a document describes; ``ValueError`` when it does not fit the schema. Keys the
        schema does not know are ignored (a newer writer's additions)."""
        if not isinstance(data, dict):
            raise ValueError(f"a run status is a JSON object, not {type(data).__name__}")
        state = _choice(data.get("state", "running"), RunState, "state")
        stages = data.get("stages") or {}
        if not isinstance(stages, dict):
            raise ValueError("stages must be an object")
        return cls(
            state=state,
            started=_optional(data, "started", str),
            finished=_optional(data, "finished", str),
            stages={str(name): _stage(entry, name) for name, entry in stages.items()},
            error=_optional(data, "error", str),
            promote=_optional(data, "promote", bool),
            decision=_optional(data, "decision", dict),
            metrics=_optional(data, "metrics", dict),
            report=_optional(data, "report", str),
            model=_optional(data, "model", str),
            dataset=_optional(data, "dataset", str),
            registered_version=_optional(data, "registered_version", str),
            endpoint=_optional(data, "endpoint", str),
            artifacts=_optional(data, "artifacts", str),
            manifest=_optional(data, "manifest", str),
            query=_optional(data, "query", dict),
        )

    @classmethod
    def read(cls, path: Path) -> RunStatus | None:
        """The status in ``path``, or None when it is absent, unreadable or not of this schema (it is
        written atomically, so unreadable means not a runner's)."""
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    @classmethod
    def from_kfp(cls, raw: dict[str, Any]) -> RunStatus:
        """A KFP cluster's run (``repotune.pipelines.submit.run_state``: its state, error and the state
        of each task by display name) in this schema."""
        state = _KFP_RUN_STATES.get(str(raw.get("state", "")).lower(), "running")
        stages = {name: StageStatus() for name in STAGES}
        tasks = sorted((raw.get("tasks") or {}).items(), key=lambda item: str(item[0]) in LEAD_TASKS)
        for task, task_state in tasks:  # a stage's own task first, then the ones that lead into it
            stage = TASK_STAGE.get(str(task))
            if stage is None:
                continue
            mapped = _KFP_TASK_STATES.get(str(task_state).lower(), "pending")
            if str(task) in LEAD_TASKS:
                if mapped == "failed" or (mapped == "running" and stages[stage].state == "pending"):
                    stages[stage].state = mapped
                continue
            stages[stage].state = mapped
        error = raw.get("error")
        return cls(state=state, stages=stages, error=str(error) if error else None)


def _choice(value: Any, allowed: Any, name: str) -> Any:
    if value not in get_args(allowed):
        raise ValueError(f"{name} {value!r} is not one of {', '.join(get_args(allowed))}")
    return value


def _optional(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if value is None:
        return None
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # a version number written as a number
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _stage(entry: Any, name: str) -> StageStatus:
    if not isinstance(entry, dict):
        raise ValueError(f"stage {name} must be an object")
    return StageStatus(
        state=_choice(entry.get("state", "pending"), StageState, f"stage {name}'s state"),
        started=_optional(entry, "started", str),
        finished=_optional(entry, "finished", str),
    )
