"""The FastAPI application: sources in, runs started and followed, completions forwarded to the model.

    GET  /healthz                      liveness (no token)
    POST /v1/sources                   multipart archive upload, or JSON {"repo_url", "ref"} / {"github"}
    GET  /v1/sources/{id}
    POST /v1/runs                      {"source_id", "recipe", "overrides"} -> 202 and the run
    GET  /v1/runs, /v1/runs/{id}       state, per-stage progress, metrics
    GET  /v1/runs/{id}/report          the evaluation report (markdown)
    GET  /v1/runs/{id}/log             the run's output so far (plain text)
    POST /v1/completions               an OpenAI-style completions body, forwarded to the deployed model

Every error answer is ``{"error": {"message", "code"}}``; the OpenAPI document is at /openapi.json.
The routes live in ``repotune.api.routers`` (one module per resource), their bodies in
``repotune.api.schemas``; this module builds the shared objects and puts the pieces together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import APIRouter, Depends, FastAPI
from fastapi.concurrency import run_in_threadpool

import repotune
from repotune.api.auth import bearer
from repotune.api.db import Database
from repotune.api.errors import ERROR_RESPONSES, install_handlers
from repotune.api.middleware import BearerAuth, BodyLimits
from repotune.api.routers import completions, health, runs, sources
from repotune.api.runs import Runs
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore
from repotune.api.upload import remove_partial_uploads

log = logging.getLogger("repotune.api")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Settles runs left running by an earlier instance and removes the partial uploads it left, and
    holds the HTTP client completions use."""
    settings: ApiSettings = app.state.settings
    settled = await run_in_threadpool(app.state.runs.reconcile)
    if settled:
        log.warning("settled %d run(s) left running by an earlier API instance: %s", len(settled), settled)
    removed = await run_in_threadpool(app.state.runs.prune)
    if removed:
        log.info("removed the folders of %d finished run(s) past retention", len(removed))
    partial = remove_partial_uploads(app.state.sources.tmp)
    if partial:
        log.warning("removed %d partial upload(s) left by an earlier API instance", len(partial))
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(settings.completions_timeout_s, connect=5.0)
    ) as client:
        app.state.http = client
        yield


def create_app(settings: ApiSettings) -> FastAPI:
    """The application over ``settings``; runs left running by an earlier instance are settled at start."""
    db = Database(settings.db_path)
    store = SourceStore(settings, db)
    app = FastAPI(
        title="repotune API",
        version=repotune.__version__,
        description="Upload a codebase or name a repository, start a fine-tuning pipeline run, follow it, "
        "and query the deployed model. Every /v1 route needs `Authorization: Bearer TOKEN`.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.sources, app.state.runs = settings, store, Runs(settings, db, store)
    app.add_middleware(BodyLimits)
    app.add_middleware(BearerAuth, settings=settings)  # added last: runs first, before any body is read
    install_handlers(app)
    app.include_router(health.router)
    # The bearer dependency only declares the security scheme in the OpenAPI document; BearerAuth enforces.
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], responses=ERROR_RESPONSES)
    for resource in (sources, runs, completions):
        v1.include_router(resource.router)
    app.include_router(v1)
    return app
