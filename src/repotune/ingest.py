"""``repotune ingest``: one source in, ``records.jsonl`` and ``manifest.json`` out.

A source is a local folder (a git checkout adds its commit history), a git URL, an archive,
``github:OWNER/REPO`` for issues and pull requests, ``confluence:SPACE`` or ``notion:[ID]`` for wiki
pages, or ``jira:PROJECT`` for Jira issues. Output is written atomically: an interrupted run
leaves no half-written ``records.jsonl`` behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repotune import __version__
from repotune.atomic import atomic_open, write_json
from repotune.errors import RepotuneError
from repotune.records import Kind, Record
from repotune.sources import archive, git
from repotune.sources.base import IngestStats
from repotune.sources.local import WalkLimits, iter_tree

RECORDS_FILE = "records.jsonl"
MANIFEST_FILE = "manifest.json"
GITHUB_PREFIX = "github:"
CONFLUENCE_PREFIX = "confluence:"
NOTION_PREFIX = "notion:"
JIRA_PREFIX = "jira:"
_SERVICE_PREFIXES = (GITHUB_PREFIX, CONFLUENCE_PREFIX, NOTION_PREFIX, JIRA_PREFIX)


@dataclass(frozen=True)
class IngestConfig:
    source: str
    """A local path, a git URL, an archive (.zip/.tar.*), ``github:OWNER/REPO``, ``confluence:SPACE``,
    ``notion:`` (a page or database id, or nothing for every page the integration sees) or
    ``jira:PROJECT``."""
    output: Path
    """Folder that receives records.jsonl and manifest.json."""
    kinds: frozenset[Kind] | None = None
    """Record kinds to keep (``--include``); ``None``: every kind the source has."""
    ref: str | None = None
    """Branch, tag or commit to check out for a git URL (``--ref``); ``None``: the default branch."""
    max_file_bytes: int = 1_000_000
    """Files larger than this many bytes are skipped as ``too_large`` (``--max-file-bytes``)."""
    max_commits: int | None = 1000
    """Newest non-merge commits to read (``--max-commits``); ``None``: the whole history."""
    max_diff_bytes: int = 20_000
    """Each commit's diff is cut after this many characters (``--max-diff-bytes``)."""
    since: datetime | None = None
    """Only issues, pull requests and commits updated or made since then (``--since``)."""
    github_base_url: str | None = None
    """GitHub Enterprise API root, e.g. https://ghe.example.com/api/v3 (``--github-url``)."""
    github_token: str | None = field(default=None, repr=False)
    """Token for the GitHub API; None reads GITHUB_TOKEN from the environment. Never logged."""
    confluence_url: str | None = None
    """Confluence site for ``confluence:`` (Cloud: https://SITE.atlassian.net/wiki); None reads
    CONFLUENCE_URL. Credentials come from CONFLUENCE_USER/CONFLUENCE_TOKEN or CONFLUENCE_PAT only."""
    confluence_comments: bool = False
    """Append each Confluence page's comments to its record."""
    jira_url: str | None = None
    """Jira site for ``jira:`` (Cloud: https://SITE.atlassian.net); None reads JIRA_URL. Credentials
    come from JIRA_USER/JIRA_TOKEN or JIRA_PAT only."""
    jira_jql: str | None = None
    """A JQL query that replaces ``project = KEY`` for ``jira:`` (then ``jira:`` may name no project)."""
    notion_url: str | None = None
    """Notion API root for ``notion:``; None is https://api.notion.com. The token comes from NOTION_TOKEN."""

    def __post_init__(self) -> None:
        if self.max_file_bytes <= 0:
            raise RepotuneError("--max-file-bytes must be a positive number of bytes")
        if self.max_commits is not None and self.max_commits <= 0:
            raise RepotuneError("--max-commits must be positive (leave it unset for the whole history)")
        if self.max_diff_bytes <= 0:
            raise RepotuneError("--max-diff-bytes must be a positive number of characters")
        if self.ref is not None and not git.is_git_url(self.source):
            raise RepotuneError("--ref applies only to a git URL source")
        if self.jira_jql is not None and not self.source.startswith(JIRA_PREFIX):
            raise RepotuneError("--jira-jql applies only to a jira: source")


def _wants(config: IngestConfig, *kinds: Kind) -> bool:
    return config.kinds is None or any(kind in config.kinds for kind in kinds)


def _local_records(
    root: Path, source: str, config: IngestConfig, stats: IngestStats, manifest: dict[str, Any]
) -> Iterator[Record]:
    revision = None
    is_repo = git.is_git_checkout(root) and git.has_commits(root)
    if is_repo:
        revision = git.head_sha(root)
        manifest["commit"] = revision
    file_kinds = None if config.kinds is None else config.kinds & {Kind.CODE, Kind.DOC, Kind.DIAGRAM}
    if _wants(config, Kind.CODE, Kind.DOC, Kind.DIAGRAM):
        yield from iter_tree(
            root,
            source=source,
            stats=stats,
            kinds=file_kinds,
            revision=revision,
            limits=WalkLimits(max_file_bytes=config.max_file_bytes),
            exclude=_inside(config.output, root),
        )
    if is_repo and _wants(config, Kind.COMMIT):
        yield from git.iter_commits(
            root,
            source=source,
            stats=stats,
            max_commits=config.max_commits,
            max_diff_bytes=config.max_diff_bytes,
            since=config.since.isoformat() if config.since else None,
        )


def iter_source(
    config: IngestConfig,
    stats: IngestStats,
    manifest: dict[str, Any],
    workdir: Path,
    log: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Records of ``config.source``; fills ``manifest`` with what was resolved (commit SHA, kind)."""
    spec = config.source
    if spec.startswith(GITHUB_PREFIX):
        from repotune.sources.github import iter_github  # PyGithub is slow to import; only when used

        repo = spec[len(GITHUB_PREFIX) :]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise RepotuneError(f"{spec!r}: expected github:OWNER/REPO")
        manifest["source_type"] = "github"
        issue_kinds = frozenset({Kind.ISSUE, Kind.PULL_REQUEST})
        kinds = issue_kinds if config.kinds is None else config.kinds & issue_kinds
        if not kinds:
            raise RepotuneError("a github: source has only issues and pull requests; add --include issues")
        yield from iter_github(
            repo,
            stats=stats,
            token=config.github_token,
            base_url=config.github_base_url,
            since=config.since,
            kinds=kinds,
            log=log,
        )
        return
    if spec.startswith((CONFLUENCE_PREFIX, NOTION_PREFIX, JIRA_PREFIX)):
        yield from _service_records(config, stats, manifest, log)
        return
    if git.is_git_url(spec):
        manifest["source_type"] = "git"
        checkout = workdir / "checkout"
        manifest["commit"] = git.clone(spec, checkout, config.ref)
        manifest["ref"] = config.ref
        yield from _local_records(checkout, _strip_auth(spec), config, stats, manifest)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise RepotuneError(
            f"source {spec!r} does not exist (expected a folder, archive, git URL or github:OWNER/REPO)"
        )
    if path.is_file():
        if not archive.is_archive(path):
            raise RepotuneError(
                f"source {spec!r} is a file but not an archive ({', '.join(archive.ARCHIVE_SUFFIXES)})"
            )
        manifest["source_type"] = "archive"
        root = archive.extract(path, workdir / "archive")
        yield from _local_records(root, path.name, config, stats, manifest)
        return
    manifest["source_type"] = "git" if git.is_git_checkout(path) else "folder"
    yield from _local_records(path.resolve(), path.resolve().name, config, stats, manifest)


def _service_records(
    config: IngestConfig, stats: IngestStats, manifest: dict[str, Any], log: Callable[[str], None] | None
) -> Iterator[Record]:
    """Records of a ``confluence:``, ``notion:`` or ``jira:`` source (each module imported when used)."""
    spec = config.source
    prefix, _, target = spec.partition(":")
    manifest["source_type"] = prefix
    wanted = Kind.ISSUE if prefix == "jira" else Kind.WIKI_PAGE
    if config.kinds is not None and wanted not in config.kinds:
        include = "issues" if wanted is Kind.ISSUE else "wiki"
        raise RepotuneError(f"a {prefix}: source has only {wanted}s; add --include {include}")
    if prefix == "notion":
        site = config.notion_url or "https://api.notion.com"
    else:
        site = (config.confluence_url if prefix == "confluence" else config.jira_url) or os.environ.get(
            f"{prefix.upper()}_URL"
        )
    manifest["site"] = _strip_auth(site) if site else None
    if prefix == "confluence":
        from repotune.sources.confluence import iter_confluence

        yield from iter_confluence(
            target,
            stats=stats,
            url=config.confluence_url,
            since=config.since,
            comments=config.confluence_comments,
            log=log,
        )
    elif prefix == "notion":
        from repotune.sources.notion import iter_notion

        yield from iter_notion(target, stats=stats, base_url=config.notion_url, since=config.since, log=log)
    else:
        from repotune.sources.jira import iter_jira

        yield from iter_jira(
            target, stats=stats, url=config.jira_url, jql=config.jira_jql, since=config.since, log=log
        )


def run_ingest(
    config: IngestConfig,
    progress: Callable[[int, IngestStats], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest ``config.source`` into ``config.output``; returns the manifest that was written.

    ``progress`` is called every 200 records; ``log`` receives lines a person should see (waits).
    """
    stats = IngestStats()
    manifest: dict[str, Any] = {
        "source": _display_source(config.source),
        "source_type": None,
        "commit": None,
        "include": sorted(config.kinds) if config.kinds is not None else None,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "repotune_version": __version__,
    }
    config.output.mkdir(parents=True, exist_ok=True)
    records_path = config.output / RECORDS_FILE
    with tempfile.TemporaryDirectory(prefix="repotune-ingest-") as tmp, atomic_open(records_path) as out:
        total = 0
        for record in iter_source(config, stats, manifest, Path(tmp), log):
            out.write(record.to_json())
            out.write("\n")
            total += 1
            if progress is not None and total % 200 == 0:
                progress(total, stats)
        if total == 0:
            raise RepotuneError(f"source {config.source!r} yielded no records ({_skip_summary(stats)})")
    manifest.update(stats.as_dict())
    manifest["records"] = total
    manifest["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(config.output / MANIFEST_FILE, manifest)
    return manifest


def _display_source(spec: str) -> str:
    """The source as a manifest names it: a URL without credentials, a local path made absolute."""
    if git.is_git_url(spec):
        return _strip_auth(spec)
    if spec.startswith(_SERVICE_PREFIXES):
        return spec
    return str(Path(spec).expanduser().resolve())


def _inside(output: Path, root: Path) -> frozenset[str]:
    """The output folder relative to the tree being walked, when it lies inside it."""
    try:
        rel = output.resolve().relative_to(root.resolve())
    except ValueError:
        return frozenset()
    return frozenset({rel.as_posix()})


def _strip_auth(url: str) -> str:
    """Drop ``user:token@`` from a URL so a credential never lands in a manifest or a record."""
    if "://" not in url:
        return url  # scp-like ``git@host:path``: the user name is not a secret
    scheme, _, rest = url.partition("://")
    host_and_path = rest.split("@", 1)[-1] if "@" in rest.split("/", 1)[0] else rest
    return f"{scheme}://{host_and_path}"


def _skip_summary(stats: IngestStats) -> str:
    if not stats.skipped:
        return "the source is empty"
    top = ", ".join(f"{reason}: {count}" for reason, count in stats.skipped.most_common(5))
    return f"skipped {top}"
