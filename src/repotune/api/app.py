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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

import repotune
from repotune.api.auth import bearer, check_bearer
from repotune.api.db import Database
from repotune.api.errors import ApiError, ErrorBody, error_body
from repotune.api.runs import FINAL_STATES, Runs, check_overrides, choose_recipe, log_tail, stored_status
from repotune.api.settings import ApiSettings
from repotune.api.store import SourceStore
from repotune.api.upload import receive_archive
from repotune.pipelines.status import RunStatus

log = logging.getLogger("repotune.api")

MAX_JSON_BYTES = 64 * 1024
LOG_BYTES = 64 * 1024
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}$")
_GITHUB = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
_SCP = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+-]+$")
_URL_SCHEMES = ("https", "http", "ssh", "git")

SourceId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="A source id (64 hex digits).")]
RunId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="A run id (32 hex digits).")]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "Missing or wrong bearer token",
        404: "Not found",
        422: "Invalid request",
    }.items()
}


def _check_ref(ref: str | None) -> str | None:
    if ref is None:
        return None
    if not _REF.match(ref) or ".." in ref or ref.endswith(("/", ".lock")):
        raise ValueError("ref must be a branch, tag or commit name such as main, v1.2 or a SHA")
    return ref


Ref = Annotated[str | None, AfterValidator(_check_ref)]


class RepoUrlSource(BaseModel):
    """A git repository the run clones; nothing is fetched when it is registered."""

    model_config = ConfigDict(extra="forbid")
    repo_url: str = Field(max_length=2048, description="https://, http://, ssh://, git:// or user@host:path")
    ref: Ref = Field(None, description="Branch, tag or commit; default: the default branch")

    @field_validator("repo_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if any(ch.isspace() or ord(ch) < 32 for ch in value):
            raise ValueError("repo_url must not contain spaces or control characters")
        if _SCP.match(value):
            return value
        parts = urlsplit(value)
        if parts.scheme not in _URL_SCHEMES or not parts.hostname:
            raise ValueError(
                f"repo_url must be a {', '.join(s + '://' for s in _URL_SCHEMES)} or user@host:path URL"
            )
        if parts.password is not None or (parts.scheme in ("http", "https") and parts.username):
            # A run's command line (and its record here) would expose them; the server's git
            # credential configuration is the place for credentials.
            raise ValueError("repo_url must not carry credentials; configure them on the server instead")
        return value


class GithubSource(BaseModel):
    """A GitHub repository by name (code, issues, pull requests and history; GITHUB_TOKEN on the server)."""

    model_config = ConfigDict(extra="forbid")
    github: str = Field(description="OWNER/REPO", examples=["octocat/hello-world"])
    ref: Ref = Field(None, description="Branch, tag or commit; default: the default branch")

    @field_validator("github")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _GITHUB.match(value) or value.split("/")[1] in (".", ".."):
            raise ValueError("github must be OWNER/REPO")
        return value


class SourceInfo(BaseModel):
    id: str = Field(description="SHA-256 of the archive's bytes, or of the repository's description")
    kind: Literal["archive", "git", "github"]
    created: str = Field(description="When it was first stored (UTC, ISO 8601)")
    stored: str = Field(description="The source's folder in the store: a path or an s3:// URI")
    filename: str | None = Field(None, description="The uploaded file's name as the client gave it")
    format: str | None = Field(None, description="The archive format found in its bytes, e.g. .tar.gz")
    size_bytes: int | None = None
    sha256: str | None = None
    files: int | None = Field(None, description="Files in the archive")
    expanded_bytes: int | None = Field(None, description="Bytes the archive expands to")
    repo_url: str | None = None
    github: str | None = None
    ref: str | None = None


class SourceCreated(SourceInfo):
    created_now: bool = Field(description="False when the same source was already stored (same id)")


OverrideValue = str | int | float | bool | None


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_id: str = Field(max_length=64, description="From POST /v1/sources")
    recipe: str = Field(
        max_length=1024,
        description="A shipped recipe's name (tiny-cpu, smollm2-135m-cpu, ...) or a path in a recipe folder",
        examples=["tiny-cpu"],
    )
    overrides: dict[str, OverrideValue] = Field(
        default_factory=dict,
        max_length=64,
        description='Recipe settings to change, as for --set: {"max_steps": 10, "data.seq_len": 256}',
    )


class StageInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: str | None = None
    started: str | None = None
    finished: str | None = None


class RunInfo(BaseModel):
    id: str
    source_id: str
    recipe: str
    overrides: dict[str, Any]
    backend: Literal["local", "kfp"]
    state: Literal["running", "succeeded", "failed"]
    created: str
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    stages: dict[str, StageInfo] | None = Field(None, description="ingest, clean, train, evaluate, deploy")
    metrics: dict[str, Any] | None = Field(None, description="The evaluation's metrics by model")
    promote: bool | None = Field(None, description="Whether evaluation chose to promote the candidate")
    decision: dict[str, Any] | None = Field(None, description="Why evaluation promoted or not")
    model: str | None = Field(None, description="Path or URI of the trained model")
    endpoint: str | None = Field(None, description="URL of the deployed model, when deployed")
    report_url: str | None = Field(None, description="Where the evaluation report is, once it exists")
    log_url: str | None = None
    pid: int | None = None
    run_dir: str | None = None
    kfp_run_id: str | None = None


class RunList(BaseModel):
    runs: list[RunInfo]


# Bounds that keep one request's body (and the model's work) reasonable: 100k characters a prompt.
Prompt = Annotated[str, StringConstraints(max_length=100_000)]


class CompletionRequest(BaseModel):
    """An OpenAI-style completions body; fields other than ``run_id`` are forwarded as given."""

    model_config = ConfigDict(extra="allow")
    prompt: Prompt | Annotated[list[Prompt], Field(max_length=64)] = Field(
        description="The text to complete, or up to 64 of them"
    )
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=8192)
    stream: bool | None = Field(None, description="Not supported: must be false or absent")
    run_id: str | None = Field(
        None, pattern=r"^[0-9a-f]{32}$", description="Send to this run's deployed endpoint (not forwarded)"
    )


class Health(BaseModel):
    status: Literal["ok"]
    version: str


def run_view(row: dict[str, Any], runs: Runs) -> RunInfo:
    status = stored_status(row) or RunStatus()
    stages = {name: StageInfo(**dataclasses.asdict(stage)) for name, stage in status.stages.items()}
    base = f"/v1/runs/{row['id']}"
    return RunInfo(
        id=row["id"],
        source_id=row["source_id"],
        recipe=row["recipe"],
        overrides=json.loads(row["overrides"]),
        backend=row["backend"],
        state=row["state"],
        created=row["created"],
        started=status.started or row["created"],
        finished=row["finished"] if row["state"] in FINAL_STATES else None,
        error=row["error"] if row["state"] == "failed" else None,
        stages=stages or None,
        metrics=status.metrics,
        promote=status.promote,
        decision=status.decision,
        model=status.model,
        endpoint=status.endpoint,
        report_url=f"{base}/report" if runs.report(row) is not None else None,
        log_url=f"{base}/log" if row["backend"] == "local" else None,
        pid=row["pid"],
        run_dir=row["run_dir"],
        kfp_run_id=row["kfp_run_id"],
    )


class BearerAuth:
    """Checks the token on /v1/* before anything else happens, so an unauthenticated client learns
    nothing from validation errors and sends no upload into the server's disk."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            try:
                check_bearer(Request(scope), self.settings.tokens, self.settings.allow_no_auth)
            except ApiError as exc:
                await _error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers
    )


def _completions_url(base: str) -> str:
    """The completions route under a model's URL: as given when it ends in /completions, under /v1 when it
    ends there, else KServe's OpenAI prefix (``/openai/v1/completions``, as ``repotune serve`` has)."""
    base = base.rstrip("/")
    if base.endswith("/completions"):
        return base
    if base.endswith("/v1"):
        return f"{base}/completions"
    return f"{base}/openai/v1/completions"


def create_app(settings: ApiSettings) -> FastAPI:
    """The application over ``settings``; runs left running by an earlier instance are settled at start."""
    db = Database(settings.db_path)
    sources = SourceStore(settings, db)
    runs = Runs(settings, db, sources)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settled = await run_in_threadpool(runs.reconcile)
        if settled:
            log.warning(
                "settled %d run(s) left running by an earlier API instance: %s", len(settled), settled
            )
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(settings.completions_timeout_s, connect=5.0)
        ) as client:
            app.state.http = client
            yield

    app = FastAPI(
        title="repotune API",
        version=repotune.__version__,
        description="Upload a codebase or name a repository, start a fine-tuning pipeline run, follow it, "
        "and query the deployed model. Every /v1 route needs `Authorization: Bearer TOKEN`.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.runs, app.state.sources = settings, runs, sources
    app.add_middleware(BearerAuth, settings=settings)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc.errors())

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", "internal error; the API's log has the details"), status_code=500
        )

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(status="ok", version=repotune.__version__)

    # The bearer dependency only declares the security scheme in the OpenAPI document; BearerAuth enforces.
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer)], responses=ERRORS)

    @v1.post(
        "/sources",
        response_model=SourceCreated,
        status_code=201,
        tags=["sources"],
        summary="Upload an archive, or register a git URL or GitHub repository",
        responses={
            200: {"model": SourceCreated, "description": "Already stored (same content or description)"},
            400: {"model": ErrorBody, "description": "Malformed body"},
            413: {"model": ErrorBody, "description": "Upload over REPOTUNE_API_MAX_UPLOAD_MB"},
            415: {"model": ErrorBody, "description": "Neither multipart/form-data nor JSON"},
        },
        openapi_extra={
            "requestBody": {
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
                        "schema": {
                            "oneOf": [
                                RepoUrlSource.model_json_schema(),
                                GithubSource.model_json_schema(),
                            ]
                        }
                    },
                },
            }
        },
    )
    async def create_source(request: Request) -> JSONResponse:
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
                spec: RepoUrlSource | GithubSource = _validate(RepoUrlSource, body)
                kind, location = "git", spec.repo_url
            elif isinstance(body, dict) and "github" in body:
                spec = _validate(GithubSource, body)
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

    @v1.get("/sources/{source_id}", response_model=SourceInfo, tags=["sources"])
    def get_source(source_id: SourceId) -> SourceInfo:
        info = sources.get(source_id)
        if info is None:
            raise ApiError(404, "source_not_found", f"no source {source_id}")
        return SourceInfo(**info)

    @v1.post(
        "/runs",
        response_model=RunInfo,
        status_code=202,
        tags=["runs"],
        summary="Start a pipeline run over a source",
        responses={
            409: {"model": ErrorBody, "description": "The store cannot serve a KFP cluster"},
            429: {"model": ErrorBody, "description": "REPOTUNE_API_MAX_ACTIVE_RUNS runs are in progress"},
            503: {"model": ErrorBody, "description": "KFP is configured but unavailable"},
        },
    )
    def create_run(body: RunRequest) -> RunInfo:
        source = sources.get(body.source_id)
        if source is None:
            raise ApiError(
                404, "source_not_found", f"no source {body.source_id}; create one with POST /v1/sources"
            )
        recipe = choose_recipe(body.recipe, settings.recipe_dirs)
        check_overrides(recipe, body.overrides)
        return run_view(runs.create(source, recipe, body.overrides), runs)

    @v1.get("/runs", response_model=RunList, tags=["runs"])
    def list_runs(
        limit: Annotated[int, Query(ge=1, le=500, description="Newest runs first")] = 50,
        state: Annotated[Literal["running", "succeeded", "failed"] | None, Query()] = None,
    ) -> RunList:
        return RunList(runs=[run_view(row, runs) for row in runs.list(limit, state)])

    def _run(run_id: str) -> dict[str, Any]:
        row = runs.get(run_id)
        if row is None:
            raise ApiError(404, "run_not_found", f"no run {run_id}")
        return row

    @v1.get("/runs/{run_id}", response_model=RunInfo, tags=["runs"])
    def get_run(run_id: RunId) -> RunInfo:
        return run_view(_run(run_id), runs)

    @v1.get(
        "/runs/{run_id}/report",
        tags=["runs"],
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/markdown": {}}, "description": "The evaluation report"}},
    )
    def get_report(run_id: RunId) -> PlainTextResponse:
        path = runs.report(_run(run_id))
        if path is None:
            raise ApiError(404, "report_not_ready", f"run {run_id} has no evaluation report yet")
        return PlainTextResponse(path.read_text(encoding="utf-8"), media_type="text/markdown; charset=utf-8")

    @v1.get(
        "/runs/{run_id}/log",
        tags=["runs"],
        response_class=PlainTextResponse,
        responses={
            200: {"content": {"text/plain": {}}, "description": "The last 64 KiB of the run's output"}
        },
    )
    def get_log(run_id: RunId) -> PlainTextResponse:
        row = _run(run_id)
        if not row["run_dir"]:
            raise ApiError(404, "log_not_found", f"run {run_id} runs on KFP; its logs are in the KFP UI")
        return PlainTextResponse(log_tail(Path(row["run_dir"]).parent / "run.log", LOG_BYTES))

    @v1.post(
        "/completions",
        tags=["model"],
        summary="Forward an OpenAI-style completions request to the deployed model",
        responses={
            400: {"model": ErrorBody, "description": "Streaming requested"},
            502: {"model": ErrorBody, "description": "The model is unreachable or failed"},
            503: {"model": ErrorBody, "description": "No model is deployed"},
            504: {"model": ErrorBody, "description": "The model did not answer in time"},
        },
    )
    async def completions(request: Request, body: CompletionRequest) -> JSONResponse:
        if body.stream:
            raise ApiError(400, "stream_not_supported", "streaming is not supported here; send stream: false")
        target = await run_in_threadpool(_model_url, body.run_id)
        payload = body.model_dump(exclude_none=True, exclude={"run_id"})
        client: httpx.AsyncClient = request.app.state.http
        url = _completions_url(target)
        try:
            answer = await client.post(url, json=payload)
        except httpx.TimeoutException:
            raise ApiError(
                504,
                "model_timeout",
                f"the model at {url} did not answer in {settings.completions_timeout_s} s",
            ) from None
        except httpx.HTTPError as exc:
            raise ApiError(502, "model_unreachable", f"cannot reach the model at {url}: {exc}") from None
        if answer.status_code >= 500:
            raise ApiError(
                502, "model_error", f"the model at {url} answered {answer.status_code}: {answer.text[:500]}"
            )
        try:
            content = answer.json()
        except ValueError:
            raise ApiError(502, "model_error", f"the model at {url} answered with non-JSON content") from None
        return JSONResponse(content, status_code=answer.status_code)

    def _model_url(run_id: str | None) -> str:
        if run_id is not None:
            view = run_view(_run(run_id), runs)
            if not view.endpoint:
                raise ApiError(503, "no_model", f"run {run_id} has no deployed endpoint ({view.state})")
            return view.endpoint
        if settings.model_url:
            return settings.model_url
        for row in runs.list(500, "succeeded"):
            endpoint = run_view(row, runs).endpoint
            if endpoint:
                return endpoint
        raise ApiError(
            503,
            "no_model",
            "no model is deployed: set REPOTUNE_API_MODEL_URL, or finish a run that deploys one",
        )

    app.include_router(v1)
    return app


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


def _validate(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        message, details = _describe(exc.errors())
        raise ApiError(422, "invalid_request", message, details=details) from None


def _describe(errors: Any) -> tuple[str, list[dict[str, Any]]]:
    details = [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ]
    message = "; ".join(f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details) or "invalid request"
    return message, details


def _validation_response(errors: Any) -> JSONResponse:
    message, details = _describe(errors)
    return JSONResponse(error_body("invalid_request", message, details), status_code=422)
