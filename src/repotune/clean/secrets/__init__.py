"""Secret (and, on request, PII) redaction for training text: code, docs, commits, diffs and issues.

``redact(text)`` replaces each secret with a typed placeholder such as ``<SECRET:aws_access_key>`` and
keeps the text around it: in ``password = "hunter2!"`` only the literal goes. It returns the new text
and the count per kind.

The engine (``engine``) is apart from the rules, which are data: provider tokens with a known prefix
(``tokens``, gitleaks' families), secrets known by their context (``context``: a provider's name,
URLs, commands, Kubernetes Secrets), values assigned to a password-like name (``assignments``),
credentials stated in prose (``prose``: ``the admin password is ...``) and personal data (``pii``).
Adding a family is adding one table entry and its corpus case (``tests/secret_corpus.py``); the
engine's keyword prefilter keeps the cost of a rule near zero on text that lacks its keywords.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from repotune.clean.secrets.assignments import ASSIGNMENT_RULES
from repotune.clean.secrets.checks import FILE_PATH
from repotune.clean.secrets.context import CONTEXT_RULES
from repotune.clean.secrets.engine import Ruleset, SecretRule
from repotune.clean.secrets.joined import JOINED
from repotune.clean.secrets.pii import PII_RULES
from repotune.clean.secrets.prose import PROSE_RULES
from repotune.clean.secrets.tables import KIND as TABLE_KIND
from repotune.clean.secrets.tables import redact_tables
from repotune.clean.secrets.tokens import PRIVATE_KEY_RULES, TOKEN_RULES

__all__ = ["PII_RULES", "RULES", "SecretRule", "redact"]

# The widest and most specific first: a key block, then tokens that name themselves, then secrets
# known by their context, generic assignments and entropy, and credentials stated in prose last (an
# overlapping later match is dropped).
RULES: tuple[SecretRule, ...] = (
    PRIVATE_KEY_RULES + TOKEN_RULES + CONTEXT_RULES + ASSIGNMENT_RULES + PROSE_RULES
)

_SECRETS = Ruleset(RULES, finders=(JOINED,))
_WITH_PII = Ruleset(RULES + PII_RULES, finders=(JOINED,))


def redact(
    text: str, *, pii: bool = False, path: str | None = None, table_headers: Mapping[str, str] | None = None
) -> tuple[str, Counter[str]]:
    """Replace secrets (and with ``pii``, e-mail and IP addresses) by typed placeholders.

    ``path``: the file the text is, when it is one: in a configuration file (YAML, properties, INI,
    .env; ``checks.is_config_path``) a value under a password-like key is a literal even where, in
    code, it would read as a variable (``password: Qw7vLm2xR9tZ``); in a table (``.csv``, ``.tsv``)
    a column named like a secret holds one in every row (``tables``). A diff names its own files;
    ``table_headers`` (path -> header row, a commit's ``meta["table_headers"]``) gives the columns
    of a table's hunk that does not start at its header row. A
    token written in pieces (``"ghp_" + "..."``) is found in the pieces joined (``joined``).
    Returns the new text and the number of replacements per kind.
    """
    text, in_tables = redact_tables(text, path, f"<SECRET:{TABLE_KIND}>", table_headers)
    token = FILE_PATH.set(path)
    try:
        redacted, counts = (_WITH_PII if pii else _SECRETS).redact(text)
    finally:
        FILE_PATH.reset(token)
    if in_tables:
        counts[TABLE_KIND] += in_tables
    return redacted, counts
