"""The settings of the wiki and tracker sources, in one place for the run, the pipeline and the API.

``repotune ingest`` takes them as flat fields of :class:`repotune.ingest.IngestConfig`; ``repotune run``
and the pipeline carry them together, as the ``source_settings`` parameter (a dict of these names).
No credential is among them: those come from the environment (the Kubernetes Secrets on a cluster).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from repotune.errors import RepotuneError


@dataclass(frozen=True)
class ServiceSettings:
    confluence_url: str | None = None
    """Confluence site for confluence: sources (Cloud: https://SITE.atlassian.net/wiki); unset, it is read
    from CONFLUENCE_URL (on a cluster: the Secret repotune-confluence)."""
    confluence_comments: bool = False
    """Append each Confluence page's comments to its record."""
    jira_url: str | None = None
    """Jira site for jira: sources (Cloud: https://SITE.atlassian.net); unset, it is read from JIRA_URL (on a
    cluster: the Secret repotune-jira)."""
    jira_jql: str | None = None
    """A JQL query that replaces ``project = KEY`` for the jira: source (then jira: may name no project)."""
    notion_url: str | None = None
    """Notion API root for notion: sources; unset, https://api.notion.com."""

    def __post_init__(self) -> None:
        for name in ("confluence_url", "jira_url", "notion_url"):
            value = getattr(self, name)
            if value is not None and not value.startswith(("https://", "http://")):
                raise RepotuneError(f"--{name.replace('_', '-')} {value!r}: expected an http(s):// URL")
            if value is not None and "@" in value.split("://", 1)[1].split("/", 1)[0]:
                # a URL is logged and kept in the run's parameters: credentials go in the environment
                raise RepotuneError(
                    f"--{name.replace('_', '-')}: the URL carries credentials; give them in the environment"
                )

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> ServiceSettings:
        """From the pipeline's ``source_settings`` (``""`` and null are unset); an unknown name fails."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise RepotuneError(
                f"source_settings: unknown setting {unknown[0]!r}; choose from {', '.join(sorted(names))}"
            )
        given = {name: value for name, value in values.items() if value not in ("", None)}
        if "confluence_comments" in given:
            given["confluence_comments"] = bool(given["confluence_comments"])
        return cls(**given)

    def parameters(self) -> dict[str, Any]:
        """The settings that differ from the defaults, as the pipeline's ``source_settings``."""
        defaults = ServiceSettings()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }

    def ingest_settings(self) -> dict[str, Any]:
        """The same, as :class:`repotune.ingest.IngestConfig` fields."""
        return dataclasses.asdict(self)

    def environment(self) -> dict[str, str]:
        """The sites as the variables the sources read when a setting is unset (``CONFLUENCE_URL``,
        ``JIRA_URL``): what a credentials check of the environment should count as given."""
        found = {"CONFLUENCE_URL": self.confluence_url, "JIRA_URL": self.jira_url}
        return {name: value for name, value in found.items() if value}


def sources_of(source: str, more_sources: list[Any] | tuple[Any, ...]) -> tuple[str, ...]:
    """The pipeline's ``source`` and ``more_sources`` as one tuple (empty entries, which the KFP UI's
    list editor leaves, dropped)."""
    rest = [str(spec).strip() for spec in more_sources if str(spec).strip()]
    return (source, *rest)
