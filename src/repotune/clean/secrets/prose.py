"""Credentials stated in prose, as issue threads, wiki pages, commit messages and comments state them:
``the admin password is hunter2x9Q``, ``use the password Tr0ub4dor&3 and user admin``, ``the secret
key is `9aF3...` ``, ``here's my token: 8f14e45f... (works locally)``.

A credential word (password, passphrase, pwd, secret key, API key, access key, token, credentials)
followed by a link (``is``, ``was``, ``is now``, ``for staging is``, ``:``, ``=``) or led by ``use``
(``use the password X``), then a value, bare or in quotes or backticks. Technical prose says far more
often what a password *is like* than what it is (``the password is required``, ``is hashed with
bcrypt``, ``is too short (8 chars)``, ``is stored in Vault``), so a value counts only where it looks
like a credential: ``checks.literal_ok`` (no stand-in, placeholder, template, path, URL, name or
number), letters with a digit or a symbol, no algorithm, encoding, type, version or size
(``SHA256``, ``base64``, ``int64``, ``32-byte``), no lower-case name (``db-creds-v2``), and a bare
value must end its clause (``hunter2x9Q, please``, not ``SHA256 hashed``). ``token`` and
``credentials`` name lexer tokens and auth plumbing as often as secrets, so their values must also be
random (``checks.is_high_entropy``).
A hex value (a git SHA in prose) counts only right after the credential word, and never where the
line speaks of a commit or a hash. Code is not prose: a bare identifier after ``:`` or ``=``
(``password = secret2``), a condition (``if token is tok2``) and a key that is part of a longer
name (``max_tokens``, ``self.password``) are left to the assignment rules.
"""

from __future__ import annotations

import re
from functools import partial

from repotune.clean.secrets.checks import (
    IDENTIFIER,
    is_high_entropy,
    literal_ok,
    random_identifier,
    secret,
)
from repotune.clean.secrets.engine import SecretRule, rule

_rule = partial(rule, fold=True)

_KEY_QUALIFIERS = ("api", "access", "auth", "signing", "encryption", "master", "license")
_TOKEN_QUALIFIERS = ("api", "access", "auth", "bearer", "refresh", "session", "bot")
# Lower case; the pattern runs over the lower-cased text (`fold`). Each alternative starts with a
# letter, so that the regex engine skips to the positions that can start one (three times faster).
_KEY = "(?P<key>{})".format(
    "|".join(
        (
            r"pass(?:word|wd|phrase|code)s?",
            "pwd",
            r"secret(?:[ _-]?key)?",
            *(rf"{q}[ _-]?secret(?:[ _-]?key)?" for q in ("client", "app", "api")),
            *(rf"{q}[ _-]?key" for q in _KEY_QUALIFIERS),
            "tokens?",
            *(rf"{q}[ _-]?tokens?" for q in (*_TOKEN_QUALIFIERS, r"personal[ _-]access")),
            "credentials?",
        )
    )
)
# Every line a match is on holds one: not `key` alone, which names dict keys everywhere in code.
_KEYWORDS = (
    "password",
    "passwd",
    "passphrase",
    "passcode",
    "pwd",
    "secret",
    "token",
    "credential",
    *(f"{q}{sep}key" for q in _KEY_QUALIFIERS for sep in ("", " ", "_", "-")),
)
# What the value belongs to: `the password for the staging DB is`, `the token on prod was`.
_ABOUT = r"(?P<about>[ \t]+(?:for|on|in|of|at)(?:[ \t]+[\w.@/:-]{1,40}){1,3}?)?"
_LINK = (
    r"(?P<link>[ \t]*[:=][ \t]*"
    r"|[ \t]+(?:(?:(?:is|was|are|were|will[ \t]+be|should[ \t]+be|has[ \t]+been|have[ \t]+been)"
    r"(?:[ \t]+(?:now|still|just))?(?:[ \t]+(?:set|changed|reset|updated)[ \t]+to)?"
    r"|(?:set|changed|reset|updated)[ \t]+to)[ \t]*:?)[ \t]+)"
)
# A value, bare or quoted, up to a space; trailing punctuation ends the sentence, not the value.
_VALUE = (
    "(?P<open>[\"'`\u201c\u2018]?)"
    "(?P<secret>[^\\s\"'`\u201c\u201d\u2018\u2019<>(){}\\[\\]]{1,256}?)"
    "(?P<close>[\"'`\u201d\u2019]?)"
    r"(?=[.,;!?)]*(?:\s|$))"
)
_USE = r"(?:use|using|with|enter|try)[ \t]+(?:(?:the|my|our|this|your|a|an)[ \t]+)?(?:[\w-]{1,20}[ \t]+)?"

_WEAK = frozenset({"token", "tokens", "credential", "credentials"})
_SYMBOLS = frozenset("!#%&*+=?^~")
# Algorithms, encodings, types, versions and sizes: what a password "is" in technical prose.
_TECHNICAL = re.compile(
    r"(?:sha|md|crc|aes|rsa|dsa|ecdsa|ed|x|hs|rs|es|ps|base|utf|ucs|pbkdf|argon|scrypt|bcrypt|oauth|http"
    r"|tls|ssl|ipv|int|uint|float|bfloat|complex|pkcs|cp|iso|latin|py|python|v)[-_]?\d+"
    r"(?:[-_.]?[a-z]+)?(?:[-_.]?\d+)?"
    r"|v?\d+(?:\.\d+)+(?:[-+.]?[a-z0-9]+)?"
    r"|\d+(?:[-+x.]\d+)?[-+_]?[a-z]{1,12}"
    r"|0x[0-9a-f]+"
)
# A name in lower case with a word in it, as Kubernetes, DNS and packages name things: `the secret is
# db-creds-v2 in the prod namespace`, `the password is 2fa-enabled`.
_SLUG = re.compile(r"(?=[a-z0-9.-]*[a-z]{3})[a-z0-9]+(?:[-.][a-z0-9]+)+")
_HEX = re.compile(r"[0-9a-f]+")
# A word before the credential's that makes it something else: `the hash of the password is ...`.
_NOT_SECRET_BEFORE = re.compile(
    r"(?:public|publishable|hash(?:ed|es)?|digest|checksum|fingerprint|md5|sha\d*|salt|length|size"
    r"|format|type|name|prefix|id)[ \t]+(?:(?:of|for)[ \t]+)?"
    r"(?:(?:the|a|an|this|that|your|my|our|each)[ \t]+)?(?:[\w-]+[ \t]+)?$"
)
# Code, not prose: `if token is tok2:`, `assert password is sentinel2`.
_CONDITION = re.compile(r"(?:^|\W)(?:if|elif|while|assert|return|unless)[ \t]+(?:[\w]+\.)*$")
_COMMIT_WORDS = re.compile(r"commit|\bsha|revision|\brev\b|hash|digest|checksum|merge|cherry|revert")
# Words that may follow a bare value where the sentence goes on about something else.
_CLAUSE_WORDS = frozenset(
    {
        *("and", "or", "but", "so", "then", "please", "for", "on", "in", "at", "to", "from", "with"),
        *("if", "until", "since", "when", "as", "by", "which", "that", "--", "-", "\u2013", "\u2014"),
    }
)


def _standalone(text: str, start: int) -> bool:
    """Is the credential word a word of its own, or an upper-case name (`DB_PASSWORD is ...`), rather
    than part of code's name (`max_tokens`, `self.password`, `publicKeyToken`)?"""
    if start == 0:
        return True
    before = text[start - 1]
    if before == "_":
        name_start = start - 1
        while name_start > 0 and (text[name_start - 1].isalnum() or text[name_start - 1] == "_"):
            name_start -= 1
        end = start
        while end < len(text) and (text[end].isalnum() or text[end] == "_"):
            end += 1
        return text[name_start:end].isupper() and (name_start == 0 or text[name_start - 1] not in ".$-")
    return not (before.isalnum() or before in ".$-/")


def _ends_clause(text: str, end: int) -> bool:
    """Does a bare value end its clause: at punctuation, at the line's end, or before a word that
    starts another one (`hunter2x9Q and user admin`, `8f14... (works locally)`)?"""
    rest = text[end : end + 60]
    stripped = rest.lstrip(".,;!?)")
    if len(stripped) != len(rest):
        return True
    if not stripped.strip(" \t") or stripped.lstrip(" \t").startswith(("\n", "\r", "(")):
        return True
    word = stripped.split(None, 1)[0].lower()
    return word in _CLAUSE_WORDS


def _credential_like(value: str) -> bool:
    """Letters with a digit or a symbol: `hunter2x9Q`, `Tr0ub4dor&3`; not `hashed`, `X-API-Key`."""
    return any(c.isalpha() for c in value) and any(c.isdigit() or c in _SYMBOLS for c in value)


def _prose_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    quoted = bool(match.group("open"))
    if quoted != bool(match.group("close")):
        return False
    key_start = match.start("key")
    if not _standalone(text, key_start):
        return False
    line_start = text.rfind("\n", 0, key_start) + 1
    before = text[max(line_start, key_start - 40) : key_start].lower()
    if _NOT_SECRET_BEFORE.search(before) or _CONDITION.search(before):
        return False
    weak = match.group("key").lower() in _WEAK
    if not literal_ok(value, weak=weak) or not _credential_like(value):
        return False
    low = value.lower()
    if _TECHNICAL.fullmatch(low) or _SLUG.fullmatch(value) or (weak and not is_high_entropy(value)):
        return False
    if _HEX.fullmatch(low):
        # A git SHA in prose: only right after the credential word, and never near a commit.
        context = text[max(line_start, key_start - 80) : match.start("secret")].lower()
        if match.groupdict().get("about") or _COMMIT_WORDS.search(context):
            return False
    if quoted:
        return True
    link = (match.groupdict().get("link") or "").strip()
    if link in (":", "=") and IDENTIFIER.fullmatch(value) and not random_identifier(value):
        return False  # `password = secret2`, `token: tok_type2`: code's names, unless random
    return _ends_clause(text, match.end())


PROSE_RULES: tuple[SecretRule, ...] = (
    # `the admin password is X`, `the password for staging is now X`, `my token: X`.
    _rule("password", _KEYWORDS, _KEY + _ABOUT + _LINK + _VALUE, check=_prose_ok),
    # `use the password X`, `log in with the admin password X`.
    _rule("password", _KEYWORDS, _USE + _KEY + r"[ \t]+" + _VALUE, check=_prose_ok),
)
