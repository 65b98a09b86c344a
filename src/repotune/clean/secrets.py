"""Secret (and, on request, PII) redaction for training text: code, docs, commits, diffs and issues.

``redact(text)`` replaces each secret with a typed placeholder such as ``<SECRET:aws_access_key>`` and
keeps the text around it: in ``password = "hunter2!"`` only the literal goes, in
``postgres://app:s3cret@db/x`` only the password. It returns the new text and the count per kind.

Rules run in the order of ``RULES``: the widest and most specific first (a private key block, then
tokens with a known prefix, then connection strings, then assignments, then entropy), and a later match
that overlaps an earlier one is dropped, so a key block is one placeholder and a ``ghp_`` token in
``token = "..."`` is counted once, as ``github_token``. Placeholders already in the text are never
matched again, so running ``redact`` twice gives the same text and no new counts.

Assignments are where false positives live, so they are redacted only when the value is a literal that
could be a credential. Never redacted: env lookups and calls (``password = os.environ["X"]``,
``token = get_token()``), type annotations (``api_key: str``), template and variable references
(``"${DB_PASSWORD}"``, ``"{{ pw }}"``, ``"<token>"``, ``"%(pw)s"``), masks (``"***"``, ``"xxxxxx"``),
well-known stand-ins (``"changeme"``, ``"password"``, ``"your-api-key-here"``), single dictionary-like
words (``"Passwort"`` in a translation file), paths and file names, UUIDs (identifiers far more often
than credentials), and prose (values with spaces). ``token``, ``auth`` and ``credentials`` name lexer
tokens and the like as often as secrets, so their values must also look random (16+ characters with
letters and digits). Unquoted values (``.env``, YAML, INI, query strings) that read as an identifier are
redacted only where they cannot be code: an upper-case key (``DB_PASSWORD=hunter2``), a query or
connection-string parameter (``?api_key=...``, ``;Password=...;``), or a YAML mapping with a digit in
the value (``password: hunter2``), because ``password = hunter2`` in Python is as likely a variable.
Hex git SHAs and UUIDs in prose are never touched: only assignments are judged by entropy.

With ``pii=True`` e-mail addresses become ``<PII:email>`` and IP addresses ``<PII:ip_address>``. Kept:
addresses at reserved domains (example.com, .test, .invalid, .localhost), ``git@`` SSH users, and
``noreply@``/``no-reply@`` service senders (no person behind them); ``@users.noreply.github.com``
addresses carry a user name and are redacted. Only globally routable IPs are redacted: loopback,
private, link-local and documentation ranges (127.0.0.1, 10.0.0.0/8, 192.0.2.0/24, ...) are not
personal, nor is anything that reads as a version (``v1.2.3.4``, ``version = "1.2.3.4"``).

Speed (about 40 MB/s on one core over the standard library's sources): a token rule's regex starts
with a literal, which the regex engine skips to as fast as a substring search; assignment rules run
only on the lines that hold a keyword, found with ``str.find`` in a lower-cased copy (so their regexes
need no IGNORECASE), and share that search; and every pattern is linear (bounded or possessive
repeats, no nested ambiguity), so hostile input cannot make a regex backtrack for long.
"""

from __future__ import annotations

import ipaddress
import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import pairwise

Check = Callable[[str, re.Match[str]], bool]
"""Decides on one match: gets the original text (spans of a ``fold`` rule's match index into it too)."""


@dataclass(frozen=True)
class SecretRule:
    kind: str
    pattern: re.Pattern[str]
    group: int | str = 0
    """Which group is the secret to replace; the rest of the match is kept."""
    needles: tuple[str | re.Pattern[str], ...] = ()
    """Substrings (or patterns) looked for in the text (lower-cased for ``fold``): the pattern then runs
    only on the lines that hold one. () runs it over the whole text (multi-line patterns, and patterns
    that start with a literal, which the regex engine skips to as fast as a substring search)."""
    fold: bool = False
    """The pattern is written in lower case and searched in ``text.lower()``: case-insensitive, but fast."""
    check: Check | None = None
    """A final say on each match (boundaries, placeholders, randomness); ``None`` accepts every match."""
    tag: str = "SECRET"

    @property
    def placeholder(self) -> str:
        return f"<{self.tag}:{self.kind}>"


_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_TOKEN_CHARS = _ALNUM | {"_", "-"}
_BASE64_CHARS = _ALNUM | {"+", "/", "=", "_", "-"}
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_PLACEHOLDER = re.compile(r"<(?:SECRET|PII):[a-z0-9_]+>")


def _bounded(left: frozenset[str] = _TOKEN_CHARS, right: frozenset[str] | None = None) -> Check:
    """Token rules match only whole tokens: ``xghp_...`` or a prefix run into other text is not a token.

    Done here rather than with a leading lookbehind, which would stop the regex engine from skipping
    ahead to the pattern's literal prefix.
    """
    right = left if right is None else right

    def check(text: str, match: re.Match[str]) -> bool:
        start, end = match.span()
        return (start == 0 or text[start - 1] not in left) and (end == len(text) or text[end] not in right)

    return check


def _all(*checks: Check) -> Check:
    return lambda text, match: all(check(text, match) for check in checks)


def _secret(text: str, match: re.Match[str]) -> str:
    """The secret's text: the ``secret`` group where the pattern has one, else the whole match."""
    start, end = match.span("secret") if "secret" in match.re.groupindex else match.span()
    return text[start:end]


def _classes(value: str) -> tuple[bool, bool, bool]:
    """(has lower, has upper, has digit)."""
    return (
        any(c.islower() for c in value),
        any(c.isupper() for c in value),
        any(c.isdigit() for c in value),
    )


def _letters_and_digits(text: str, match: re.Match[str]) -> bool:
    lower, upper, digit = _classes(_secret(text, match))
    return digit and (lower or upper)


def _mixed_case(text: str, match: re.Match[str]) -> bool:
    lower, upper, _ = _classes(_secret(text, match))
    return lower and upper


def _entropy(value: str) -> float:
    """Bits per character of ``value``'s own character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _is_high_entropy(value: str) -> bool:
    """detect-secrets' thresholds (hex 3.0, base64 4.5 bits/char), scaled for short strings.

    A string of n characters has at most log2(n) bits per character, so 4.5 is out of reach below
    23 characters. Random base64 scores about log2(n) - 0.3 at n = 20 (4.0) and 4.8 at n = 40; the
    threshold log2(n) - 0.8, capped at 4.5, passes about 97% of random strings (the rest have no
    digit) while words and identifiers (`my_secret_key_value_2`, 3.6) stay out. Digits must also come
    and go: `ThisIsMyCacheKeyVersion2` scores 4.0 but switches between letters and digits once.
    """
    n = len(value)
    if n < 20 or _UUID.fullmatch(value):
        return False
    lower, upper, digit = _classes(value)
    if not (digit and (lower or upper)) or _switches(value) < 2:
        return False
    entropy = _entropy(value)
    if all(c in _HEX_CHARS for c in value):
        return entropy >= 3.0
    return all(c in _BASE64_CHARS for c in value) and entropy >= min(4.5, math.log2(n) - 0.8)


def _switches(value: str) -> int:
    """How often `value` switches between digits and other characters."""
    return sum(1 for a, b in pairwise(value) if a.isdigit() != b.isdigit())


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STAND_INS = _words(
    """
    password passwd pass pwd passphrase secret secrets token apikey api_key api-key accesskey
    access_key key private_key secret_key client_secret credential credentials auth changeme
    change_me changeit change-me example sample dummy fake test testing placeholder redacted hidden
    masked removed none null nil undefined true false notset not_set unset empty required optional
    todo fixme tbd default xxx xxxx xxxxx secret123 password1 letmein mypassword my_password
    yourpassword your_password mysecret my_secret yoursecret your_secret mytoken your_token
    """
)
_MASK = re.compile(r"[*xX.#•_-]+|(.)\1+")
# Interpolations and references: `$VAR`, `@var@`, `!vault`, `&anchor`, `%(pw)s`, `#{pw}`, `{pw}`, `<pw>`.
_TEMPLATE = re.compile(r"[$@!&%<\[]|\{\{|\{%|#\{|%\(|\{[\w.\[\]]*\}")
# One word, or words joined: `Passwort`, `password_confirmation`, `challengePassword`. Under a
# lower-case key, a field name or a translation far more often than a password.
_WORDS = re.compile(r"[A-Za-z][a-z]+|[a-z]+(?:[_-][a-z]+)+|[a-z]+(?:[A-Z][a-z]+)+")
# A constant's or an attribute's name: `DB_PASSWORD`, `settings.secret`.
_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[A-Za-z_]+(?:\.[A-Za-z_]+)+")
_PATH = re.compile(
    r"(?:/|\./|\.\./|~/|[A-Za-z]:\\|\\\\|[a-z][a-z0-9+.-]*://)"
    r"|.*\.(?:pem|key|crt|cer|der|p12|pfx|jks|keystore|pub|asc|gpg|json|ya?ml|toml|ini|cfg|conf|env|txt)$",
    re.IGNORECASE,
)


def _stand_in(value: str) -> bool:
    """True for values that stand for a secret rather than being one (see the module docstring)."""
    low = value.lower()
    return (
        not value.strip()
        or low in _STAND_INS
        or low.startswith(("your", "<", "${", "{{"))
        or low.endswith(("_here", "-here", " here"))
        or "example" in low
        or "${" in value
        or "{{" in value
        or _MASK.fullmatch(value) is not None
        or _TEMPLATE.match(value) is not None
        or _UUID.fullmatch(value) is not None
        or _PATH.match(value) is not None
    )


def _literal_ok(value: str, *, weak: bool, upper_key: bool = False) -> bool:
    """Could this literal, assigned to a password/secret/token-like name, be a real credential?

    Under an upper-case key (`DB_PASSWORD=supersecret`, `PASSWORD = "letmeinplease"`) even plain words
    are: env files and settings constants hold values, not field names or translations.
    """
    if len(value) < (16 if weak else 6) or len(value) > 1024 or any(c.isspace() for c in value):
        return False
    if _stand_in(value) or _NAME.fullmatch(value) or (not upper_key and _WORDS.fullmatch(value)):
        return False
    if value.isdigit():
        return False
    if weak:
        lower, upper, digit = _classes(value)
        return digit and (lower or upper)
    return True


# Names whose literal values are credentials. `key` alone names dict keys, hotkeys and monkeys: it
# counts only after a word that makes it a credential (`api_key`, `SECRET_KEY`, `signingKey`).
_KEYWORD = r"(?P<key>pass(?:word|wd|phrase|code)|pwd|secret|key|token|credentials?|auth)"
_KEYWORD_NEEDLES = ("pass", "pwd", "secret", "key", "token", "credential", "auth", "login(")
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
    return _literal_ok(_secret(text, match), weak=not strong, upper_key=upper_key)


_CONSTANT = re.compile(r"[A-Z_][A-Z0-9_]*")
_DTYPE = re.compile(r"u?int\d+|float\d+|complex\d+|bfloat16")
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")
_SNAKE_CASE = re.compile(r"_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def _unquoted_ok(text: str, match: re.Match[str]) -> bool:
    strong = _strength(text, match)
    value = _secret(text, match)
    if strong is None or _CONSTANT.fullmatch(value) or _DTYPE.fullmatch(value):
        return False  # another constant's name, or a dtype
    if _IDENTIFIER.fullmatch(value) and not _random_identifier(value):
        # Reads as a variable or attribute, unless the key is upper case (.env, docker-compose), a
        # query or connection-string parameter (`?api_key=`, `;Password=`), or a YAML mapping whose
        # value has a digit (a Python annotation names a type, and types have none).
        start, key = _key_name(text, match)
        parameter = start > 0 and text[start - 1] in "?&;"
        if not (key.isupper() or parameter or _yaml_value(text, match)):
            return False
        if match.group("sep") == "=" and _SNAKE_CASE.fullmatch(value):
            return False  # `PASSWORD = get_password`: a function or variable
    return _literal_ok(value, weak=not strong, upper_key=_key_name(text, match)[1].isupper())


def _random_identifier(value: str) -> bool:
    """Random, not a name: `Xk3j9Lm2Qp8Rz7Wv4Ty1` switches between letters and digits far more often
    than a type name with a number in it (`Ed25519PrivateKey`, `PKCS7PrivateKeyTypes`)."""
    return _switches(value) >= 4 and _is_high_entropy(value)


def _yaml_value(text: str, match: re.Match[str]) -> bool:
    """`password: hunter2` in YAML, not `private_key: Ed25519PrivateKey,` in a Python signature."""
    value = _secret(text, match)
    rest = text[match.end("secret") : match.end("secret") + 80].lstrip(" \t")
    return (
        match.group("sep") == ":"
        and any(c.isdigit() for c in value)
        and "." not in value
        and not value[0].isupper()
        and not rest.startswith((",", ")"))
    )


_ENV_LINE_START = re.compile(r"[+ -]?[ \t]*(?:(?:export|env|arg|set)[ \t]+)?", re.IGNORECASE)
_CALL = re.compile(r"[A-Za-z_][\w.]*[(\[]")


def _env_ok(text: str, match: re.Match[str]) -> bool:
    """`KEY=value` alone on its line with an upper-case key: a .env file, `export`, Dockerfile `ENV`."""
    strong = _strength(text, match)
    start, key = _key_name(text, match)
    line_start = text.rfind("\n", 0, start) + 1
    if strong is None or not key.isupper() or not _ENV_LINE_START.fullmatch(text, line_start, start):
        return False
    value = _secret(text, match)
    if _CONSTANT.fullmatch(value) or _CALL.match(value):
        return False
    return _literal_ok(value, weak=not strong, upper_key=True)


def _login_ok(text: str, match: re.Match[str]) -> bool:
    return _literal_ok(_secret(text, match), weak=False, upper_key=True)


def _url_password_ok(text: str, match: re.Match[str]) -> bool:
    value = _secret(text, match)
    return len(value) >= 3 and not _stand_in(value) and value.lower() not in {"user", "username", "pass"}


def _header_ok(text: str, match: re.Match[str]) -> bool:
    return not _stand_in(_secret(text, match)) and _letters_and_digits(text, match)


def _azure_assignment_ok(text: str, match: re.Match[str]) -> bool:
    return _literal_ok(_secret(text, match), weak=False)


_ENTROPY_KEY = re.compile(
    r"(?P<name>[\w.-]{0,40}(?:key|secret|token|passw|pwd|credential|auth)[\w.-]{0,40})"
    + _KEY_END
    + _SEP
    + r"[bru]{0,2}$"
)


def _entropy_ok(text: str, match: re.Match[str]) -> bool:
    value = _secret(text, match)
    if not _is_high_entropy(value):
        return False
    start = match.start()
    line_start = text.rfind("\n", max(0, start - 120), start) + 1
    key = _ENTROPY_KEY.search(text[max(line_start, start - 120) : start].lower())
    return key is not None and not _NOT_SECRET_NAME.search(key.group("name"))


def _private_key_ok(text: str, match: re.Match[str]) -> bool:
    # A PEM parser's marker strings, or docs with "..." for a body, have no key material to hide.
    body = match.group(0).split("-----")[2]
    return re.search(r"[A-Za-z0-9+/]{16}", body) is not None


def _rule(
    kind: str,
    pattern: str,
    *,
    needles: tuple[str | re.Pattern[str], ...] = (),
    group: int | str = 0,
    check: Check | None = None,
    fold: bool = False,
    flags: int = 0,
) -> SecretRule:
    return SecretRule(kind, re.compile(pattern, flags), group, needles, fold, check)


# A token rule whose pattern starts with a literal has no needles: the regex engine skips to the
# literal about as fast as a substring search, so a needle would only add a pass over the text. Rules
# share a needle where one pass can stand for several (each pass costs about as much as `str.find`).
_STRIPE = re.compile(r"k_(?:live|test)_")
_BASE64_RUN = r"[A-Za-z0-9+/=]{16,}+"
RULES: tuple[SecretRule, ...] = (
    _rule(
        "private_key",
        r"-----BEGIN[A-Z ]{0,24}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]{0,16384}?-----END[A-Z ]{0,24}PRIVATE KEY(?: BLOCK)?-----"
        # No END line (a truncated paste): take the base64 body, quoted or in `\n`-joined lines.
        rf"|(?:(?:\\[nr]|[\s\"',])*+{_BASE64_RUN})++)",
        check=_private_key_ok,
    ),
    _rule(
        "gcp_service_account",
        r"\"private_key_id\"\s*:\s*\"(?P<secret>[0-9a-f]{40})\"",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
    ),
    _rule(
        "github_token",
        r"g(?:h[pousr]_[A-Za-z0-9]{36,251}|ithub_pat_[A-Za-z0-9_]{22,242})",
        check=_bounded(),
    ),
    _rule("gitlab_token", r"gl(?:pat|dt|rt|ptt|ft|cbt|soat)-[A-Za-z0-9_-]{20,255}", check=_bounded()),
    _rule(
        "slack_webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9_/-]{20,255})",
        group="secret",
    ),
    _rule(
        "slack_token",
        r"x(?:ox[abposre]|app-\d)-[0-9A-Za-z-]{10,250}",
        check=_all(_bounded(), _letters_and_digits),
    ),
    _rule(
        "stripe_key",
        r"[sr]k_(?:live|test)_[0-9A-Za-z]{10,247}|whsec_[A-Za-z0-9]{24,128}",
        needles=(_STRIPE, "whsec_"),
        check=_bounded(),
    ),
    # OpenAI keys are `sk-` then one alphanumeric run, or `sk-proj-` and the like; Anthropic's are
    # `sk-ant-`. Kebab-case words (`sk-learn-...`) match neither.
    _rule(
        "anthropic_key",
        r"sk-ant-(?:api|admin|oat|sid)\d{2}-[A-Za-z0-9_-]{40,200}",
        needles=("sk-",),
        check=_bounded(),
    ),
    _rule(
        "openai_key",
        r"sk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,250}|[A-Za-z0-9]{32,250})",
        needles=("sk-",),
        check=_all(_bounded(), _letters_and_digits),
    ),
    _rule("huggingface_token", r"hf_[A-Za-z0-9]{34,40}", check=_all(_bounded(), _mixed_case)),
    _rule("npm_token", r"npm_[A-Za-z0-9]{36}", check=_all(_bounded(), _letters_and_digits)),
    _rule(
        "sendgrid_key",
        r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        check=_bounded(),
    ),
    _rule("gcp_api_key", r"AIza[0-9A-Za-z_-]{35}", check=_bounded()),
    _rule(
        "aws_access_key",
        r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}",
        check=_all(_bounded(_ALNUM), _letters_and_digits),
    ),
    _rule(
        "twilio_key",
        r"SK[0-9a-fA-F]{32}",
        check=_all(_bounded(_ALNUM), _letters_and_digits),
    ),
    # Entra ID (Azure AD) client secrets: 3 characters, a digit, "Q~", then 31 to 34 more. Searched
    # from the rare "Q~" and widened to the whole token by the check.
    _rule(
        "azure_client_secret",
        r"[A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34}",
        needles=("Q~",),
        check=_bounded(_TOKEN_CHARS | {"~", "."}),
    ),
    _rule(
        "jwt",
        r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        needles=("eyJ",),  # `e` is too common a letter for the regex engine's own skip-ahead
        check=_bounded(),
    ),
    _rule(
        "password",
        r"://[^\s:/?#@'\"`<>]{0,64}+:(?P<secret>[^\s/?#@'\"`<>]{1,128}+)@",
        group="secret",
        check=_url_password_ok,
    ),
    # The rest run only on lines with a keyword, found by fast substring search first.
    _rule(
        "azure_storage_key",
        r"(?:accountkey|sharedaccesskey)=(?P<secret>[A-Za-z0-9+/]{20,}={0,2})",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
    ),
    _rule(
        "aws_secret_key",
        r"(?:aws[_-]?secret(?:[_-]?access)?(?:[_-]?key)?|secret[_-]?access[_-]?key)"
        + _KEY_END
        + r"[ \t]*(?:=>|:=|=|:|[ \t])[ \t]*[\"'`]?(?P<secret>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_mixed_case,
    ),
    _rule(
        "azure_client_secret",
        r"(?:azure|arm|aad)[\w.-]{0,20}?client[_-]?secret"
        + _KEY_END
        + _SEP
        + r"[\"'`]?(?P<secret>[^\s\"'`,;]{8,256})",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_azure_assignment_ok,
    ),
    _rule(
        "twilio_key",
        r"twilio[\w.-]{0,30}?(?:token|secret)"
        + _KEY_END
        + _SEP
        + r"[\"'`]?(?P<secret>[0-9a-f]{32})(?![0-9a-z])",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
    ),
    _rule(
        "password",
        r"authorization[\"'`]?[ \t]*[:=][ \t]*[\"'`]?(?:bearer|basic|token|digest)[ \t]+"
        r"(?P<secret>[a-z0-9._~+/-]{16,}=*)",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_header_ok,
    ),
    # Basic-auth pairs and logins: `auth=("user", "pw")`, `HTTPBasicAuth("user", "pw")`,
    # `smtp.login("me@example.org", "pw")`.
    _rule(
        "password",
        r"(?:auth[ \t]*=[ \t]*\(|basicauth\(|\.login\()[ \t]*[bru]{0,2}(?P<q1>[\"'])[^\"'\n\\]{0,256}(?P=q1)"
        r"[ \t]*,[ \t]*[bru]{0,2}(?P<q>[\"'])(?P<secret>(?:\\.|(?!(?P=q))[^\n\\]){1,1024})(?P=q)",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_login_ok,
    ),
    _rule(
        "password",
        rf"<{_KEYWORD}>(?P<secret>[^<\s]{{6,256}})</",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_assignment_ok,
    ),
    _rule(
        "password",
        _KEYWORD
        + _KEY_END
        + _ANNOTATION
        + _SEP
        + r"[bru]{0,2}(?P<q>[\"'`])(?P<secret>(?:\\.|(?!(?P=q))[^\n\\]){1,1024})(?P=q)",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_assignment_ok,
    ),
    # .env, Dockerfile ENV and shell exports, diff lines included: the value runs to the end of the line.
    _rule(
        "password",
        _KEYWORD + r"\d*=(?P<secret>[^\s\"'`]\S{0,1023}+)[ \t]*\r?$",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_env_ok,
        flags=re.MULTILINE,
    ),
    # YAML, INI, connection strings (`Password=...;`), query strings (`?api_key=...&`).
    _rule(
        "password",
        _KEYWORD + _KEY_END + r"[ \t]*(?P<sep>[=:])[ \t]*(?P<secret>[^\s\"'`,;&()\[\]{}<>]{6,1024}+)"
        r"(?=[ \t]*(?:\r?$|#|//)|[,;&])",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_unquoted_ok,
        flags=re.MULTILINE,
    ),
    # Found from the string side, and the key judged on the text before the literal.
    _rule(
        "high_entropy",
        r"(?P<q>[\"'`])(?P<secret>[A-Za-z0-9+/=_-]{20,1024}+)(?P=q)",
        needles=_KEYWORD_NEEDLES,
        group="secret",
        fold=True,
        check=_entropy_ok,
    ),
)


_GENERIC_TLDS = _words(
    """
    com org net edu gov mil int io dev ai app co me info biz xyz tech cloud online site email name
    pro mobi museum aero coop jobs travel codes systems software solutions company network digital
    """
)
# Two-letter country domains that are far more often file suffixes in code and docs.
_FILE_SUFFIXES = frozenset({"py", "sh", "md", "rs", "ts", "pl", "pm", "rb", "cc", "cs", "so", "hs", "js"})
_RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
_RESERVED_TLDS = frozenset({"test", "example", "invalid", "localhost", "local"})


def _email_ok(text: str, match: re.Match[str]) -> bool:
    address = match.group(0).lower()
    local, _, domain = address.rpartition("@")
    tld = domain.rsplit(".", 1)[-1]
    if (len(tld) != 2 and tld not in _GENERIC_TLDS) or tld in _FILE_SUFFIXES:
        return False  # `x@self.weight` (matrix product), `a@b.shape`, `x@foo.py`
    if tld in _RESERVED_TLDS or domain in _RESERVED_DOMAINS or domain.endswith(_RESERVED_DOMAINS):
        return False
    if domain.startswith(("self.", "cls.")):
        return False
    return local not in {"git", "noreply", "no-reply", "donotreply", "do-not-reply"}


# Dotted numbers that are versions or section numbers (`version = "1.2.3.4"`, `section 8.2.4.44`).
_VERSION_CONTEXT = re.compile(
    r"(?:version\w*|release|revision|section|sect|rfc\s*\d+|§|==|>=|<=|~=|!=)"
    r"[\"'`#-]?[ \t]*[:=]?[ \t]*[\"'`]?$"
)


def _ip_ok(text: str, match: re.Match[str]) -> bool:
    value = match.group(0)
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return False
    inverse = ~int(address) & ((1 << address.max_prefixlen) - 1)
    if not address.is_global or address.is_multicast or inverse & (inverse + 1) == 0:
        return False  # not a host's routable address, so not personal; or a netmask
    if address.version == 6:
        # `a[1::2]` is a slice, `a:b::c` a test string: real addresses have longer groups.
        parts = [part for part in value.split(":") if part]
        return len(parts) >= 3 and max(map(len, parts)) >= 3
    if max(address.packed) < 10:
        return False  # 1.2.3.4, 8.8.8.8, 1.1.1.1: placeholders, public resolvers, versions
    start = match.start()
    return _VERSION_CONTEXT.search(text[max(0, start - 24) : start].lower()) is None


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_RULES: tuple[SecretRule, ...] = (
    SecretRule(
        "email",
        # Starts only at the beginning of a run of local-part characters, so a long run without `@`
        # is scanned once, not once per position.
        re.compile(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}+@"
            r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
            r"\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
        ),
        needles=("@",),
        check=_email_ok,
        tag="PII",
    ),
    SecretRule(
        "ip_address",
        re.compile(rf"(?<![\w.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?!\w|\.\w)"),
        # Starts with a literal ".", so lines with dotted numbers are found without trying every digit.
        needles=(re.compile(r"\.\d{1,3}\.\d"),),
        check=_ip_ok,
        tag="PII",
    ),
    SecretRule(
        "ip_address",
        re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]|\.\w)"),
        needles=("::", re.compile(r":[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")),
        check=_ip_ok,
        tag="PII",
    ),
)


_WITH_PII = RULES + PII_RULES


@cache
def _ignorecase(pattern: re.Pattern[str]) -> re.Pattern[str]:
    return re.compile(pattern.pattern, pattern.flags | re.IGNORECASE)


def _present(needle: str | re.Pattern[str], haystack: str) -> bool:
    return needle in haystack if isinstance(needle, str) else needle.search(haystack) is not None


def _lines(haystack: str, needles: tuple[str | re.Pattern[str], ...]) -> list[tuple[int, int]]:
    """The (start, end) of each run of consecutive lines that holds a needle, in order."""
    lines: dict[int, int] = {}
    size = len(haystack)
    for needle in needles:
        if isinstance(needle, str):
            # `str.find` is faster than a regex scan for a literal; after a hit the search goes on
            # from the end of its line, so a long line is scanned once.
            position = haystack.find(needle)
            while position >= 0:
                line_start = haystack.rfind("\n", 0, position) + 1
                line_end = haystack.find("\n", position)
                line_end = size if line_end < 0 else line_end
                lines[line_start] = line_end
                position = haystack.find(needle, line_end)
        else:
            line_end = -1
            for match in needle.finditer(haystack):
                position = match.start()
                if position < line_end:
                    continue
                line_start = haystack.rfind("\n", 0, position) + 1
                line_end = haystack.find("\n", position)
                line_end = size if line_end < 0 else line_end
                lines[line_start] = line_end
    blocks: list[tuple[int, int]] = []
    for start, end in sorted(lines.items()):
        if blocks and start <= blocks[-1][1] + 1:
            blocks[-1] = (blocks[-1][0], max(end, blocks[-1][1]))
        else:
            blocks.append((start, end))
    return blocks


_Blocks = dict[tuple[tuple[str | re.Pattern[str], ...], bool], list[tuple[int, int]]]


def _matches(rule: SecretRule, text: str, lower: str, blocks: _Blocks) -> Iterator[re.Match[str]]:
    haystack = lower if rule.fold else text
    if not rule.needles:
        yield from rule.pattern.finditer(haystack)
        return
    key = (rule.needles, rule.fold)
    if key not in blocks:
        blocks[key] = _lines(haystack, rule.needles)
    for start, end in blocks[key]:
        yield from rule.pattern.finditer(haystack, start, end)


def redact(text: str, *, pii: bool = False) -> tuple[str, Counter[str]]:
    """Replace secrets (and with ``pii``, e-mail and IP addresses) by typed placeholders.

    Returns the new text and the number of replacements per kind.
    """
    counts: Counter[str] = Counter()
    if not text:
        return text, counts
    lower = text.lower()
    starts: list[int] = []
    ends: list[int] = []
    found: list[tuple[int, int, SecretRule]] = []
    if "<SECRET:" in text or "<PII:" in text:
        for match in _PLACEHOLDER.finditer(text):
            starts.append(match.start())
            ends.append(match.end())
    blocks: _Blocks = {}
    # `str.lower()` can lengthen text ("İ" becomes two characters); then spans in the lower-cased copy
    # would not index the original, and fold rules search all of the original, case-insensitively.
    aligned = len(lower) == len(text)
    for rule in _WITH_PII if pii else RULES:
        if aligned or not rule.fold:
            matches = _matches(rule, text, lower, blocks)
        elif rule.needles and not any(_present(needle, lower) for needle in rule.needles):
            continue
        else:
            matches = _ignorecase(rule.pattern).finditer(text)
        for match in matches:
            start, end = match.span(rule.group)
            if start == end or _overlaps(starts, ends, start, end):
                continue
            if rule.check is not None and not rule.check(text, match):
                continue
            index = bisect_left(starts, start)
            starts.insert(index, start)
            ends.insert(index, end)
            found.append((start, end, rule))
    if not found:
        return text, counts
    found.sort(key=lambda item: item[0])
    parts: list[str] = []
    position = 0
    for start, end, rule in found:
        parts.append(text[position:start])
        parts.append(rule.placeholder)
        counts[rule.kind] += 1
        position = end
    parts.append(text[position:])
    return "".join(parts), counts


def _overlaps(starts: list[int], ends: list[int], start: int, end: int) -> bool:
    """Does [start, end) overlap any accepted span? The spans are disjoint and sorted by start."""
    index = bisect_left(starts, end)
    return index > 0 and ends[index - 1] > start
