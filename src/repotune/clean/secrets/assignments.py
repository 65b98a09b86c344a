"""Secrets assigned to a name that says what they are: ``password = "..."``, ``API_KEY=...``, ``<password>``.

Assignments are where false positives live, so a value is redacted only when it is a literal that
could be a credential (``checks.literal_ok``): never an env lookup or a call
(``password = os.environ["X"]``, ``token = get_token()``), a type annotation (``api_key: str``), a
template or reference (``"${DB_PASSWORD}"``, ``"{{ pw }}"``, ``"%(pw)s"``), a mask or a well-known
stand-in (``"***"``, ``"changeme"``). ``token``, ``auth`` and ``credentials`` name lexer tokens and the
like as often as secrets, so their values must also look random. Unquoted values (``.env``, YAML,
INI, query strings) that read as an identifier are redacted only where they cannot be code: an
upper-case key (``DB_PASSWORD=hunter2``), a query or connection-string parameter (``?api_key=...``,
``;Password=...;``), or a YAML mapping with a digit in the value (``password: hunter2``), because
``password = hunter2`` in Python is as likely a variable. Hex git SHAs and UUIDs in prose are never
touched: only values under a key are judged by entropy.

These rules run last, so that a token that names itself, or a provider's key known by its name,
keeps its own kind.
"""

from __future__ import annotations

import re
from functools import partial

from repotune.clean.secrets.checks import (
    CALL,
    IDENTIFIER,
    in_config_file,
    is_high_entropy,
    letters_and_digits,
    literal_ok,
    mixed_case,
    random_identifier,
    secret,
    stand_in,
    switches,
)
from repotune.clean.secrets.engine import SecretRule, rule

_rule = partial(rule, fold=True)

# Names whose literal values are credentials. `key` alone names dict keys, hotkeys and monkeys: it
# counts only after a word that makes it a credential (`api_key`, `SECRET_KEY`, `signingKey`).
_KEYWORD = r"(?P<key>pass(?:word|wd|phrase|code)|pwd|secret|key|token|credentials?|auth)"
_KEYWORDS = ("pass", "pwd", "secret", "key", "token", "credential", "auth", "login(")
_KEY_QUALIFIER = re.compile(
    r"(?:api|access|secret|private|encryption|signing|master|consumer|app|client|account)[_.-]?$"
)
# Public keys, assembly `publicKeyToken`s, Stripe publishable keys, and digests named after a key.
_NOT_SECRET_NAME = re.compile(
    r"public|publishable|sha\d*|md5|hash|digest|checksum|fingerprint", re.IGNORECASE
)
# Lexers, parsers and auth plumbing name things `token`, `auth` and `credentials` that are no secret.
_WEAK_KEYWORDS = frozenset({"token", "auth", "credential", "credentials"})
# The key may be quoted or subscripted (`"password":`, `ENV['PASSWORD'] =`) and end in digits.
_KEY_END = r"\d*[\"'`]?\]?"
# `password: str = "..."`: an annotation between the name and `=`.
_ANNOTATION = r"(?:[ \t]*:[ \t]*[a-z_][\w.\[\], |]{0,60}?(?=[ \t]*=))?"
_SEP = r"[ \t]*(?:=>|:=|==|=|:)[ \t]*"
# Where an unquoted value may end; `_unquoted_ok` says which ends suit which keys.
_VALUE_END = r"(?=[\s,;&\"'`)\\]|$)"


def _strength(text: str, match: re.Match[str]) -> bool | None:
    """True for a strong keyword, False for a weak one, None where the name is not a credential's."""
    keyword = match.group("key").lower()
    start = match.start("key")
    if keyword == "key" and not _KEY_QUALIFIER.search(text[max(0, start - 12) : start].lower()):
        return None
    if _NOT_SECRET_NAME.search(_key_name(text, match)[1]):
        return None
    return keyword not in _WEAK_KEYWORDS


def _key_name(text: str, match: re.Match[str]) -> tuple[int, str]:
    """Where the whole key name (`DB_PASSWORD`, `config.api_key`) starts, and the name."""
    start, end = match.span("key")
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_.-"):
        start -= 1
    return start, text[start:end]


def _assignment_ok(text: str, match: re.Match[str]) -> bool:
    strong = _strength(text, match)
    if strong is None:
        return False
    upper_key = _key_name(text, match)[1].isupper()
    return literal_ok(secret(text, match), weak=not strong, upper_key=upper_key)


_CONSTANT = re.compile(r"[A-Z_][A-Z0-9_]*")
_DTYPE = re.compile(r"u?int\d+|float\d+|complex\d+|bfloat16")
_SNAKE_CASE = re.compile(r"_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def _unquoted_ok(text: str, match: re.Match[str]) -> bool:
    strong = _strength(text, match)
    value = secret(text, match)
    if strong is None or _CONSTANT.fullmatch(value) or _DTYPE.fullmatch(value) or value.endswith(":"):
        return False  # another constant's name, a dtype, or a label (`:param password: string:`)
    start, key = _key_name(text, match)
    parameter = start > 0 and text[start - 1] in "?&;"
    if (
        IDENTIFIER.fullmatch(value)
        and not random_identifier(value)
        and not in_config_file(text, match.start())  # a configuration file holds literals, not code
    ):
        # Reads as a variable or attribute, unless the key is upper case (.env, docker-compose), a
        # query or connection-string parameter (`?api_key=`, `;Password=`), or a YAML mapping whose
        # value has a digit (a Python annotation names a type, and types have none).
        if not (key.isupper() or parameter or _yaml_value(text, match)):
            return False
        if match.group("sep") == "=" and _SNAKE_CASE.fullmatch(value):
            return False  # `PASSWORD = get_password`: a function or variable
    if not parameter and not _value_ends_entry(text, match.end("secret")):
        return False
    return literal_ok(value, weak=not strong, upper_key=key.isupper())


def _value_ends_entry(text: str, end: int) -> bool:
    """Does an unquoted value end its entry here: at the line's end or a comment (`password: x  # old`),
    at a separator (`Password=x;`), or at an escaped newline (a `.env` file inside a JSON string)?
    A query or connection-string parameter may also end at a space, a quote or a parenthesis, where it
    ends the URL it is part of; other values that do (`password = x if y`) are code."""
    line_end = text.find("\n", end)
    rest = text[end : min(line_end if line_end >= 0 else len(text), end + 200)]
    stripped = rest.lstrip(" \t")
    return (
        not stripped.strip()
        or stripped.startswith(("#", "//", ",", ";", "&"))
        or rest.startswith(("\\n", "\\r", "\\t"))
    )


def _yaml_value(text: str, match: re.Match[str]) -> bool:
    """`password: hunter2` in YAML, not `private_key: Ed25519PrivateKey,` in a Python signature."""
    value = secret(text, match)
    rest = text[match.end("secret") : match.end("secret") + 80].lstrip(" \t")
    return (
        match.group("sep") == ":"
        and any(c.isdigit() for c in value)
        and "." not in value
        # a type's name starts upper case and has a digit or two (`Ed25519PrivateKey`); a password
        # that does goes back and forth between letters and digits
        and (not value[0].isupper() or switches(value) >= 4)
        and not rest.startswith((",", ")"))
    )


# Where a `KEY=value` line starts: a line, a diff line, `export`/`ENV`/`ARG`/`set`, or an escaped
# newline or an opening quote (a .env file inside a JSON string).
_ENV_LINE_START = re.compile(r"[+ -]?[ \t]*(?:(?:export|env|arg|set)[ \t]+)?", re.IGNORECASE)
_DOCKERFILE_ENV = re.compile(r"[+ -]?[ \t]*(?:ENV|ARG)[ \t]+")


def _env_ok(text: str, match: re.Match[str]) -> bool:
    """`KEY=value` alone on its line with an upper-case key: a .env file, `export`, Dockerfile `ENV`."""
    strong = _strength(text, match)
    start, key = _key_name(text, match)
    line_start = max(
        text.rfind("\n", 0, start) + 1, text.rfind("\\n", 0, start) + 2, text.rfind('"', 0, start) + 1
    )
    if strong is None or not key.isupper() or not _ENV_LINE_START.fullmatch(text, line_start, start):
        return False
    if match.group("sep") != "=" and not _DOCKERFILE_ENV.fullmatch(text, line_start, start):
        return False  # `ENV KEY value` is Dockerfile syntax; elsewhere `PASSWORD mismatch` is prose
    value = secret(text, match)
    if _CONSTANT.fullmatch(value) or CALL.match(value):
        return False
    return literal_ok(value, weak=not strong, upper_key=True)


def _login_ok(text: str, match: re.Match[str]) -> bool:
    return literal_ok(secret(text, match), weak=False, upper_key=True)


def _header_ok(text: str, match: re.Match[str]) -> bool:
    return not stand_in(secret(text, match)) and letters_and_digits(text, match)


def _strong_literal_ok(text: str, match: re.Match[str]) -> bool:
    rest = text[match.end("secret") : match.end("secret") + 40].lstrip(" \t")
    if rest.startswith("=") and not rest.startswith("=="):
        return False  # `azure_client_secret: Optional[str] = None`: a type annotation, then a default
    return literal_ok(secret(text, match), weak=False)


_ENTROPY_KEY = re.compile(
    r"(?P<name>[\w.-]{0,40}(?:key|secret|token|passw|pwd|credential|auth)[\w.-]{0,40})"
    + _KEY_END
    + _SEP
    + r"[bru]{0,2}\\?$"
)


def _entropy_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    if not is_high_entropy(value):
        return False
    start = match.start()
    line_start = text.rfind("\n", max(0, start - 120), start) + 1
    key = _ENTROPY_KEY.search(text[max(line_start, start - 120) : start].lower())
    return key is not None and not _NOT_SECRET_NAME.search(key.group("name"))


def _option_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    weak = "token" in match.group("option").lower()
    return not value.startswith("-") and literal_ok(value, weak=weak)


ASSIGNMENT_RULES: tuple[SecretRule, ...] = (
    _rule(
        "aws_secret_key",
        _KEYWORDS,
        r"(?:aws[_-]?secret(?:[_-]?access)?(?:[_-]?key)?|secret[_-]?access[_-]?key)"
        + _KEY_END
        + r"[ \t]*(?:=>|:=|=|:|[ \t])[ \t]*[\"'`]?(?P<secret>[a-z0-9/+]{40})(?![a-z0-9/+=])",
        check=mixed_case,
    ),
    _rule(
        "azure_client_secret",
        _KEYWORDS,
        r"(?:azure|arm|aad)[\w.-]{0,20}?client[_-]?secret"
        + _KEY_END
        + _SEP
        + r"[\"'`]?(?P<secret>[^\s\"'`,;]{8,256})",
        check=_strong_literal_ok,
    ),
    # Command-line options: `--password S3cr3t`, `--token=...` (a `$VAR` or `<PASSWORD>` is no value).
    _rule(
        "password",
        "--pass --secret --token --api-key --apikey --auth-token --access-token",
        r"--(?P<option>password|passwd|pass|secret|token|api-key|apikey|auth-token|access-token)(?:=|[ \t]+)"
        r"(?P<secret>[^\s\"'`$<>{}\[\]()\\,;|]{6,256})(?=\s|$|[\"'`;|\\])",
        check=_option_ok,
        flags=re.MULTILINE,
    ),
    _rule(
        "password",
        _KEYWORDS,
        r"authorization[\"'`]?[ \t]*[:=][ \t]*[\"'`]?(?:bearer|basic|token|digest)[ \t]+"
        r"(?P<secret>[a-z0-9._~+/-]{16,}=*)",
        check=_header_ok,
    ),
    # Basic-auth pairs and logins: `auth=("user", "pw")`, `HTTPBasicAuth("user", "pw")`,
    # `smtp.login("me@example.org", "pw")`.
    _rule(
        "password",
        _KEYWORDS,
        r"(?:auth[ \t]*=[ \t]*\(|basicauth\(|\.login\()[ \t]*[bru]{0,2}(?P<q1>[\"'])[^\"'\n\\]{0,256}(?P=q1)"
        r"[ \t]*,[ \t]*[bru]{0,2}(?P<q>[\"'])(?P<secret>(?:\\.|(?!(?P=q))[^\n\\]){1,1024})(?P=q)",
        check=_login_ok,
    ),
    _rule("password", _KEYWORDS, rf"<{_KEYWORD}>(?P<secret>[^<\s]{{6,256}})</", check=_assignment_ok),
    _rule(
        "password",
        _KEYWORDS,
        _KEYWORD
        + _KEY_END
        + _ANNOTATION
        + _SEP
        + r"[bru]{0,2}(?P<q>[\"'`])(?P<secret>(?:\\.|(?!(?P=q))[^\n\\]){1,1024})(?P=q)",
        check=_assignment_ok,
    ),
    # The same inside a JSON string (a notebook's source lines): `password = \"...\"`.
    _rule(
        "password",
        _KEYWORDS,
        _KEYWORD + r"\d*(?:\\[\"'])?\]?" + _SEP + r"\\(?P<q>[\"'])(?P<secret>[^\"'\\\n]{1,1024})\\(?P=q)",
        check=_assignment_ok,
    ),
    # .env, Dockerfile ENV and shell exports, diff lines included: the value runs to the end of the
    # line (or to an escaped newline, for a .env file held in a JSON string).
    _rule(
        "password",
        _KEYWORDS,
        _KEYWORD + r"\d*(?P<sep>=|[ \t]+(?=[^\s=]+\r?$))"
        # Runs of non-space characters, joined by a backslash that starts no escaped newline.
        r"(?P<secret>[^\s\"'`\\][^\s\\]{0,1023}+(?:\\(?![nr])[^\s\\]{0,1023}+){0,8}+)"
        r"[ \t]*(?:\r?$|(?=\\[nr]))",
        check=_env_ok,
        flags=re.MULTILINE,
    ),
    # YAML, INI, connection strings (`Password=...;`), query strings (`?api_key=...&`).
    _rule(
        "password",
        _KEYWORDS,
        _KEYWORD
        + _KEY_END
        + r"[ \t]*(?P<sep>[=:])[ \t]*(?P<secret>[^\s\"'`,;&()\[\]{}<>\\]{6,1024}+)"
        + _VALUE_END,
        check=_unquoted_ok,
        flags=re.MULTILINE,
    ),
    # Found from the string side, and the key judged on the text before the literal.
    _rule(
        "high_entropy",
        _KEYWORDS,
        r"(?P<q>[\"'`])(?P<secret>[a-z0-9+/=_-]{20,1024}+)\\?(?P=q)",
        check=_entropy_ok,
    ),
)
