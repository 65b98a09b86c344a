"""Atlassian Document Format (Jira Cloud's JSON bodies) to Markdown, and Jira wiki markup to Markdown.

ADF is a tree of typed nodes (https://developer.atlassian.com/cloud/jira/platform/apis/document/structure/):
block nodes (paragraph, heading, lists, codeBlock, blockquote, panel, table, expand, rule, media)
holding inline nodes (text with marks, hardBreak, mention, emoji, date, status, inlineCard). The
renderer is a small recursive walk: no library on PyPI for this direction is widely used, and the
format is a stable, documented JSON schema. Media (images, files) have no text: they are dropped and
counted. Mentions become ``@user``: names are not kept.

Jira Data Center's wiki markup goes through ``jira2markdown``, whose ``convert`` builds its pyparsing
grammar anew on every call (about 0.6 s); here the grammar is built once, exactly as ``convert``
builds it, and reused, which brings a short comment down to about 20 ms. Text longer than
``MAX_WIKI_CHARS`` (a pasted log, say) is kept as it is: parsing grows faster than linearly with
length, and wiki markup reads as plain text well enough.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from jira2markdown.elements import MarkupElements
from pyparsing import Forward, ParserElement

PANEL_TITLES = {"info": "Info", "note": "Note", "warning": "Warning", "error": "Error", "success": "Success"}
_USER_MENTION = re.compile(r"\[~(?:accountid:)?[^\]]+\]")
MAX_WIKI_CHARS = 20_000


def wiki_to_markdown(text: str | None) -> str:
    """Jira wiki markup (Data Center, REST v2) as Markdown; ``[~user]`` mentions become ``@user``."""
    if not text:
        return ""
    text = _USER_MENTION.sub("@user", text)
    if len(text) > MAX_WIKI_CHARS:
        return text.strip()
    return _wiki_grammar().transform_string(text).strip()


@functools.cache
def _wiki_grammar() -> ParserElement:
    # jira2markdown.convert's own construction (usernames empty: mentions are replaced above).
    elements = MarkupElements()
    inline_markup, markup = Forward(), Forward()
    inline_markup <<= elements.expr(inline_markup, markup, {}, [e for e in elements if e.is_inline_element])
    markup <<= elements.expr(inline_markup, markup, {}, elements)
    return markup


def adf_to_markdown(doc: Any, skipped: Counter[str] | None = None) -> str:
    """Markdown for an ADF document (a dict with ``type: doc``); a plain string passes through.

    Each media node dropped adds one to ``skipped["attachment"]`` when given.
    """
    if doc is None:
        return ""
    if isinstance(doc, str):
        return doc.strip()
    counter = skipped if skipped is not None else Counter()
    text = _blocks(doc.get("content") or [], counter)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _blocks(nodes: list[dict[str, Any]], skipped: Counter[str]) -> str:
    rendered = [_block(node, skipped) for node in nodes]
    return "\n\n".join(part for part in rendered if part.strip())


def _block(node: dict[str, Any], skipped: Counter[str]) -> str:
    kind = node.get("type")
    attrs = node.get("attrs") or {}
    content = node.get("content") or []
    if kind == "paragraph":
        return _inline(content, skipped)
    if kind == "heading":
        level = min(max(int(attrs.get("level") or 1), 1), 6)
        return f"{'#' * level} {_inline(content, skipped)}"
    if kind in ("bulletList", "orderedList"):
        return _list(node, skipped)
    if kind == "taskList":
        items = []
        for item in content:
            mark = "[x]" if (item.get("attrs") or {}).get("state") == "DONE" else "[ ]"
            items.append(f"- {mark} {_inline(item.get('content') or [], skipped)}")
        return "\n".join(items)
    if kind == "decisionList":
        return "\n".join(f"- Decision: {_inline(item.get('content') or [], skipped)}" for item in content)
    if kind == "codeBlock":
        code = "".join(child.get("text", "") for child in content)
        return f"```{attrs.get('language') or ''}\n{code}\n```"
    if kind == "blockquote":
        return _quote(_blocks(content, skipped))
    if kind == "panel":
        title = PANEL_TITLES.get(attrs.get("panelType") or "info", "Note")
        return _quote(f"**{title}**\n\n{_blocks(content, skipped)}")
    if kind == "rule":
        return "---"
    if kind == "table":
        return _table(content, skipped)
    if kind in ("expand", "nestedExpand"):
        title = attrs.get("title")
        inner = _blocks(content, skipped)
        return f"**{title}**\n\n{inner}" if title else inner
    if kind in ("mediaSingle", "mediaGroup", "media"):
        skipped["attachment"] += max(1, sum(1 for child in content if child.get("type") == "media"))
        return ""
    if kind == "blockCard" or kind == "embedCard":
        return attrs.get("url") or ""
    if kind in ("bodiedExtension", "layoutSection", "layoutColumn"):
        return _blocks(content, skipped)
    if kind == "extension":
        return ""
    # An unknown node: keep whatever text it holds.
    return _inline(content, skipped) if content else node.get("text", "")


def _list(node: dict[str, Any], skipped: Counter[str]) -> str:
    ordered = node.get("type") == "orderedList"
    number = int((node.get("attrs") or {}).get("order") or 1)
    lines: list[str] = []
    for item in node.get("content") or []:
        marker = f"{number}. " if ordered else "- "
        number += 1
        # A nested list follows its item's text on the next line (a tight list), not after a blank one.
        parts = [(child.get("type"), _block(child, skipped)) for child in item.get("content") or []]
        body = ""
        for kind, text in parts:
            if not text.strip():
                continue
            separator = "\n" if kind in ("bulletList", "orderedList", "taskList") else "\n\n"
            body = f"{body}{separator}{text}" if body else text
        indent = " " * len(marker)
        item_lines = body.split("\n") if body else [""]
        lines.append(marker + item_lines[0])
        # Continuation lines (a nested list, a second paragraph) sit under the item's text.
        lines.extend(indent + line if line else "" for line in item_lines[1:])
    return "\n".join(lines)


def _table(rows: list[dict[str, Any]], skipped: Counter[str]) -> str:
    cells = [
        [
            _blocks(cell.get("content") or [], skipped)
            .replace("\n\n", " ")
            .replace("\n", " ")
            .replace("|", "\\|")
            for cell in row.get("content") or []
        ]
        for row in rows
    ]
    if not cells:
        return ""
    width = max(len(row) for row in cells)
    cells = [row + [""] * (width - len(row)) for row in cells]
    first = rows[0].get("content") or []
    has_header = bool(first) and all(cell.get("type") == "tableHeader" for cell in first)
    header, body = (cells[0], cells[1:]) if has_header else ([""] * width, cells)
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * width]
    lines.extend("| " + " | ".join(row) + " |" for row in body)
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.split("\n"))


def _inline(nodes: list[dict[str, Any]], skipped: Counter[str]) -> str:
    out: list[str] = []
    for node in nodes:
        kind = node.get("type")
        attrs = node.get("attrs") or {}
        if kind == "text":
            out.append(_marked(node.get("text", ""), node.get("marks") or []))
        elif kind == "hardBreak":
            out.append("\n")
        elif kind == "mention":
            out.append("@user")
        elif kind == "emoji":
            out.append(attrs.get("text") or attrs.get("shortName") or "")
        elif kind == "date":
            out.append(_date(attrs.get("timestamp")))
        elif kind == "status":
            out.append(f"[{attrs.get('text') or ''}]")
        elif kind == "inlineCard":
            out.append(attrs.get("url") or "")
        elif kind in ("media", "mediaInline"):
            skipped["attachment"] += 1
        elif kind == "placeholder":
            continue
        else:
            out.append(
                _inline(node.get("content") or [], skipped) if node.get("content") else node.get("text", "")
            )
    return "".join(out)


def _marked(text: str, marks: list[dict[str, Any]]) -> str:
    # Markdown emphasis cannot start or end with a space ("** bold**" is not bold): keep it outside.
    core = text.strip()
    if not core or not marks:
        return text
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
    text = core
    link = None
    for mark in marks:
        kind = mark.get("type")
        if kind == "code":
            text = f"`{text}`"
        elif kind == "strong":
            text = f"**{text}**"
        elif kind == "em":
            text = f"*{text}*"
        elif kind == "strike":
            text = f"~~{text}~~"
        elif kind == "link":
            link = (mark.get("attrs") or {}).get("href")
    return lead + (f"[{text}]({link})" if link else text) + trail


def _date(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(int(timestamp) / 1000, UTC).date().isoformat()
    except (TypeError, ValueError, OverflowError):
        return ""
