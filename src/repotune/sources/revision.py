"""What a source is right now, as one string: the key that decides whether pipeline steps can be reused.

The pipeline resolves this first, with caching off, and feeds it to ingest: an unchanged repository
gives the same revision (so every later step is a cache hit), a new commit gives a new one.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

from repotune.errors import RepotuneError
from repotune.sources import archive, git
from repotune.sources.cut import Cut, choose
from repotune.sources.settings import ServiceSettings
from repotune.sources.slug import GITHUB_PREFIX, SERVICE_PREFIXES


def resolve_revision(source: str, ref: str | None = None, settings: ServiceSettings | None = None) -> str:
    """A commit SHA for git URLs and clean checkouts; a content fingerprint for everything else.

    - git URL: the SHA ``ref`` (default: the remote's HEAD) points at, by ``git ls-remote`` (no clone).
    - local git checkout: HEAD's SHA, plus ``-dirty-<hash>`` of the uncommitted changes if any and the
      split reads them: the file split does, the temporal split (:func:`repotune.sources.cut.choose`
      with no ``--cut``, as the pipeline cuts) reads commits only.
    - folder: a hash of every file's path, size and modification time (no file is read).
    - archive: the SHA-256 of the file; an archive in object storage (``s3://``), its ETag.
    - ``github:OWNER/REPO``: issues change without commits, so the key is the UTC date: issues are
      re-read at most once a day by a cached pipeline.
    - ``confluence:SPACE``, ``jira:PROJECT``, ``notion:[ID]``: the newest modification the service
      reports (with the page or issue count where it gives one, so a deletion counts too); one small
      request, with the credentials from the environment, as ingest reads them (``settings``: their
      sites and the Jira query).
    """
    if source.startswith(GITHUB_PREFIX):
        return f"github-{datetime.now(UTC).date().isoformat()}"
    if source.startswith(SERVICE_PREFIXES):
        settings = settings or ServiceSettings()
        prefix = source.partition(":")[0]
        sites = {"confluence": settings.confluence_url, "jira": settings.jira_url}
        url = sites.get(prefix, settings.notion_url)
        return service_revision(source, url=url, jql=settings.jira_jql if prefix == "jira" else None)
    if git.is_git_url(source):
        return _remote_sha(source, ref)
    if source.startswith(("s3://", "minio://")):
        from repotune import storage

        return "etag-" + storage.object_etag(storage.minio_to_s3(source))
    path = Path(source).expanduser()
    if not path.exists():
        raise RepotuneError(f"source {source!r} does not exist")
    if path.is_file():
        if not archive.is_archive(path):
            raise RepotuneError(f"source {source!r} is a file but not an archive")
        return "sha256-" + _file_sha256(path)
    if git.is_git_checkout(path) and git.has_commits(path):
        sha = git.head_sha(path)
        changes = _uncommitted(path)
        if changes is None or isinstance(choose(path, sha, None), Cut):
            # the temporal split (the pipeline's, wherever the history allows it) reads commits only:
            # uncommitted changes are not read, so they do not make the steps run again
            return sha
        return f"{sha}-dirty-{changes}"
    return "tree-" + _tree_fingerprint(path)


SEPARATOR = " "
"""Between the sources' revisions in a dataset's revision (no revision contains a space)."""


def resolve_revisions(
    sources: tuple[str, ...] | list[str], ref: str | None = None, settings: ServiceSettings | None = None
) -> str:
    """The revision of a dataset read from several sources: each one's :func:`resolve_revision` (``ref``
    goes to the git URL), joined by :func:`combine`; a change in any source changes it."""
    return combine(
        [resolve_revision(spec, ref if git.is_git_url(spec) else None, settings) for spec in sources]
    )


def combine(revisions: list[str]) -> str:
    """One source's revision as it is; several, in the order of their sources, space-separated."""
    for revision in revisions:
        if not revision or SEPARATOR in revision:
            raise ValueError(f"not a source revision: {revision!r}")
    return SEPARATOR.join(revisions)


def split_revision(revision: str, count: int) -> list[str]:
    """The revisions of ``count`` sources in what :func:`combine` made of them."""
    parts = revision.split(SEPARATOR) if count > 1 else [revision]
    if len(parts) != count:
        raise RepotuneError(f"revision {revision!r} names {len(parts)} sources' revisions, not {count}")
    return parts


def dataset_key(revision: str) -> str:
    """A path-safe name for a dataset's revision (object-store prefixes, the model's ``commit``):
    one source's revision as it is, several's as ``sources-`` and a digest of them."""
    if SEPARATOR not in revision:
        return revision
    return "sources-" + hashlib.sha256(revision.encode()).hexdigest()[:16]


def service_revision(
    source: str, *, url: str | None = None, jql: str | None = None, timeout_s: int = 30
) -> str:
    """The revision of a ``confluence:``, ``jira:`` or ``notion:`` source (``url``: its site or API root)."""
    prefix, _, target = source.partition(":")
    if prefix == "confluence":
        from repotune.sources.confluence import confluence_revision

        return confluence_revision(target, url, timeout_s)
    if prefix == "jira":
        from repotune.sources.jira import jira_revision

        return jira_revision(target, url, jql, timeout_s)
    from repotune.sources.notion import notion_revision

    return notion_revision(target, url, timeout_s)


def _remote_sha(url: str, ref: str | None) -> str:
    wanted = ref or "HEAD"
    if len(wanted) == 40 and all(c in "0123456789abcdef" for c in wanted.lower()):
        return wanted.lower()  # already a commit: ls-remote lists refs, not commits
    out = git._run(["ls-remote", "--", url, wanted])  # "--": the URL is never read as an option
    lines = [line.split("\t") for line in out.splitlines() if line.strip()]
    # a branch and a tag may share a name; an annotated tag's peeled commit ends in ^{}
    preferred = [sha for sha, name in lines if name.endswith("^{}")] or [sha for sha, _ in lines]
    if not preferred:
        raise RepotuneError(f"--ref {wanted!r} is not a branch or tag of {url}")
    return preferred[0]


def _uncommitted(repo: Path) -> str | None:
    """A short hash of the working tree's changes against HEAD (tracked diffs and untracked files)."""
    status = git._run(["status", "--porcelain", "--untracked-files=all"], cwd=repo)
    if not status.strip():
        return None
    digest = hashlib.sha256(status.encode())
    digest.update(git._run(["diff", "HEAD", "--binary"], cwd=repo).encode())
    for line in status.splitlines():
        if line.startswith("??"):
            name = line[3:].strip().strip('"')
            target = repo / name
            if target.is_file():
                digest.update(name.encode() + b"\0" + _file_sha256(target).encode())
    return digest.hexdigest()[:16]


def _tree_fingerprint(root: Path) -> str:
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            rel = path.relative_to(root).as_posix()
            digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
