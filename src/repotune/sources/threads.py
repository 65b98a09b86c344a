"""The Markdown layout of an issue thread, shared by the GitHub and Jira sources.

``repotune.data.transforms.issue_messages`` parses this layout back into a conversation, so every
tracker writes its threads through ``thread_markdown``::

    # TITLE

    STATUS LINE (``Issue #12 · closed · labels: bug``, ``Issue ENG-7 · Bug · Done ...``)
    Opened by @AUTHOR on YYYY-MM-DD

    BODY

    ### @AUTHOR on YYYY-MM-DD[ · NOTE]

    COMMENT BODY
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThreadComment:
    author: str
    """A handle without ``@`` and without spaces (``issue_messages`` tells turns apart by it)."""
    day: str
    """``YYYY-MM-DD``, or ``unknown date``."""
    body: str
    note: str = ""
    """Appended to the comment's heading after `` · `` (e.g. where a review comment points)."""


def thread_markdown(
    title: str, status: str, opener: str, opened_day: str, body: str, comments: Iterable[ThreadComment]
) -> str:
    parts = [f"# {title}".rstrip(), f"{status}\nOpened by @{opener} on {opened_day}"]
    if body.strip():
        parts.append(body.strip())
    for comment in comments:
        heading = f"### @{comment.author} on {comment.day}"
        if comment.note:
            heading += f" · {comment.note}"
        parts.append(f"{heading}\n\n{comment.body.strip()}".rstrip())
    return "\n\n".join(parts) + "\n"


def pseudonym(source: str, account: str | None) -> str:
    """A stable handle for a person that does not name them: ``user-`` and 8 hex digits.

    Trackers inside a company show real names; a model needs only to tell the people of one thread
    apart (who asked, who answered). The same account in the same source gets the same handle.
    """
    if not account:
        return "ghost"
    return "user-" + hashlib.sha256(f"{source}\x00{account}".encode()).hexdigest()[:8]


def day(timestamp: str | None) -> str:
    return (timestamp or "")[:10] or "unknown date"
