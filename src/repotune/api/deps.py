"""What the routes need, handed to them by FastAPI's dependency injection.

``create_app`` builds the settings, the source store, the runs and (in its lifespan) the HTTP client
once and keeps them on ``app.state``; these functions read them back per request, so a route names what
it uses in its signature (``sources: Sources``) and a test can swap one with ``app.dependency_overrides``.
"""

from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request

from repotune.api.runs import Runs
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore


async def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def get_sources(request: Request) -> SourceStore:
    return request.app.state.sources


async def get_runs(request: Request) -> Runs:
    return request.app.state.runs


async def get_http(request: Request) -> httpx.AsyncClient:
    """The client that forwards completions to the model (opened and closed by the app's lifespan)."""
    return request.app.state.http


Settings = Annotated[ApiSettings, Depends(get_settings)]
Sources = Annotated[SourceStore, Depends(get_sources)]
RunsDep = Annotated[Runs, Depends(get_runs)]
Http = Annotated[httpx.AsyncClient, Depends(get_http)]
