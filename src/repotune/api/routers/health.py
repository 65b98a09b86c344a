"""Liveness: answered without a token, and while uploads are being checked in worker threads."""

from __future__ import annotations

from fastapi import APIRouter

import repotune
from repotune.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok", version=repotune.__version__)
