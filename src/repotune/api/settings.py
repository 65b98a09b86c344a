"""The upload API's settings: one frozen dataclass, read from ``REPOTUNE_API_*`` environment variables.

REPOTUNE_API_TOKENS            comma-separated bearer tokens; required unless --insecure-no-auth
REPOTUNE_API_STORE             where sources are kept: a local folder or an s3:// prefix
REPOTUNE_API_WORK_DIR          local folder for run folders, uploads in progress, fetched sources
REPOTUNE_API_DB                the SQLite file holding sources and runs
REPOTUNE_API_MAX_UPLOAD_MB     largest upload accepted, in MiB (default 512)
REPOTUNE_API_MAX_EXPANDED_MB   most an uploaded archive may expand to, in MiB (default 1024)
REPOTUNE_API_MAX_RATIO         most an archive, or one zip member, may expand per stored byte (default 100)
REPOTUNE_API_MAX_FILES         most entries an uploaded archive may hold (default 200000)
REPOTUNE_API_RECIPE_DIRS       folders (separated by os.pathsep) whose *.yaml files are the recipes
REPOTUNE_API_MAX_ACTIVE_RUNS   runs allowed at once; more are refused with 429 (default 2)
REPOTUNE_API_KEEP_RUNS         finished runs whose folders are kept, newest first (default 20; "none": all)
REPOTUNE_API_KEEP_DAYS         days a finished run's folder is kept (default 30; "none": no limit)
REPOTUNE_API_SOURCE_SCHEMES    schemes a repo_url may have, comma-separated, of https,http,ssh,git,file
                               (default https,ssh,git)
REPOTUNE_API_SOURCE_HOSTS      host names a repo_url may name (exact, or *.example.com); default: any
REPOTUNE_API_SOURCE_NETWORKS   loopback or private networks (CIDR, comma-separated) a repo_url's host
                               may resolve into; default: none, public addresses only
REPOTUNE_API_MODEL_URL         the deployed model that /v1/completions forwards to
REPOTUNE_API_MODEL_TOKEN       bearer token sent to that model (one of its REPOTUNE_SERVE_TOKENS)
REPOTUNE_API_COMPLETIONS_TIMEOUT_S   seconds to wait for the model's answer (default 60)
REPOTUNE_KFP_HOST              a KFP endpoint: runs are submitted there instead of run locally
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repotune.api.policy import SCHEMES, IpNetwork
from repotune.errors import RepotuneError
from repotune.storage import is_s3_uri
from repotune.train import shipped_recipes_dir

MIB = 1024 * 1024


def default_store() -> Path:
    """``$XDG_DATA_HOME/repotune/api`` (``~/.local/share`` by default): data a server keeps, not a cache."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "repotune" / "api"


@dataclass(frozen=True)
class ApiSettings:
    """Everything the API needs to know; built by :meth:`from_env` or directly in tests."""

    store: str
    """Where sources are kept: a local folder, or an ``s3://bucket/prefix`` (credentials as in storage.py)."""
    work_dir: Path
    """Local folder for run folders, uploads being received and sources fetched from an s3:// store."""
    db_path: Path
    """The SQLite file with source and run records; it must survive restarts (runs are not in memory)."""
    tokens: tuple[str, ...] = ()
    """Bearer tokens accepted on /v1/*; empty only together with ``allow_no_auth``."""
    allow_no_auth: bool = False
    """Serve without authentication; set only by the explicit ``--insecure-no-auth`` flag."""
    max_upload_bytes: int = 512 * MIB
    """Largest archive upload accepted, in bytes; a larger one is answered 413 and nothing is kept."""
    max_expanded_bytes: int = 1024 * MIB
    """Most bytes an uploaded archive may expand to (against archive bombs): 1 GiB, room for most
    repositories' source; checked by reading the archive in a worker thread, nothing is written."""
    max_compression_ratio: float = 100.0
    """Most bytes an archive, or one zip member, may expand to per byte stored (past 1 MiB expanded):
    source code compresses about 3-10x, a deflate bomb about 1,000x."""
    max_archive_files: int = 200_000
    """Most entries (files and folders) an uploaded archive may hold."""
    recipe_dirs: tuple[Path, ...] = field(default_factory=tuple)
    """Folders whose ``NAME.yaml`` files may be named as a run's recipe; nothing outside them is accepted."""
    max_active_runs: int = 2
    """Runs that may be in progress at once; a further POST /v1/runs is answered 429."""
    keep_runs: int | None = 20
    """Finished runs whose folders (model, artifacts, log) are kept, newest first; older ones' folders
    are removed and their records marked. None: no limit by count."""
    keep_days: float | None = 30.0
    """Days a finished run's folder is kept after it finished; None: no limit by age."""
    source_schemes: tuple[str, ...] = ("https", "ssh", "git")
    """Schemes a git source's URL may have (of https, http, ssh, git, file; user@host:path counts as
    ssh). file:// lets clients read any repository the API's user can read on this machine."""
    source_hosts: tuple[str, ...] = ()
    """Host names a git source may name, exact or as ``*.example.com``; empty: any host."""
    source_networks: tuple[IpNetwork, ...] = ()
    """Loopback or private networks a git source's host may resolve into (a company's git server, say);
    empty: public addresses only. Link-local and cloud metadata addresses are refused regardless."""
    model_url: str | None = None
    """Base URL (or full completions URL) of the model /v1/completions forwards to; None: a run's endpoint."""
    model_token: str | None = field(default=None, repr=False)
    """Bearer token /v1/completions sends to the model (``repotune serve`` checks REPOTUNE_SERVE_TOKENS);
    None: no Authorization header. Kept out of repr, logs and runs' environments."""
    completions_timeout_s: float = 60.0
    """Seconds to wait for the model's completion before answering 504."""
    kfp_host: str | None = None
    """A KFP API endpoint; when set, runs are submitted there through the kfp SDK instead of run here."""

    def __post_init__(self) -> None:
        if not self.tokens and not self.allow_no_auth:
            raise RepotuneError(
                "REPOTUNE_API_TOKENS is not set: give one or more bearer tokens (comma-separated), "
                "or pass --insecure-no-auth to serve without authentication"
            )
        if any(not token or token != token.strip() for token in self.tokens):
            raise RepotuneError("REPOTUNE_API_TOKENS has an empty token or one with surrounding spaces")
        for name in (
            "max_upload_bytes", "max_expanded_bytes", "max_archive_files", "max_active_runs",
            "max_compression_ratio",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise RepotuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.keep_runs is not None and self.keep_runs < 0:
            raise RepotuneError(f"REPOTUNE_API_KEEP_RUNS must be 0 or more, got {self.keep_runs}")
        if self.keep_days is not None and self.keep_days < 0:
            raise RepotuneError(f"REPOTUNE_API_KEEP_DAYS must be 0 or more, got {self.keep_days}")
        unknown = set(self.source_schemes) - set(SCHEMES)
        if unknown or not self.source_schemes:
            raise RepotuneError(
                f"REPOTUNE_API_SOURCE_SCHEMES must list some of {', '.join(SCHEMES)}; "
                f"{', '.join(sorted(unknown)) or 'it is empty'} is not one"
            )
        if self.model_token is not None and (
            not self.model_token or self.model_token != self.model_token.strip()
        ):
            raise RepotuneError("REPOTUNE_API_MODEL_TOKEN is empty or has surrounding spaces")
        if self.completions_timeout_s <= 0:
            raise RepotuneError("REPOTUNE_API_COMPLETIONS_TIMEOUT_S must be positive")
        if self.model_url is not None and not self.model_url.startswith(("http://", "https://")):
            raise RepotuneError(f"REPOTUNE_API_MODEL_URL {self.model_url!r} must be an http(s):// URL")

    @property
    def local_store(self) -> Path | None:
        """The store as a local folder, or None when it is an s3:// prefix."""
        return None if is_s3_uri(self.store) else Path(self.store)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, allow_no_auth: bool = False
    ) -> ApiSettings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def limit(name: str, default: Any, kind: type) -> Any:
            """A limit that "none" lifts."""
            raw = get(name)
            if raw is None:
                return default
            if raw.lower() == "none":
                return None
            try:
                return kind(raw)
            except ValueError:
                raise RepotuneError(f"{name}={raw!r} is not a {kind.__name__} or 'none'") from None

        def number(name: str, default: float, unit: float = 1, kind: type = int) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                return kind(raw) * unit
            except ValueError:
                raise RepotuneError(f"{name}={raw!r} is not a {kind.__name__}") from None

        store = get("REPOTUNE_API_STORE") or str(default_store())
        if not is_s3_uri(store):
            store = str(Path(store).expanduser().resolve())
        work_raw = get("REPOTUNE_API_WORK_DIR")
        if work_raw is not None:
            work_dir = Path(work_raw).expanduser().resolve()
        elif is_s3_uri(store):
            work_dir = default_store() / "work"
        else:
            work_dir = Path(store)
        db_raw = get("REPOTUNE_API_DB")
        db_path = Path(db_raw).expanduser().resolve() if db_raw else work_dir / "api.sqlite3"
        recipes_raw = get("REPOTUNE_API_RECIPE_DIRS")
        if recipes_raw is not None:
            recipe_dirs = tuple(Path(p).expanduser().resolve() for p in recipes_raw.split(os.pathsep) if p)
        else:
            shipped = shipped_recipes_dir()  # inside the package, or the checkout's configs/
            recipe_dirs = (shipped,) if shipped.is_dir() else ()
        tokens = tuple(t.strip() for t in (get("REPOTUNE_API_TOKENS") or "").split(",") if t.strip())
        networks = []
        for entry in _items(get("REPOTUNE_API_SOURCE_NETWORKS")):
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise RepotuneError(
                    f"REPOTUNE_API_SOURCE_NETWORKS: {entry!r} is not a network such as 10.0.0.0/8"
                ) from None
        return cls(
            store=store,
            work_dir=work_dir,
            db_path=db_path,
            tokens=tokens,
            allow_no_auth=allow_no_auth,
            max_upload_bytes=int(number("REPOTUNE_API_MAX_UPLOAD_MB", 512 * MIB, MIB, float)),
            max_expanded_bytes=int(number("REPOTUNE_API_MAX_EXPANDED_MB", 1024 * MIB, MIB, float)),
            max_compression_ratio=float(number("REPOTUNE_API_MAX_RATIO", 100.0, 1, float)),
            max_archive_files=int(number("REPOTUNE_API_MAX_FILES", 200_000)),
            recipe_dirs=recipe_dirs,
            max_active_runs=int(number("REPOTUNE_API_MAX_ACTIVE_RUNS", 2)),
            keep_runs=limit("REPOTUNE_API_KEEP_RUNS", cls.keep_runs, int),
            keep_days=limit("REPOTUNE_API_KEEP_DAYS", cls.keep_days, float),
            source_schemes=tuple(s.lower() for s in _items(get("REPOTUNE_API_SOURCE_SCHEMES")))
            or cls.source_schemes,
            source_hosts=tuple(_items(get("REPOTUNE_API_SOURCE_HOSTS"))),
            source_networks=tuple(networks),
            model_url=get("REPOTUNE_API_MODEL_URL"),
            model_token=get("REPOTUNE_API_MODEL_TOKEN"),
            completions_timeout_s=float(number("REPOTUNE_API_COMPLETIONS_TIMEOUT_S", 60.0, 1, float)),
            kfp_host=get("REPOTUNE_KFP_HOST"),
        )


def _items(value: str | None) -> list[str]:
    """The entries of a comma-separated setting, stripped, empty ones left out."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]
