"""Runs: started over a source with a recipe, followed (state, stages, metrics), their report and log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from repotune.api.deps import RunsDep, Settings, Sources
from repotune.api.errors import BODY_RESPONSES, ApiError, ErrorBody
from repotune.api.recipes import check_overrides, choose_recipe
from repotune.api.runs import RunHome, Runs, log_tail
from repotune.api.schemas import RunId, RunInfo, RunList, RunRequest

LOG_BYTES = 64 * 1024

router = APIRouter(tags=["runs"])


def _row(runs: Runs, run_id: str) -> dict[str, Any]:
    row = runs.get(run_id)
    if row is None:
        raise ApiError(404, "run_not_found", f"no run {run_id}")
    return row


def _not_removed(row: dict[str, Any]) -> None:
    if row.get("removed"):
        raise ApiError(
            404,
            "run_removed",
            f"run {row['id']}'s folder was removed on {row['removed']} by retention "
            "(REPOTUNE_API_KEEP_RUNS, REPOTUNE_API_KEEP_DAYS)",
        )


@router.post(
    "/runs",
    response_model=RunInfo,
    status_code=202,
    summary="Start a pipeline run over a source (or several, for one dataset)",
    responses={
        **BODY_RESPONSES,
        409: {"model": ErrorBody, "description": "The store cannot serve a KFP cluster"},
        429: {"model": ErrorBody, "description": "REPOTUNE_API_MAX_ACTIVE_RUNS runs are in progress"},
        503: {"model": ErrorBody, "description": "KFP is configured but unavailable"},
    },
)
def create_run(body: RunRequest, sources: Sources, runs: RunsDep, settings: Settings) -> RunInfo:
    source = sources.get(body.source_id)
    if source is None:
        raise ApiError(
            404, "source_not_found", f"no source {body.source_id}; create one with POST /v1/sources"
        )
    more = []
    for source_id in body.more_source_ids:
        found = sources.get(source_id)
        if found is None:
            raise ApiError(
                404, "source_not_found", f"no source {source_id}; create one with POST /v1/sources"
            )
        more.append(found)
    every = [body.source_id, *body.more_source_ids, *body.services]
    if len(set(every)) != len(every):
        raise ApiError(422, "invalid_request", "a source is named twice in the run")
    recipe = choose_recipe(body.recipe, settings.recipe_dirs)
    check_overrides(recipe, body.overrides)
    return runs.view(runs.create(source, recipe, body.overrides, more, body.services))


@router.get("/runs", response_model=RunList)
def list_runs(
    runs: RunsDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Newest runs first")] = 50,
    state: Annotated[Literal["running", "succeeded", "failed"] | None, Query()] = None,
) -> RunList:
    return RunList(runs=[runs.view(row) for row in runs.list(limit, state)])


@router.get("/runs/{run_id}", response_model=RunInfo)
def get_run(run_id: RunId, runs: RunsDep) -> RunInfo:
    return runs.view(_row(runs, run_id))


@router.post(
    "/runs/{run_id}/cancel",
    response_model=RunInfo,
    status_code=202,
    summary="Stop a running run (it ends failed, its error saying it was cancelled)",
    responses={
        404: {"model": ErrorBody, "description": "No such run"},
        409: {"model": ErrorBody, "description": "The run has finished, runs on KFP, or is still starting"},
    },
)
def cancel_run(run_id: RunId, runs: RunsDep) -> RunInfo:
    return runs.view(runs.cancel(_row(runs, run_id)))


@router.get(
    "/runs/{run_id}/report",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/markdown": {}}, "description": "The evaluation report"}},
)
def get_report(run_id: RunId, runs: RunsDep) -> PlainTextResponse:
    row = _row(runs, run_id)
    _not_removed(row)
    path = runs.report(row)
    if path is None and row.get("state") == "failed":
        # a failed run will never have one: say so, and why it failed, rather than "not yet"
        why = f": {row['error']}" if row.get("error") else ""
        raise ApiError(404, "report_not_available", f"run {run_id} failed before its evaluation report{why}")
    if path is None:
        raise ApiError(404, "report_not_ready", f"run {run_id} has no evaluation report yet")
    return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")


@router.get(
    "/runs/{run_id}/log",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "The last 64 KiB of the run's output"}},
)
def get_log(run_id: RunId, runs: RunsDep) -> PlainTextResponse:
    row = _row(runs, run_id)
    _not_removed(row)
    if not row["run_dir"]:
        raise ApiError(404, "log_not_found", f"run {run_id} runs on KFP; its logs are in the KFP UI")
    return PlainTextResponse(log_tail(RunHome(Path(row["run_dir"]).parent).log, LOG_BYTES))
