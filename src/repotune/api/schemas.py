"""The API's request and response bodies (pydantic models) and its path parameters.

The routers validate against these and FastAPI writes them into /openapi.json; nothing here touches
the store, the database or the network.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from repotune.api.policy import parse_repo_url

_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/+-]{0,199}$")
_GITHUB = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
# A wiki or tracker source by name only: its site and credentials are the server's (CONFLUENCE_URL,
# JIRA_URL, NOTION_TOKEN, ...), so a client cannot point the server at an address of its choosing.
_SERVICE = re.compile(
    r"^(confluence:[A-Za-z0-9_~-]{1,255}|jira:[A-Za-z][A-Za-z0-9_]{0,254}|notion:[0-9a-fA-F-]{0,36})$"
)

SourceId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="A source id (64 hex digits).")]
RunId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="A run id (32 hex digits).")]


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
    repo_url: str = Field(
        max_length=2048,
        description="https://, ssh://, git:// or user@host:path (http:// and file:// where the server "
        "allows them: REPOTUNE_API_SOURCE_SCHEMES); its host must resolve to a public address or to a "
        "network the server allows (REPOTUNE_API_SOURCE_NETWORKS)",
    )
    ref: Ref = Field(None, description="Branch, tag or commit; default: the default branch")

    @field_validator("repo_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parse_repo_url(value)  # the syntax; the server's policy is checked when the source is added
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
MAX_MORE_SOURCES = 8
"""Sources a run may add to its first (registered ones and wiki/tracker ones, each)."""

ServiceSource = Annotated[
    str,
    StringConstraints(pattern=_SERVICE.pattern),
    Field(
        description="confluence:SPACE, jira:PROJECT or notion:[ID], read with this server's sites and "
        "credentials (CONFLUENCE_URL, JIRA_URL and their tokens, NOTION_TOKEN; on a cluster, the Secrets "
        "repotune-confluence, repotune-jira, repotune-notion)",
        examples=["confluence:ENG"],
    ),
]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_id: str = Field(max_length=64, description="From POST /v1/sources")
    more_source_ids: list[Annotated[str, StringConstraints(max_length=64)]] = Field(
        default_factory=list,
        max_length=MAX_MORE_SOURCES,
        description="More sources from POST /v1/sources for the same dataset (e.g. github:OWNER/REPO's "
        "issues beside an uploaded archive); at most one git repository per run",
    )
    services: list[ServiceSource] = Field(
        default_factory=list,
        max_length=MAX_MORE_SOURCES,
        description="Wiki and tracker sources for the same dataset",
        examples=[["confluence:ENG", "jira:ENG"]],
    )
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
    more_source_ids: list[str] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    recipe: str
    overrides: dict[str, Any]
    backend: Literal["local", "kfp"]
    state: Literal["running", "succeeded", "failed"]
    created: str
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    stages: dict[str, StageInfo] | None = Field(
        None, description="ingest, clean, score-base, train, evaluate, deploy"
    )
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
    removed: str | None = Field(
        None,
        description="When the run's folder (model, report, log) was removed by retention "
        "(REPOTUNE_API_KEEP_RUNS, REPOTUNE_API_KEEP_DAYS)",
    )


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
