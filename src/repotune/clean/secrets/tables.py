"""Secrets in a table's columns: a ``.csv`` or ``.tsv`` file (fixtures, seed data, exported user
lists) whose header names a column ``password``, ``api_key``, ``secret``... holds a secret in that
column of every row, with no key beside the value for the line-by-line rules to see.

Found by the file's path (``redact(path=...)``), or, in a commit's diff, by the path in its
``diff --git`` header: a hunk that starts at the file's first line (its header row: the diff that
adds the file, or one that rewrites its top) is read by that row, any other by the header row ingest
recorded for the commit (``meta["table_headers"]``, ``redact(table_headers=...)``). Fields are split
as CSV writes them (a quoted field may hold the delimiter and doubled quotes); a quoted field that
runs across lines is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from repotune.clean.secrets.checks import diff_header_path, literal_ok
from repotune.sources.git import is_table_path

KIND = "password"
"""The placeholder's kind, as for a value under a password-like key."""

_SECRET_COLUMN = re.compile(
    r"pass(?:word|wd|phrase)|pwd|secret|api[_ -]?key|private[_ -]?key|access[_ -]?key|token|credential",
    re.IGNORECASE,
)
# Columns named after a secret that are no secret: hashes, public keys, and a token's metadata.
_NOT_SECRET_COLUMN = re.compile(
    r"public|publishable|hash|digest|salt|sha\d*|md5|fingerprint|_(?:id|type|count|length|expires?|at)$"
    r"|(?:^|_)(?:id|type|count)_",
    re.IGNORECASE,
)
_WEAK_COLUMN = re.compile(r"token|credential", re.IGNORECASE)
_STRONG_COLUMN = re.compile(r"pass|pwd|secret|key", re.IGNORECASE)
_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")

Field = tuple[int, int]
"""A field's value as (start, end) in its line: inside the quotes of a quoted field."""


def redact_tables(
    text: str, path: str | None, placeholder: str, headers: Mapping[str, str] | None = None
) -> tuple[str, int]:
    """``text`` with each value in a secret column replaced by ``placeholder``, and how many were.
    ``path`` is the file ``text`` is (a table when it ends in ``.csv`` or ``.tsv``); otherwise only
    the tables in a diff are read, each hunk by the header row above it: its own first line, or the
    table's header row in ``headers`` (path -> row, as ingest records them for a commit)."""
    if is_table_path(path):
        spans = list(_table_values(_lines(text), prefix=0))
    elif "diff --git " in text and (".csv" in text or ".tsv" in text):
        spans = list(set(_diff_values(_lines(text), headers or {})))  # a context line is on both sides
    else:
        return text, 0
    if not spans:
        return text, 0
    parts, position = [], 0
    for start, end in sorted(spans):
        parts += [text[position:start], placeholder]
        position = end
    parts.append(text[position:])
    return "".join(parts), len(spans)


Line = tuple[int, str]
"""A line of the text and where it starts."""


def _lines(text: str) -> list[Line]:
    lines, position = [], 0
    for line in text.split("\n"):
        lines.append((position, line.removesuffix("\r")))
        position += len(line) + 1
    return lines


def _table_values(rows: list[Line], *, prefix: int) -> Iterator[Field]:
    """The (start, end) in the whole text of each secret value of the table whose lines are ``rows``,
    header first. ``prefix``: characters before each line's row (a diff's ``+``, ``-`` or space)."""
    if not rows:
        return
    header = rows[0][1][prefix:]
    delimiter = max(("\t", ",", ";"), key=header.count)
    if delimiter not in header:
        return
    names = [header[a:b].strip() for a, b in _fields(header, delimiter)]
    secret = {  # column -> whether it is a weak name (`token`: a word list's column as often)
        i: bool(_WEAK_COLUMN.search(name) and not _STRONG_COLUMN.search(name))
        for i, name in enumerate(names)
        if _SECRET_COLUMN.search(name) and not _NOT_SECRET_COLUMN.search(name)
    }
    if not secret:
        return
    for start, line in rows[1:]:
        row = line[prefix:]
        if row.count('"') % 2:
            return  # a quoted field running across lines: the columns are unknown from here on
        for i, (a, b) in enumerate(_fields(row, delimiter)):
            if i in secret and literal_ok(row[a:b], weak=secret[i], upper_key=True):
                yield start + prefix + a, start + prefix + b


def _diff_values(lines: list[Line], headers: Mapping[str, str]) -> Iterator[Field]:
    """Secret values in the hunks of a diff's tables, on either side (``-`` and context lines are the
    old file, ``+`` and context lines the new): read by the hunk's first line where it starts at the
    table's header row, else by the table's row in ``headers``."""
    table: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i][1]
        if line.startswith("diff --git "):
            path = diff_header_path(line)
            table = path if is_table_path(path) else None
        elif table is not None and (hunk := _HUNK.match(line)):
            end = i + 1
            while end < len(lines) and lines[end][1][:1] in ("+", "-", " "):
                end += 1
            for side, first in (("-", hunk.group(1)), ("+", hunk.group(2))):
                rows = [r for r in lines[i + 1 : end] if r[1][:1] in (side, " ")]
                if first == "1":
                    yield from _table_values(rows, prefix=1)
                elif first != "0" and table in headers:
                    yield from _table_values([(-1, " " + headers[table]), *rows], prefix=1)
            i = end
            continue
        i += 1


def _fields(line: str, delimiter: str) -> list[Field]:
    """The fields of one CSV row, as (start, end) of each value (inside the quotes of a quoted one)."""
    fields: list[Field] = []
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == '"':
            j = i + 1
            while (k := line.find('"', j)) >= 0 and line.startswith('""', k):
                j = k + 2
            k = n if k < 0 else k
            fields.append((i + 1, k))
            d = line.find(delimiter, k)
        else:
            d = line.find(delimiter, i)
            fields.append((i, n if d < 0 else d))
        if d < 0:
            return fields
        i = d + 1
