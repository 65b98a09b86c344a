"""The one record type that flows from ingest through clean to training.

A record is one JSON object per line in ``records.jsonl``. Field names keep the seed format
(``file_path``, ``content``) and add ``kind``, ``language``, ``source``, ``revision``, ``id`` and
``meta``. ``file_path`` is ``None`` for issues, pull requests, commits and wiki pages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from repotune.errors import RepotuneError


class Kind(StrEnum):
    CODE = "code"
    DOC = "doc"
    ISSUE = "issue"
    PULL_REQUEST = "pull_request"
    COMMIT = "commit"
    WIKI_PAGE = "wiki_page"  # a Confluence or Notion page, as Markdown
    DIAGRAM = "diagram"  # an architecture diagram's components and relations, as text


# `--include` names (plural, as users type them) and the record kinds each one selects.
INCLUDE_KINDS: dict[str, frozenset[Kind]] = {
    "code": frozenset({Kind.CODE}),
    "docs": frozenset({Kind.DOC}),
    "commits": frozenset({Kind.COMMIT}),
    "issues": frozenset({Kind.ISSUE, Kind.PULL_REQUEST}),
    "wiki": frozenset({Kind.WIKI_PAGE}),
    "diagrams": frozenset({Kind.DIAGRAM}),
}


def parse_include(text: str | None) -> frozenset[Kind] | None:
    """Parse ``--include code,docs`` into record kinds; ``None`` means every kind the source has.

    An empty value is refused: ``--include ''`` (an unset shell variable) reads as a narrowing to
    nothing, and taking it for everything would hide the mistake."""
    if text is None:
        return None
    if not text.strip():
        raise RepotuneError(
            f"--include is empty: give one or more of {', '.join(INCLUDE_KINDS)}, or leave it out for all"
        )
    kinds: set[Kind] = set()
    for name in (part.strip() for part in text.split(",")):
        if name not in INCLUDE_KINDS:
            raise RepotuneError(f"--include: unknown kind {name!r}; choose from {', '.join(INCLUDE_KINDS)}")
        kinds |= INCLUDE_KINDS[name]
    return frozenset(kinds)


def record_id(source: str, kind: Kind | str, key: str) -> str:
    """A stable id: the same source, kind and key (path, SHA, issue number or key, page id), the same id."""
    digest = hashlib.sha256(f"{source}\x00{kind}\x00{key}".encode()).hexdigest()
    return digest[:16]


@dataclass(slots=True)
class Record:
    content: str
    kind: Kind
    source: str
    id: str
    file_path: str | None = None
    language: str | None = None
    revision: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kind = Kind(self.kind)

    def to_json(self) -> str:
        data = {
            "file_path": self.file_path,
            "content": self.content,
            "kind": str(self.kind),
            "language": self.language,
            "source": self.source,
            "revision": self.revision,
            "id": self.id,
            "meta": self.meta,
        }
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """The record a JSON object holds; a missing field raises ``KeyError``, a field of the wrong
        type ``TypeError`` naming it (a number where text belongs would fail far from its line)."""
        if not isinstance(data, dict):
            raise TypeError(f"a record is a JSON object, not {_json_type(data)}")
        for name, optional in _TEXT_FIELDS:
            value = data.get(name) if optional else data[name]
            if not isinstance(value, str) and not (optional and value is None):
                raise TypeError(f"the field '{name}' is {_json_type(value)}, not a string")
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"the field 'meta' is {_json_type(meta)}, not an object")
        return cls(
            content=data["content"],
            kind=Kind(data["kind"]),
            source=data["source"],
            id=data["id"],
            file_path=data.get("file_path"),
            language=data.get("language"),
            revision=data.get("revision"),
            meta=meta or {},
        )


# The text fields of a record in the order they are checked, and whether each may be null.
_TEXT_FIELDS = (
    ("content", False),
    ("kind", False),
    ("source", False),
    ("id", False),
    ("file_path", True),
    ("language", True),
    ("revision", True),
)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value})"
    return {dict: "an object", list: "an array"}.get(type(value), type(value).__name__)


def read_records(path: Path) -> Iterator[Record]:
    """Stream records from a JSONL file, naming the line of any malformed record."""
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Record.from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                raise RepotuneError(f"{path}:{lineno}: not a repotune record ({exc})") from None


def write_records(handle, records: Iterable[Record]) -> int:
    count = 0
    for record in records:
        handle.write(record.to_json())
        handle.write("\n")
        count += 1
    return count


def utc_moment(value: object) -> datetime | None:
    """An ISO 8601 date or time (``2024-01-02``, ``...T09:00:00Z``, Atlassian's ``...T09:00:00.000+0000``)
    as an aware UTC moment, a naive one taken as UTC; ``None`` if it is not one. The one parser of the
    times records and sources carry."""
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be in UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
