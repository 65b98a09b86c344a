"""The ingest stage: one or more sources in, ``records.jsonl`` and ``manifest.json`` out.

A source is a local folder (a git checkout adds its commit history), a git URL, an archive (also one
in object storage, as the upload API stores them), ``github:OWNER/REPO`` for issues and pull
requests, ``confluence:SPACE`` or ``notion:[ID]`` for wiki pages, or ``jira:PROJECT`` for Jira
issues. Several sources make one dataset (a repository, its wiki and its tracker): each record keeps
its source in ``source``, the manifest counts each one in ``sources``, and a resolved Jira issue is
kept with the commits that name its key (:mod:`repotune.ingest.links`). Output is written
atomically: an interrupted run leaves no half-written ``records.jsonl``.

Where there is history, the records are cut in time (:mod:`repotune.sources.cut`): the files of the
tree at the cut C and the commits up to C, to train on; the commits after C, and each file that gained
lines after C as it stands at the newest commit, with those lines' ranges in ``meta["added_lines"]``
and C in ``meta["cut"]``, to score on. The manifest's ``split`` says which split applies and why.

    result = repotune.ingest.run(IngestConfig(source="https://github.com/org/repo.git", output=Path("in")))
    result.records, result.commit, IngestLayout(Path("in")).records
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from repotune import __version__
from repotune.atomic import atomic_open, prepare_output, write_json
from repotune.errors import RepotuneError
from repotune.ingest.layout import IngestLayout
from repotune.records import INCLUDE_KINDS, Kind, Record, record_id
from repotune.sources import archive, git
from repotune.sources.base import IngestStats
from repotune.sources.cut import Cut, NoCut, choose, parse_cut
from repotune.sources.local import PathRules, WalkLimits, iter_tree

GITHUB_PREFIX = "github:"
CONFLUENCE_PREFIX = "confluence:"
NOTION_PREFIX = "notion:"
JIRA_PREFIX = "jira:"
_SERVICE_PREFIXES = (GITHUB_PREFIX, CONFLUENCE_PREFIX, NOTION_PREFIX, JIRA_PREFIX)
_SERVICE_TYPES = frozenset(prefix.rstrip(":") for prefix in _SERVICE_PREFIXES)
S3_SCHEMES = ("s3://", "minio://")


@dataclass(frozen=True)
class IngestConfig:
    source: str | tuple[str, ...]
    """A local folder, a git URL, an archive (.zip/.tar.*, also s3://), github:OWNER/REPO,
    confluence:SPACE, notion:[PAGE_OR_DATABASE_ID] or jira:PROJECT; or several of them, read into one
    dataset (a repository with its wiki and tracker: REPO confluence:ENG jira:ENG)."""
    output: Path
    """Folder for records.jsonl and manifest.json."""
    kinds: frozenset[Kind] | None = None
    """Record kinds to keep, comma-separated: code,docs,commits,issues,wiki,diagrams (default: all the
    sources have)."""
    ref: str | None = None
    """Branch, tag or commit of the git URL source (default: its default branch)."""
    max_file_bytes: int = 1_000_000
    """Skip files larger than this many bytes (counted as too_large)."""
    max_commits: int | None = 1000
    """Newest non-merge commits to read, or `all` for the whole history (None in a config)."""
    max_diff_bytes: int = 20_000
    """Cut each commit's diff after this many characters."""
    since: datetime | None = None
    """Only issues, PRs and commits since this ISO date (incremental runs)."""
    cut: str | None = None
    """Where evaluation's future begins in a git history: a revision (SHA, tag, branch), an ISO date
    (the newest commit at or before it) or the newest share of commits (10%). Training gets the tree
    and commits up to the cut; evaluation scores the lines added after it. Default: the newest 10% of
    commits (at most 200), moved older until 400 lines were added after it; too short a history gets
    the file split. HEAD trains on everything, with no score on future code."""
    github_base_url: str | None = None
    """GitHub Enterprise API root, e.g. https://ghe.example.com/api/v3."""
    github_token: str | None = field(default=None, repr=False)
    """Token for the GitHub API; unset, it is read from GITHUB_TOKEN. Never logged."""
    confluence_url: str | None = None
    """Confluence site for ``confluence:`` (Cloud: https://SITE.atlassian.net/wiki); unset, it is read
    from CONFLUENCE_URL. Credentials come from CONFLUENCE_USER/CONFLUENCE_TOKEN or CONFLUENCE_PAT only."""
    confluence_comments: bool = False
    """Append each Confluence page's comments to its record."""
    jira_url: str | None = None
    """Jira site for ``jira:`` (Cloud: https://SITE.atlassian.net); unset, it is read from JIRA_URL.
    Credentials come from JIRA_USER/JIRA_TOKEN or JIRA_PAT only."""
    jira_jql: str | None = None
    """A JQL query that replaces ``project = KEY`` for the ``jira:`` source (then ``jira:`` may name no
    project)."""
    notion_url: str | None = None
    """Notion API root for ``notion:``; unset, https://api.notion.com. The token comes from NOTION_TOKEN."""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            sources = tuple(self.source)
            if not sources:
                raise RepotuneError("give at least one source")
            seen: dict[str, str] = {}
            for spec in sources:
                first = seen.get(key := _source_key(spec))
                if first is not None:
                    also = "" if first == spec else f" (as {first!r} and {spec!r})"
                    raise RepotuneError(f"source {first!r} is given twice{also}")
                seen[key] = spec
            # one source stays a string, so a one-source config reads as it always has
            object.__setattr__(self, "source", sources[0] if len(sources) == 1 else sources)
        if any(not spec.strip() for spec in self.sources):
            raise RepotuneError("a source is empty")
        if self.max_file_bytes <= 0:
            raise RepotuneError("--max-file-bytes must be a positive number of bytes")
        if self.max_commits is not None and self.max_commits <= 0:
            raise RepotuneError("--max-commits must be positive (or `all` for the whole history)")
        if self.max_diff_bytes <= 0:
            raise RepotuneError("--max-diff-bytes must be a positive number of characters")
        git_urls = [spec for spec in self.sources if git.is_git_url(spec)]
        if len(git_urls) > 1:
            # the pipeline pins one git URL to the commit it resolved (``pinned``); several would each
            # need their own
            raise RepotuneError(
                f"several git URLs in one dataset ({', '.join(git_urls)}): give one, or clone the others "
                "and give their folders"
            )
        if self.ref is not None and not git_urls:
            raise RepotuneError("--ref applies only to a git URL source")
        jira = [spec for spec in self.sources if spec.startswith(JIRA_PREFIX)]
        if self.jira_jql is not None and len(jira) != 1:
            raise RepotuneError("--jira-jql applies only to a jira: source, and to exactly one")
        if self.cut is not None:
            parse_cut(self.cut)
            if all(spec.startswith(_SERVICE_PREFIXES) for spec in self.sources):
                raise RepotuneError(
                    "--cut applies only to a source with git history (a checkout or a git URL)"
                )

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source, in the order given."""
        return (self.source,) if isinstance(self.source, str) else self.source

    def only(self, spec: str) -> IngestConfig:
        """This config for one of its sources, with the settings that apply to that one alone."""
        return replace(
            self,
            source=spec,
            ref=self.ref if git.is_git_url(spec) else None,
            jira_jql=self.jira_jql if spec.startswith(JIRA_PREFIX) else None,
            cut=None if spec.startswith(_SERVICE_PREFIXES) else self.cut,
        )

    @classmethod
    def pinned(
        cls, source: str | tuple[str, ...], revision: str, output: Path, **settings: Any
    ) -> IngestConfig:
        """The pipeline's ingest: a git URL is checked out at exactly the commit resolve-source settled
        on (``revision``, the cache key of every later step: :func:`repotune.sources.revision.combine`
        of each source's); any other source is read as it is."""
        from repotune.sources.revision import split_revision

        specs = (source,) if isinstance(source, str) else tuple(source)
        revisions = split_revision(revision, len(specs))
        ref = next((rev for spec, rev in zip(specs, revisions, strict=True) if git.is_git_url(spec)), None)
        return cls(source=source, output=output, ref=ref, **settings)


@dataclass(frozen=True)
class IngestResult:
    """What an ingest wrote, as its manifest states it."""

    output: IngestLayout
    source: str
    """The sources as the manifest names them (URLs without credentials, local paths made absolute),
    joined by `` + `` when there are several."""
    source_type: str
    """``folder``, ``git``, ``archive``, ``github``, ``confluence``, ``notion`` or ``jira``; ``multiple``
    for several sources."""
    commit: str | None
    """The commit SHA the records were read at (the first source that has one); None for sources
    without one (a plain folder, a wiki)."""
    records: int
    """Records written."""
    kept: dict[str, int]
    """Records per kind."""
    skipped: dict[str, int]
    """Entries skipped, per reason (``binary``, ``vendored``, ...)."""
    split: dict[str, Any]
    """The manifest's ``split``: ``mode`` (``temporal`` or ``files``), the ``cut`` (commit and date) or
    the ``reason`` there is none, and what was read on each side of it."""
    sources: tuple[dict[str, Any], ...] = ()
    """Each source's own entry of the manifest's ``sources``, in the order given: ``source``,
    ``source_type``, ``commit``, ``records``, ``kept`` and ``skipped``, and its ``split``."""


def _wants(config: IngestConfig, *kinds: Kind) -> bool:
    return config.kinds is None or any(kind in config.kinds for kind in kinds)


def _local_records(
    root: Path,
    source: str,
    config: IngestConfig,
    stats: IngestStats,
    manifest: dict[str, Any],
    workdir: Path,
    enclosing: Path | None = None,
) -> Iterator[Record]:
    """``enclosing``: the git work tree that the folder ``root`` lies inside (a service's folder in a
    monorepo): its tracked files are read, not its scratch files, and there is no history."""
    revision = None
    is_repo = git.is_git_checkout(root) and git.has_commits(root)
    if enclosing is not None:
        if config.cut is not None:
            raise RepotuneError(
                f"--cut needs git history, and {config.source!r} is a folder inside the git repository "
                f"{enclosing}: ingest the repository for its history"
            )
        manifest["repository"] = str(enclosing)
        split = NoCut(f"a folder inside the git repository {enclosing}; its history is read from the top")
    elif is_repo:
        revision = git.head_sha(root)
        manifest["commit"] = revision
        manifest["root_commit"] = git.root_commit(root, revision)
        split = choose(root, revision, parse_cut(config.cut) if config.cut is not None else None)
    elif config.cut is not None:
        raise RepotuneError(f"--cut needs git history, and {config.source!r} has none (not a git checkout)")
    else:
        split = NoCut("the source has no git history (a plain folder or archive)")
    manifest["split"] = _split_manifest(split)
    # Files changed since HEAD: the file split reads them as they are on disk (they carry no revision),
    # the temporal split reads commits only and leaves the changes out. Either way the split says how
    # many there are, so that what was read (or not) is said, not guessed from the revision.
    changed = git.uncommitted_files(root) if is_repo else frozenset()
    if changed:
        manifest["split"]["uncommitted_files"] = len(changed)
    if isinstance(split, Cut):
        yield from _temporal_records(root, source, config, stats, manifest["split"], split, workdir)
        return
    file_kinds = None if config.kinds is None else config.kinds & {Kind.CODE, Kind.DOC, Kind.DIAGRAM}
    if _wants(config, Kind.CODE, Kind.DOC, Kind.DIAGRAM):
        for record in iter_tree(
            root,
            source=source,
            stats=stats,
            kinds=file_kinds,
            revision=revision,
            limits=WalkLimits(max_file_bytes=config.max_file_bytes),
            exclude=_inside(config.output, root),
            # a checkout's files as they are on disk, but only those git tracks: not its scratch files
            only=git.tracked_files(root) if is_repo or enclosing is not None else None,
        ):
            if record.file_path in changed:
                record.revision = None
                record.meta["uncommitted"] = True
            yield record
    if is_repo and _wants(config, Kind.COMMIT):
        yield from _commits(root, source, stats, config)


def _split_manifest(split: Cut | NoCut) -> dict[str, Any]:
    if isinstance(split, NoCut):
        return {"mode": "files", "cut": None, "reason": split.reason}
    return {
        "mode": "temporal",
        "cut": {"commit": split.commit, "date": split.date},
        "end": {"commit": split.end, "date": split.end_date},
        "rule": split.rule,
        "commits_before_cut": split.commits_before,
        "commits_after_cut": split.commits_after,
        "future_files": 0,
        "future_lines": 0,
        "reason": None,
    }


def _temporal_records(
    root: Path,
    source: str,
    config: IngestConfig,
    stats: IngestStats,
    facts: dict[str, Any],
    cut: Cut,
    workdir: Path,
) -> Iterator[Record]:
    """The tree at the cut and the commits up to it (to train on), then the commits after the cut and
    the files that gained lines after it, as they stand at the end (to score on)."""
    limits = WalkLimits(max_file_bytes=config.max_file_bytes)
    exclude = _inside(config.output, root)
    file_kinds = None if config.kinds is None else config.kinds & {Kind.CODE, Kind.DOC, Kind.DIAGRAM}
    if _wants(config, Kind.CODE, Kind.DOC, Kind.DIAGRAM):
        tree = workdir / "at-cut"
        git.checkout_tree(root, cut.commit, tree)
        yield from iter_tree(
            tree,
            source=source,
            stats=stats,
            kinds=file_kinds,
            revision=cut.commit,
            limits=limits,
            exclude=exclude,
            rules_root=root,  # the project's ignore files as they are now, not as they were at the cut
        )
        shutil.rmtree(tree)
    if _wants(config, Kind.COMMIT):
        for revisions, after in (((cut.commit,), False), ((cut.end, f"^{cut.commit}"), True)):
            yield from _commits(root, source, stats, config, revisions=revisions, meta={"after_cut": after})
    if _wants(config, Kind.CODE, Kind.DOC):
        future_kinds = frozenset({Kind.CODE, Kind.DOC}) & (config.kinds or frozenset({Kind.CODE, Kind.DOC}))
        for record in _future_records(root, source, cut, future_kinds, limits, exclude, workdir):
            stats.kept[str(record.kind)] += 1
            facts["future_files"] += 1
            facts["future_lines"] += sum(last - first + 1 for first, last in record.meta["added_lines"])
            yield record


def _future_records(
    root: Path,
    source: str,
    cut: Cut,
    kinds: frozenset[Kind],
    limits: WalkLimits,
    exclude: frozenset[str],
    workdir: Path,
) -> Iterator[Record]:
    """Each code or doc file that gained lines after the cut, as it stands at the end, read with the
    walker's rules (ignore files, vendored folders, binaries, ...) and marked with the added ranges.

    Only the changed files (and the ignore files that rule on them) are checked out; the ranges are
    small numbers per changed file.
    """
    ranges = dict(git.added_lines(root, cut.commit, cut.end))
    if not ranges:
        return
    tree = workdir / "at-end"
    git.checkout_tree(root, cut.end, tree, keep=lambda path: path in ranges)
    # The end's files are walked for the eval side only: their skips are not the training tree's.
    walked = IngestStats()
    for record in iter_tree(
        tree, source=source, stats=walked, kinds=kinds, revision=cut.end, limits=limits, exclude=exclude,
        rules_root=root,
    ):  # fmt: skip
        spans = ranges.get(record.file_path or "")
        if spans is None:
            continue
        record.id = record_id(source, record.kind, f"{record.file_path}@{cut.end}")
        record.meta["added_lines"] = spans
        record.meta["cut"] = cut.commit
        yield record
    shutil.rmtree(tree)


def iter_source(
    config: IngestConfig,
    stats: IngestStats,
    manifest: dict[str, Any],
    workdir: Path,
    log: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Records of ``config.source``; fills ``manifest`` with what was resolved (commit SHA, kind)."""
    spec = config.source
    if spec.startswith(_SERVICE_PREFIXES):
        manifest["split"] = _split_manifest(NoCut("the source has no git history (issues or pages only)"))
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
    if spec.startswith(S3_SCHEMES):
        # An archive in object storage (what the upload API stores for a cluster run): fetched first.
        from repotune import storage

        manifest["source_type"] = "archive"
        uri = storage.minio_to_s3(spec)
        local = storage.fetch(uri, workdir / "download" / uri.rsplit("/", 1)[-1])
        if not archive.is_archive(local):
            raise RepotuneError(f"source {spec!r} is not an archive ({', '.join(archive.ARCHIVE_SUFFIXES)})")
        root = archive.extract(local, workdir / "archive", stats=stats)
        git.distrust(root)  # an uploaded repository's config could run programs when git reads it
        yield from _local_records(root, local.name, config, stats, manifest, workdir)
        return
    if git.is_git_url(spec):
        manifest["source_type"] = "git"
        checkout = workdir / "checkout"
        manifest["commit"] = git.clone(spec, checkout, config.ref)
        manifest["ref"] = config.ref
        yield from _local_records(checkout, _strip_auth(spec), config, stats, manifest, workdir)
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
        root = archive.extract(path, workdir / "archive", stats=stats)
        git.distrust(root)
        yield from _local_records(root, path.name, config, stats, manifest, workdir)
        return
    manifest["source_type"] = "git" if git.is_git_checkout(path) else "folder"
    enclosing = None if manifest["source_type"] == "git" else git.enclosing_repository(path)
    if enclosing is not None and not git.tracked_files(path):
        enclosing = None  # a folder git tracks nothing of (an unpacked dump) is no part of the repository
    yield from _local_records(
        path.resolve(), path.resolve().name, config, stats, manifest, workdir, enclosing=enclosing
    )


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


def run(
    config: IngestConfig,
    *,
    progress: Callable[[int, IngestStats], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> IngestResult:
    """Ingest ``config.sources`` into ``config.output``: one ``records.jsonl`` for all of them.

    Each record's ``source`` names the source it came from, and the manifest counts each source in
    ``sources``. ``jira:`` sources are read last, so that the issues a commit fixed are kept with it
    (:mod:`repotune.ingest.links`). The split is the cut of the first source with history (``--cut``
    applies to each source that has one); wiki and tracker records are held out by date against it.
    ``progress`` is called every 200 records; ``log`` receives lines a person should see (waits).
    """
    specs = config.sources
    totals = IngestStats()
    entries: list[dict[str, Any]] = [_source_entry(spec) for spec in specs]
    manifest: dict[str, Any] = {
        "source": " + ".join(entry["source"] for entry in entries),
        "source_type": None,
        "commit": None,
        "root_commit": None,
        "split": None,
        "include": sorted(config.kinds) if config.kinds is not None else None,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "repotune_version": __version__,
    }
    for spec in specs:
        _refuse_git_directory(spec)
    layout = IngestLayout(config.output)
    prepare_output(config.output, (layout.records.name, layout.manifest.name), "ingest output")
    fixes = None
    if any(spec.startswith(JIRA_PREFIX) for spec in specs):
        from repotune.ingest.links import FixIndex  # the Jira module is slow to import; only when used

        fixes = FixIndex()
    # stable: the given order, but the tracker after the history its issues are matched against
    order = sorted(range(len(specs)), key=lambda i: specs[i].startswith(JIRA_PREFIX))
    total = 0
    with tempfile.TemporaryDirectory(prefix="repotune-ingest-") as tmp, atomic_open(layout.records) as out:
        for index in order:
            spec, entry, stats = specs[index], entries[index], IngestStats()
            workdir = Path(tmp) / str(index)
            workdir.mkdir()
            count, linked_before = 0, fixes.linked if fixes is not None else 0
            for record in iter_source(config.only(spec), stats, entry, workdir, log):
                if fixes is not None:
                    fixes.see(record)
                    record = fixes.link(record)
                out.write(record.to_json())
                out.write("\n")
                count += 1
                total += 1
                if progress is not None and total % 200 == 0:
                    progress(total, _merged(totals, stats))
            entry.update(stats.as_dict())
            entry["records"] = count
            if fixes is not None and spec.startswith(JIRA_PREFIX):
                entry["linked_to_commits"] = fixes.linked - linked_before
            totals = _merged(totals, stats)
            if count == 0:
                why = _none_of_kinds(entry, config.kinds) or f"yielded no records ({_skip_summary(stats)})"
                if len(specs) == 1:
                    raise RepotuneError(f"source {spec!r} {why}")
                if log is not None:
                    log(f"warning: source {spec!r} {why}")
        if total == 0:
            raise RepotuneError(f"the sources yielded no records ({_skip_summary(totals)})")
    manifest.update(_combined(entries))
    manifest["sources"] = entries
    manifest.update(totals.as_dict())
    manifest["records"] = total
    manifest["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(layout.manifest, manifest)
    return IngestResult(
        output=layout,
        source=manifest["source"],
        source_type=manifest["source_type"],
        commit=manifest["commit"],
        records=total,
        kept=manifest["kept"],
        skipped=manifest["skipped"],
        split=manifest["split"],
        sources=tuple(entries),
    )


def _refuse_git_directory(spec: str) -> None:
    """A bare repository (or a checkout's ``.git``) given as a folder would be read as its internals."""
    if git.is_git_url(spec) or spec.startswith((*_SERVICE_PREFIXES, *S3_SCHEMES)):
        return
    path = Path(spec).expanduser()
    if path.is_dir() and git.is_git_directory(path):
        checkout = path.resolve().parent
        if path.resolve().name == ".git" and git.is_git_checkout(checkout):
            raise RepotuneError(
                f"source {spec!r} is the .git folder of the checkout {checkout} (git's internals, no files "
                f"to read): give the checkout itself, {checkout}"
            )
        raise RepotuneError(
            f"source {spec!r} is a bare git repository (git's internals, no files to read): point at a "
            f"checkout, or clone it first (git clone {spec} DIR)"
        )


def _source_entry(spec: str) -> dict[str, Any]:
    return {
        "source": _display_source(spec),
        "source_type": None,
        "commit": None,
        "root_commit": None,
        "split": None,
    }


def _merged(first: IngestStats, second: IngestStats) -> IngestStats:
    return IngestStats(kept=first.kept + second.kept, skipped=first.skipped + second.skipped)


def _combined(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's top-level ``source_type``, ``commit``, ``root_commit``, ``site`` and ``split`` from
    each source's: one source's own; for several, ``multiple``, the first commit (and its repository's
    root commit), and the first temporal split
    (else the first source with a tree's file split, which names why there is no cut)."""
    if len(entries) == 1:
        return {key: value for key, value in entries[0].items() if key not in ("records", "kept", "skipped")}
    split = next((e["split"] for e in entries if (e["split"] or {}).get("mode") == "temporal"), None)
    if split is None:
        trees = [e for e in entries if e["source_type"] not in _SERVICE_TYPES]
        split = (trees or entries)[0]["split"]
    first = next((e for e in entries if e["commit"]), {})
    return {
        "source_type": "multiple",
        "commit": first.get("commit"),
        "root_commit": first.get("root_commit"),
        "split": split,
    }


def _display_source(spec: str) -> str:
    """The source as a manifest names it: a URL without credentials, a local path made absolute."""
    if git.is_git_url(spec):
        return _strip_auth(spec)
    if spec.startswith((*_SERVICE_PREFIXES, *S3_SCHEMES)):
        return spec
    return str(Path(spec).expanduser().resolve())


def _source_key(spec: str) -> str:
    """What makes two sources the same one: ``./r`` and ``./r/`` (or ``r`` from its parent) are one
    folder, a URL with and without its trailing slash one repository."""
    if git.is_git_url(spec) or spec.startswith((*_SERVICE_PREFIXES, *S3_SCHEMES)):
        return _display_source(spec).rstrip("/")
    return _display_source(spec)


def _inside(output: Path, root: Path) -> frozenset[str]:
    """The output folder relative to the tree being walked, when it lies inside it."""
    try:
        rel = output.resolve().relative_to(root.resolve())
    except ValueError:
        return frozenset()
    return frozenset({rel.as_posix()})


def _strip_auth(url: str) -> str:
    """Drop ``user:token@`` from a URL, and mask a token in its query string (``?access_token=***``), so
    a credential never lands in a manifest or a record."""
    if "://" not in url:
        return url  # scp-like ``git@host:path``: the user name is not a secret
    return git.strip_credentials(url)


_TREE_TYPES = {"folder": "a folder", "git": "a git checkout", "archive": "an archive"}


def _none_of_kinds(entry: dict[str, Any], kinds: frozenset[Kind] | None) -> str | None:
    """Why a tree source gave nothing, when ``--include`` asked only for kinds it cannot have (issues of
    a folder): what it is and the ``--include`` values it can yield; ``None`` otherwise."""
    what = _TREE_TYPES.get(entry["source_type"] or "")
    if kinds is None or what is None:
        return None
    has = {Kind.CODE, Kind.DOC, Kind.DIAGRAM} | ({Kind.COMMIT} if entry["commit"] else set())
    if kinds & has:
        return None
    asked = " or ".join(name for name, named in INCLUDE_KINDS.items() if named & kinds)
    can = ",".join(name for name, named in INCLUDE_KINDS.items() if named & has)
    return f"has no {asked}: it is {what}, which can yield --include {can}"


def _skip_summary(stats: IngestStats) -> str:
    if not stats.skipped:
        return "the source is empty"
    top = ", ".join(f"{reason}: {count}" for reason, count in stats.skipped.most_common(5))
    return f"skipped {top}"


def _commits(
    root: Path, source: str, stats: IngestStats, config: IngestConfig, **more: Any
) -> Iterator[Record]:
    """The commit history under ``config``'s limits (``more``: revisions and meta of a temporal split)."""
    since = config.since.isoformat() if config.since else None
    yield from git.iter_commits(
        root,
        source=source,
        stats=stats,
        max_commits=config.max_commits,
        max_diff_bytes=config.max_diff_bytes,
        since=since,
        skip_path=PathRules(root).reason,  # a file the walk leaves out is left out of the diffs too
        **more,
    )
