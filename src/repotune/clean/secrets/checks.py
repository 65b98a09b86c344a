"""Judgments that rules share: whole tokens, randomness, and values that only stand for a secret."""

from __future__ import annotations

import math
import re
from collections import Counter
from contextvars import ContextVar
from itertools import pairwise
from pathlib import PurePosixPath

from repotune.clean.secrets.engine import Check
from repotune.sources.git import diff_header_path

ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
TOKEN_CHARS = ALNUM | {"_", "-"}
_BASE64_CHARS = ALNUM | {"+", "/", "=", "_", "-"}
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def bounded(left: frozenset[str] = TOKEN_CHARS, right: frozenset[str] | None = None) -> Check:
    """Token rules match only whole tokens: ``xghp_...`` or a prefix run into other text is not a token.

    Done here rather than with a leading lookbehind, which would stop the regex engine from skipping
    ahead to the pattern's literal prefix.
    """
    right = left if right is None else right

    def check(text: str, match: re.Match[str]) -> bool:
        start, end = match.span()
        return (start == 0 or text[start - 1] not in left) and (end == len(text) or text[end] not in right)

    return check


def all_of(*checks: Check) -> Check:
    return lambda text, match: all(check(text, match) for check in checks)


def secret(text: str, match: re.Match[str]) -> str:
    """The secret's text: the ``secret`` group where the pattern has one, else the whole match."""
    start, end = match.span("secret") if "secret" in match.re.groupindex else match.span()
    return text[start:end]


def classes(value: str) -> tuple[bool, bool, bool]:
    """(has lower, has upper, has digit)."""
    return (
        any(c.islower() for c in value),
        any(c.isupper() for c in value),
        any(c.isdigit() for c in value),
    )


def letters_and_digits(text: str, match: re.Match[str]) -> bool:
    lower, upper, digit = classes(secret(text, match))
    return digit and (lower or upper)


def mixed_case(text: str, match: re.Match[str]) -> bool:
    lower, upper, _ = classes(secret(text, match))
    return lower and upper


def _entropy(value: str) -> float:
    """Bits per character of ``value``'s own character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def is_high_entropy(value: str) -> bool:
    """detect-secrets' thresholds (hex 3.0, base64 4.5 bits/char), scaled for short strings.

    A string of n characters has at most log2(n) bits per character, so 4.5 is out of reach below
    23 characters. Random base64 scores about log2(n) - 0.3 at n = 20 (4.0) and 4.8 at n = 40; the
    threshold log2(n) - 0.8, capped at 4.5, passes about 97% of random strings (the rest have no
    digit) while words and identifiers (`my_secret_key_value_2`, 3.6) stay out. Digits must also come
    and go: `ThisIsMyCacheKeyVersion2` scores 4.0 but switches between letters and digits once.
    """
    n = len(value)
    if n < 20 or UUID.fullmatch(value):
        return False
    lower, upper, digit = classes(value)
    if not (digit and (lower or upper)) or switches(value) < 2:
        return False
    entropy = _entropy(value)
    if all(c in _HEX_CHARS for c in value):
        return entropy >= 3.0
    return all(c in _BASE64_CHARS for c in value) and entropy >= min(4.5, math.log2(n) - 0.8)


def switches(value: str) -> int:
    """How often `value` switches between digits and other characters."""
    return sum(1 for a, b in pairwise(value) if a.isdigit() != b.isdigit())


# A name as code writes one: `secret2`, `config.token`, `tok_type2`.
IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")


def random_identifier(value: str) -> bool:
    """Random, not a name: `Xk3j9Lm2Qp8Rz7Wv4Ty1` switches between letters and digits far more often
    than a type name with a number in it (`Ed25519PrivateKey`, `PKCS7PrivateKeyTypes`)."""
    return switches(value) >= 4 and is_high_entropy(value)


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STAND_INS = words(
    """
    password passwd pass pwd passphrase secret secrets token apikey api_key api-key accesskey
    access_key key private_key secret_key client_secret credential credentials auth changeme
    change_me changeit change-me example sample dummy fake test testing placeholder redacted hidden
    masked removed none null nil undefined true false notset not_set unset empty required optional
    todo fixme tbd default xxx xxxx xxxxx secret123 password1 letmein mypassword my_password
    yourpassword your_password mysecret my_secret yoursecret your_secret mytoken your_token
    string str text
    """
)
MASK = re.compile(r"[*xX.#•_-]+|(.)\1+")
# Interpolations and references: `$VAR`, `@var@`, `!vault`, `&anchor`, `%(pw)s`, `#{pw}`, `{pw}`, `<pw>`.
TEMPLATE = re.compile(r"[$@!&%<\[]|\{\{|\{%|#\{|%\(|\{[\w.\[\]]*\}")
# A call or a subscript: `get_password()`, `secrets["db"]`.
CALL = re.compile(r"[A-Za-z_][\w.]*[(\[]")
_PATH = re.compile(
    r"(?:/|\./|\.\./|~/|[A-Za-z]:\\|\\\\|[a-z][a-z0-9+.-]*://)"
    r"|.*\.(?:pem|key|crt|cer|der|p12|pfx|jks|keystore|pub|asc|gpg|json|ya?ml|toml|ini|cfg|conf|env|txt)$",
    re.IGNORECASE,
)


def stand_in(value: str) -> bool:
    """True for values that stand for a secret rather than being one: placeholders, templates and
    variable references, masks, well-known stand-ins (``changeme``), UUIDs (identifiers far more
    often than credentials), paths and file names."""
    low = value.lower()
    return (
        not value.strip()
        or low in _STAND_INS
        or low.startswith(("your", "<", "${", "{{"))
        or low.endswith(("_here", "-here", " here"))
        or "example" in low
        or "${" in value
        or "{{" in value
        or MASK.fullmatch(value) is not None
        or TEMPLATE.match(value) is not None
        or UUID.fullmatch(value) is not None
        or _PATH.match(value) is not None
    )


# One word, or words joined: `Passwort`, `password_confirmation`, `challengePassword`. Under a
# lower-case key, a field name or a translation far more often than a password.
_WORDS = re.compile(r"[A-Za-z][a-z]+|[a-z]+(?:[_-][a-z]+)+|[a-z]+(?:[A-Z][a-z]+)+")
# A constant's or an attribute's name: `DB_PASSWORD`, `settings.secret`.
_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Za-z_]+(?:\.[A-Za-z_]+)+")


def literal_ok(value: str, *, weak: bool, upper_key: bool = False) -> bool:
    """Could this literal, assigned to a password/secret/token-like name, be a real credential?

    Never: stand-ins (see ``stand_in``), single dictionary-like words under a lower-case key
    (``"Passwort"`` in a translation file), names of constants and attributes, numbers, and prose
    (values with spaces). Under an upper-case key (`DB_PASSWORD=supersecret`) even plain words are:
    env files and settings constants hold values, not field names or translations. ``weak`` keys
    (``token``, ``auth``: lexer tokens as often as secrets) need 16+ characters with letters and digits.
    """
    if len(value) < (16 if weak else 6) or len(value) > 1024 or any(c.isspace() for c in value):
        return False
    if stand_in(value) or _NAME.fullmatch(value) or (not upper_key and _WORDS.fullmatch(value)):
        return False
    if value.isdigit():
        return False
    if weak:
        lower, upper, digit = classes(value)
        return digit and (lower or upper)
    return True


FILE_PATH: ContextVar[str | None] = ContextVar("repotune_redacted_path", default=None)
"""The path of the file whose text is being redacted, when the caller knows it (``redact(path=...)``)."""

_CONFIG_SUFFIXES = words(
    ".yml .yaml .properties .ini .cfg .conf .cnf .toml .env .tfvars .netrc .pypirc .npmrc"
)
_CONFIG_NAMES = words(
    "credentials .git-credentials .netrc .pypirc .pgpass .npmrc .htpasswd gradle.properties"
)


def is_config_path(path: str) -> bool:
    """A configuration file, whose values are literals rather than code: YAML, properties, INI, TOML,
    .env files, credential files (``.netrc``, ``.pypirc``, ``~/.aws/credentials``)."""
    name = PurePosixPath(path).name.lower()
    return name in _CONFIG_NAMES or name.startswith(".env") or PurePosixPath(name).suffix in _CONFIG_SUFFIXES


def in_config_file(text: str, position: int) -> bool:
    """Whether ``position`` of ``text`` lies in a configuration file: in a diff, the file of the
    nearest ``diff --git`` header before it; otherwise the file being redacted (``FILE_PATH``)."""
    header = text.rfind("diff --git ", 0, position)
    while header > 0 and text[header - 1] != "\n":
        header = text.rfind("diff --git ", 0, header)
    if header >= 0:
        end = text.find("\n", header)
        path = diff_header_path(text[header : end if end >= 0 else len(text)])
        return path is not None and is_config_path(path)
    path = FILE_PATH.get()
    return path is not None and is_config_path(path)
