"""Completions: an OpenAI-style body forwarded to the deployed model (a run's endpoint, or the configured
model URL), its answer passed back."""

from __future__ import annotations

import httpx
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from repotune.api.deps import Http, RunsDep, Settings
from repotune.api.errors import BODY_RESPONSES, ApiError, ErrorBody
from repotune.api.runs import Runs
from repotune.api.schemas import CompletionRequest

router = APIRouter(tags=["model"])


def completions_url(base: str) -> str:
    """The completions route under a model's URL: as given when it ends in /completions, under /v1 when it
    ends there, else KServe's OpenAI prefix (``/openai/v1/completions``, as ``repotune serve`` has)."""
    base = base.rstrip("/")
    if base.endswith("/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/completions"
    return f"{base}/openai/v1/completions"


def model_url(runs: Runs, configured: str | None, run_id: str | None) -> str:
    """Where to send a completion: the named run's endpoint, the configured model, or the newest
    succeeded run's endpoint; 503 when there is none."""
    if run_id is not None:
        row = runs.get(run_id)
        if row is None:
            raise ApiError(404, "run_not_found", f"no run {run_id}")
        view = runs.view(row)
        if not view.endpoint:
            raise ApiError(503, "no_model", f"run {run_id} has no deployed endpoint ({view.state})")
        return view.endpoint
    if configured:
        return configured
    for row in runs.list(500, "succeeded"):
        endpoint = runs.view(row).endpoint
        if endpoint:
            return endpoint
    raise ApiError(
        503,
        "no_model",
        "no model is deployed: set REPOTUNE_API_MODEL_URL, or finish a run that deploys one",
    )


@router.post(
    "/completions",
    summary="Forward an OpenAI-style completions request to the deployed model",
    responses={
        **BODY_RESPONSES,
        400: {"model": ErrorBody, "description": "Streaming requested, or JSON nested too deep"},
        502: {"model": ErrorBody, "description": "The model is unreachable or failed"},
        503: {"model": ErrorBody, "description": "No model is deployed"},
        504: {"model": ErrorBody, "description": "The model did not answer in time"},
    },
)
async def completions(
    body: CompletionRequest, runs: RunsDep, settings: Settings, client: Http
) -> JSONResponse:
    if body.stream:
        raise ApiError(400, "stream_not_supported", "streaming is not supported here; send stream: false")
    target = await run_in_threadpool(model_url, runs, settings.model_url, body.run_id)
    payload = body.model_dump(exclude_none=True, exclude={"run_id"})
    url = completions_url(target)
    headers = {"Authorization": f"Bearer {settings.model_token}"} if settings.model_token else None
    try:
        answer = await client.post(url, json=payload, headers=headers)
    except httpx.TimeoutException:
        raise ApiError(
            504, "model_timeout", f"the model at {url} did not answer in {settings.completions_timeout_s} s"
        ) from None
    except httpx.HTTPError as exc:
        raise ApiError(502, "model_unreachable", f"cannot reach the model at {url}: {exc}") from None
    if answer.status_code in (401, 403):
        # Passed on as is, it would tell the client its own token is wrong; it is the API's.
        given = "refused the API's token" if settings.model_token else "requires a token"
        raise ApiError(
            502,
            "model_auth_failed",
            f"the model at {url} {given} ({answer.status_code}); "
            "set REPOTUNE_API_MODEL_TOKEN to one of the model server's REPOTUNE_SERVE_TOKENS",
        )
    if answer.status_code >= 500:
        raise ApiError(
            502, "model_error", f"the model at {url} answered {answer.status_code}: {answer.text[:500]}"
        )
    try:
        content = answer.json()
    except ValueError:
        raise ApiError(502, "model_error", f"the model at {url} answered with non-JSON content") from None
    return JSONResponse(content, status_code=answer.status_code)
