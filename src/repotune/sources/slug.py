"""A source's short name, for object-store prefixes and run names."""

from __future__ import annotations

from pathlib import Path

from repotune.sources import archive, git

GITHUB_PREFIX = "github:"
# Wiki and tracker sources: the revision is read from the service (see each module's *_revision).
SERVICE_PREFIXES = ("confluence:", "notion:", "jira:")


def is_remote(source: str) -> bool:
    """Whether ``source`` is read from elsewhere (github:, a wiki or tracker, an object store, a git URL),
    not a path on this machine."""
    elsewhere = (GITHUB_PREFIX, *SERVICE_PREFIXES, "s3://", "minio://")
    return source.startswith(elsewhere) or git.is_git_url(source)


def source_slug(source: str) -> str:
    """A short, path-safe name for a source, for object-store prefixes (``owner-repo``, ``myproject``)."""
    if source.startswith(SERVICE_PREFIXES):
        prefix, _, target = source.partition(":")
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{prefix}-{target}").strip("-.")
        return safe.lower()
    remote = source.startswith(GITHUB_PREFIX) or git.is_git_url(source)
    text = source[len(GITHUB_PREFIX) :] if source.startswith(GITHUB_PREFIX) else source
    if not remote:
        text = Path(text).expanduser().resolve().name
    text = text.rstrip("/")
    if text.endswith(".git"):
        text = text[:-4]
    parts = [p for p in text.replace(":", "/").split("/") if p]
    name = "-".join(parts[-2:]) if remote else (parts[-1] if parts else "")
    for suffix in archive.ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return safe.lower() or "source"
