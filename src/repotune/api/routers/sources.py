"""Sources: an archive uploaded as multipart/form-data, or a git URL or GitHub repository given as JSON."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from repotune.api.deps import Settings, Sources
from repotune.api.errors import ApiError, ErrorBody, validate
from repotune.api.schemas import GithubSource, RepoUrlSource, SourceCreated, SourceId, SourceInfo
from repotune.api.upload import receive_archive

MAX_JSON_BYTES = 64 * 1024

router = APIRouter(tags=["sources"])

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": ".zip, .tar, .tar.gz/.tgz, .tar.xz or .tar.bz2",
                    }
                },
            }
        },
        "application/json": {
            "schema": {"oneOf": [RepoUrlSource.model_json_schema(), GithubSource.model_json_schema()]}
        },
    },
}


@router.post(
    "/sources",
    response_model=SourceCreated,
    status_code=201,
    summary="Upload an archive, or register a git URL or GitHub repository",
    responses={
        200: {"model": SourceCreated, "description": "Already stored (same content or description)"},
        400: {"model": ErrorBody, "description": "Malformed body"},
        413: {"model": ErrorBody, "description": "Upload over REPOTUNE_API_MAX_UPLOAD_MB"},
        415: {"model": ErrorBody, "description": "Neither multipart/form-data nor JSON"},
    },
    # The body is read by hand (streamed to disk, or JSON of either shape), so it is described by hand.
    openapi_extra={"requestBody": _REQUEST_BODY},
)
async def create_source(request: Request, sources: Sources, settings: Settings) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        upload = await receive_archive(
            content_type,
            request.headers.get("content-length"),
            request.stream(),
            sources.tmp,
            settings.max_upload_bytes,
        )
        info, new = await run_in_threadpool(sources.add_archive, upload)
    elif media == "application/json" or media.endswith("+json"):
        body = await _read_json(request)
        if isinstance(body, dict) and "repo_url" in body:
            spec: RepoUrlSource | GithubSource = validate(RepoUrlSource, body)
            kind, location = "git", spec.repo_url
        elif isinstance(body, dict) and "github" in body:
            spec = validate(GithubSource, body)
            kind, location = "github", spec.github
        else:
            raise ApiError(
                422,
                "invalid_request",
                'give {"repo_url": URL, "ref": REF} or {"github": "OWNER/REPO"}, '
                "or upload an archive as multipart/form-data (field 'file')",
            )
        info, new = await run_in_threadpool(sources.add_repository, kind, location, spec.ref)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send an archive as multipart/form-data (field 'file'), or JSON with repo_url or github",
        )
    created = SourceCreated(**info, created_now=new)
    return JSONResponse(created.model_dump(), status_code=201 if new else 200)


@router.get("/sources/{source_id}", response_model=SourceInfo)
def get_source(source_id: SourceId, sources: Sources) -> SourceInfo:
    info = sources.get(source_id)
    if info is None:
        raise ApiError(404, "source_not_found", f"no source {source_id}")
    return SourceInfo(**info)


async def _read_json(request: Request) -> Any:
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_JSON_BYTES:
            raise ApiError(413, "too_large", f"a JSON body may have at most {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(bytes(data))
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
