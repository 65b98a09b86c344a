"""A resolved Jira issue kept together with the commits that fixed it.

A commit whose message names a Jira key (``ENG-42: retry on 503``) is a fix of that issue once the
issue is resolved: the bug report and the change that closed it are the pair worth learning from. An
ingest of a repository and a Jira project together reads the history first (:mod:`repotune.ingest.stage`
puts ``jira:`` sources last), notes each commit that names a key here, and then, for each resolved
issue it names:

- appends the fixing commit's message and the files it changed to the issue's thread, as a last
  comment by ``@commit``: the conversation example then ends with the fix, as the answer (the
  assistant's turn, :func:`repotune.data.transforms.issue_messages`); the diff itself stays in the
  commit's own record, so no text is repeated at length;
- records the link in meta: the issue's ``fixed_by`` (commit SHAs), the commit's ``issue_keys``;
- keeps the pair on one side of the split. In a temporal split an issue fixed by a commit after the
  cut is held out with it (``after_cut``, the verdict ingest gives commits); in the file split the
  issue is dated by its newest fix (``date``, which orders dated records before ``created_at``), so it
  is held out whenever that fix is. Either way no training example carries a held-out commit's text.

Only the commits are remembered (their message, up to :data:`MAX_MESSAGE_CHARS`, and file names),
and only those that name a key: memory stays small however long the history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repotune.records import Kind, Record
from repotune.sources.jira import issue_keys
from repotune.sources.threads import day

MAX_MESSAGE_CHARS = 2000
"""A fixing commit's message is cut after this many characters in the issue's thread."""
MAX_FILES = 20
"""Changed files named in the issue's thread, at most (the rest are counted)."""
COMMIT_AUTHOR = "commit"
"""The handle of the comment that carries a fix: not the issue's opener, so the fix is the answer."""


@dataclass(frozen=True)
class Fix:
    """What the issue's thread and split need of one fixing commit."""

    sha: str
    date: str | None
    """The commit's author date (ISO 8601)."""
    message: str
    files: tuple[str, ...]
    after_cut: bool | None
    """Ingest's verdict in a temporal split (held out when true); ``None`` without a cut."""


@dataclass
class FixIndex:
    """Commits that name Jira keys, by key, as the history streams past (:meth:`see`), attached to
    the resolved issues they name (:meth:`link`)."""

    by_key: dict[str, list[Fix]] = field(default_factory=dict)
    linked: int = 0
    """Issues that got at least one fix."""

    def see(self, record: Record) -> None:
        """Note a commit record whose message names issue keys (and mark the commit with them)."""
        if record.kind != Kind.COMMIT:
            return
        message = commit_message(record.content)
        keys = issue_keys(message)
        if not keys:
            return
        record.meta["issue_keys"] = keys
        after = record.meta.get("after_cut")
        fix = Fix(
            sha=str(record.meta.get("sha") or record.revision or ""),
            date=record.meta.get("date"),
            message=message[:MAX_MESSAGE_CHARS],
            files=tuple(record.meta.get("files") or ()),
            after_cut=None if after is None else bool(after),
        )
        for key in keys:
            self.by_key.setdefault(key, []).append(fix)

    def link(self, record: Record) -> Record:
        """A resolved Jira issue with its fixes attached (see the module docstring); any other record
        as it is."""
        if record.kind != Kind.ISSUE or not record.source.startswith("jira:") or not is_resolved(record):
            return record
        fixes = self.by_key.get(str(record.meta.get("key") or ""))
        if not fixes:
            return record
        fixes = sorted(fixes, key=lambda fix: fix.date or "")
        record.content = record.content.rstrip("\n") + "".join(_comment(fix) for fix in fixes) + "\n"
        record.meta["fixed_by"] = [fix.sha for fix in fixes]
        verdicts = [fix.after_cut for fix in fixes if fix.after_cut is not None]
        if verdicts:
            record.meta["after_cut"] = any(verdicts)
        else:
            newest = max((fix.date for fix in fixes if fix.date), default=None)
            if newest is not None and newest > str(record.meta.get("created_at") or ""):
                record.meta["date"] = newest
        self.linked += 1
        return record


def is_resolved(record: Record) -> bool:
    """A Jira issue with a resolution, or in a status of the ``done`` category."""
    return bool(record.meta.get("resolution")) or record.meta.get("status_category") == "done"


def commit_message(content: str) -> str:
    """A commit record's message: its content up to the first ``diff --git`` line."""
    if content.startswith("diff --git "):
        return ""
    return content.split("\ndiff --git ", 1)[0].strip()


def _comment(fix: Fix) -> str:
    files = ", ".join(fix.files[:MAX_FILES])
    if len(fix.files) > MAX_FILES:
        files += f" and {len(fix.files) - MAX_FILES} more"
    changed = f"\n\nFiles changed: {files}" if files else ""
    heading = f"### @{COMMIT_AUTHOR} on {day(fix.date)}"
    return f"\n\n{heading}\n\nFixed in commit {fix.sha[:12]}:\n\n{fix.message}{changed}"
