"""Secrets known by where they stand: a key's name, a URL's user part, a command's option, a file's shape.

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

Provider families that gitleaks knows only by a name near the value (``ALGOLIA_API_KEY = <32
characters>``) are one table, ``_NAMED``: the provider's name, then the value's exact shape.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache

from repotune.clean.secrets.checks import (
    MASK,
    TEMPLATE,
    all_of,
    bounded,
    classes,
    is_high_entropy,
    letters_and_digits,
    literal_ok,
    mixed_case,
    secret,
    stand_in,
    switches,
    words,
)
from repotune.clean.secrets.engine import Check, SecretRule


def _rule(
    kind: str,
    keywords: str | tuple[str, ...],
    pattern: str,
    *,
    check: Check | None = None,
    fold: bool = True,
    whole_text: bool = False,
    flags: int = 0,
) -> SecretRule:
    """A context rule: written in lower case and searched case-insensitively (``fold``) unless told;
    the secret is the pattern's ``secret`` group."""
    keywords = tuple(keywords.split()) if isinstance(keywords, str) else keywords
    group = "secret" if "(?P<secret>" in pattern else 0
    return SecretRule(
        kind, re.compile(pattern, flags), keywords, group=group, fold=fold, check=check, whole_text=whole_text
    )


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
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.]*")
_SNAKE_CASE = re.compile(r"_*[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def _unquoted_ok(text: str, match: re.Match[str]) -> bool:
    strong = _strength(text, match)
    value = secret(text, match)
    if strong is None or _CONSTANT.fullmatch(value) or _DTYPE.fullmatch(value):
        return False  # another constant's name, or a dtype
    start, key = _key_name(text, match)
    parameter = start > 0 and text[start - 1] in "?&;"
    if _IDENTIFIER.fullmatch(value) and not _random_identifier(value):
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


def _random_identifier(value: str) -> bool:
    """Random, not a name: `Xk3j9Lm2Qp8Rz7Wv4Ty1` switches between letters and digits far more often
    than a type name with a number in it (`Ed25519PrivateKey`, `PKCS7PrivateKeyTypes`)."""
    return switches(value) >= 4 and is_high_entropy(value)


def _yaml_value(text: str, match: re.Match[str]) -> bool:
    """`password: hunter2` in YAML, not `private_key: Ed25519PrivateKey,` in a Python signature."""
    value = secret(text, match)
    rest = text[match.end("secret") : match.end("secret") + 80].lstrip(" \t")
    return (
        match.group("sep") == ":"
        and any(c.isdigit() for c in value)
        and "." not in value
        and not value[0].isupper()
        and not rest.startswith((",", ")"))
    )


# Where a `KEY=value` line starts: a line, a diff line, `export`/`ENV`/`ARG`/`set`, or an escaped
# newline or an opening quote (a .env file inside a JSON string).
_ENV_LINE_START = re.compile(r"[+ -]?[ \t]*(?:(?:export|env|arg|set)[ \t]+)?", re.IGNORECASE)
_CALL = re.compile(r"[A-Za-z_][\w.]*[(\[]")
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
    if _CONSTANT.fullmatch(value) or _CALL.match(value):
        return False
    return literal_ok(value, weak=not strong, upper_key=True)


def _login_ok(text: str, match: re.Match[str]) -> bool:
    return literal_ok(secret(text, match), weak=False, upper_key=True)


def _url_password_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    return (
        len(value) >= 3
        and not stand_in(value)
        and value.lower() not in {"user", "username", "pass"}
        and not value.isdigit()  # `host:8080@...` is a port
    )


def _header_ok(text: str, match: re.Match[str]) -> bool:
    return not stand_in(secret(text, match)) and letters_and_digits(text, match)


def _strong_literal_ok(text: str, match: re.Match[str]) -> bool:
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


# Values that only stand for a password on a command line: `curl -u admin:password`. Shorter than
# `stand_in`'s list on purpose: `curl -u admin:pass` is a real (weak) password someone typed.
_COMMAND_STAND_INS = words("password passwd pwd secret token apikey api_key changeme xxx xxxx")


def _curl_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    user = match.group("user")
    return not (
        value.lower() in _COMMAND_STAND_INS
        or TEMPLATE.match(value)
        or TEMPLATE.match(user)
        or "$" in value
        or MASK.fullmatch(value)
    )


def _option_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    weak = "token" in match.group("option").lower()
    return not value.startswith("-") and literal_ok(value, weak=weak)


def _npmrc_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    if TEMPLATE.match(value) or "${" in value or _CALL.match(value):
        return False
    lower, upper, digit = classes(value)
    return (digit and (lower or upper)) or (lower and upper and len(value) >= 12)


def _docker_auth_ok(text: str, match: re.Match[str]) -> bool:
    """A registry `auth` is base64 of `user:password`."""
    try:
        decoded = base64.b64decode(secret(text, match), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return ":" in decoded and decoded.isprintable()


def _discord_ok(text: str, match: re.Match[str]) -> bool:
    """A Discord bot token starts with its bot's user id (a decimal snowflake) in base64."""
    head = secret(text, match).split(".", 1)[0]
    try:
        user_id = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return user_id.isdigit() and 17 <= len(user_id) <= 20


def _k8s_secret_value_ok(text: str, match: re.Match[str]) -> bool:
    """A value under `data:`/`stringData:` of a YAML document whose `kind` is `Secret`."""
    return not stand_in(secret(text, match)) and match.start() in _secret_entries(text)


@lru_cache(maxsize=1)
def _secret_entries(text: str) -> frozenset[int]:
    """Where each entry of a `data:`, `stringData:` or `binaryData:` mapping starts, in the YAML
    documents of ``text`` whose `kind` is `Secret`: one pass over the lines, once per text."""
    entries: set[int] = set()
    position = 0
    for document in re.split(r"(?<=\n)(?=---)", text):
        if _K8S_SECRET_KIND.search(document):
            section: int | None = None  # the section key's indentation while inside one
            entry: int | None = None  # its entries' indentation
            offset = position
            for line in document.splitlines(keepends=True):
                body = line.lstrip(" ")
                indent = len(line) - len(body)
                if body.strip() and not body.startswith("#"):
                    if section is not None and indent > section:
                        entry = indent if entry is None else entry
                        if indent == entry:
                            entries.add(offset)
                    else:
                        section = indent if body.rstrip() in _K8S_SECTIONS else None
                        entry = None
                offset += len(line)
        position += len(document)
    return frozenset(entries)


_K8S_SECTIONS = frozenset({"data:", "stringData:", "binaryData:"})
_K8S_SECRET_KIND = re.compile(r"^kind:[ \t]*[\"']?Secret[\"']?[ \t]*\r?$", re.MULTILINE)
_K8S_KEYWORDS = ("kind: secret", "kind: 'secret'", 'kind: "secret"')


def _named(kind: str, names: str, value: str, *, credential_word: bool = False) -> SecretRule:
    """A family known by its provider's name before the value (gitleaks' keyword-context rules).

    ``names``: lower-case, space-separated. ``value``: the value's exact shape, in lower case (the
    rule runs on the lower-cased text). ``credential_word``: the key must also say key, token,
    secret, auth or password, for values shaped like identifiers (UUIDs name apps as often as keys).
    """
    name = "(?:" + "|".join(re.escape(n) for n in names.split()) + ")"
    middle = (
        r"[\w.-]{0,20}?(?:key|token|secret|auth|pass)[\w.-]{0,20}" if credential_word else r"[\w.-]{0,20}"
    )
    pattern = (
        rf"{name}{middle}[\"'`]?\]?[ \t]*(?:=>|:=|\?=|=|:|,)[ \t]*[bru]{{0,2}}\\?[\"'`]?"
        rf"(?P<secret>{value})(?=[\"'`\s;,)\\]|$)"
    )
    check = all_of(letters_and_digits, lambda text, match: MASK.fullmatch(secret(text, match)) is None)
    return _rule(kind, names, pattern, check=check, flags=re.MULTILINE)


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# gitleaks' keyword-context families (config/gitleaks.toml, MIT), one provider per entry.
_NAMED: tuple[SecretRule, ...] = (
    _named("adafruit_key", "adafruit", r"[a-z0-9_-]{32}"),
    _named("airtable_key", "airtable", r"pat[a-z0-9]{14}\.[a-f0-9]{64}|[a-z0-9]{17}"),
    _named("algolia_key", "algolia", r"[a-z0-9]{32}"),
    _named("asana_token", "asana", r"[0-9]/[0-9]{16}:[a-z0-9]{32}|[a-z0-9]{32}"),
    _named("beamer_token", "beamer", r"b_[a-z0-9=_-]{44}"),
    _named("bitbucket_token", "bitbucket", r"[a-z0-9=_-]{64}"),
    _named("bittrex_key", "bittrex", r"[a-z0-9]{32}"),
    _named("cloudflare_key", "cloudflare", r"[a-z0-9_-]{40}|[a-f0-9]{37}"),
    _named("codecov_token", "codecov", _UUID + r"|[a-z0-9]{32}", credential_word=True),
    _named("cohere_key", "cohere co_api_key", r"[a-z0-9]{40}"),
    _named("coinbase_token", "coinbase", r"[a-z0-9_-]{64}"),
    _named("confluent_key", "confluent", r"[a-z0-9+/]{64}"),
    _named("contentful_token", "contentful", r"[a-z0-9=_-]{43}"),
    _named("datadog_key", "datadog dd_api_key dd_app_key", r"[a-z0-9]{40}|[a-f0-9]{32}"),
    _named("discord_token", "discord", r"[a-f0-9]{64}|[a-z0-9=_-]{32}"),
    _named(
        "dropbox_token", "dropbox", r"sl\.[a-z0-9=_-]{130,140}|[a-z0-9]{11}a{10}[a-z0-9=_-]{43}|[a-z0-9]{15}"
    ),
    _named("etsy_token", "etsy", r"[a-z0-9]{24}"),
    _named("facebook_token", "facebook", r"[a-f0-9]{32}"),
    _named("fastly_token", "fastly", r"[a-z0-9=_-]{32}"),
    _named("finnhub_token", "finnhub", r"[a-z0-9]{20}"),
    _named("flickr_token", "flickr", r"[a-z0-9]{32}"),
    _named("freshbooks_token", "freshbooks", r"[a-z0-9]{64}"),
    _named("gitter_token", "gitter", r"[a-z0-9_-]{40}"),
    _named("gocardless_token", "gocardless", r"live_[a-z0-9=_-]{40}"),
    _named("heroku_key", "heroku", _UUID, credential_word=True),
    _named("hubspot_key", "hubspot", _UUID, credential_word=True),
    _named("intercom_token", "intercom", r"[a-z0-9=_-]{60}"),
    _named("jfrog_key", "jfrog artifactory bintray", r"[a-z0-9]{73}|[a-z0-9]{64}"),
    _named("kraken_key", "kraken", r"[a-z0-9/=_+-]{80,90}"),
    _named("kucoin_key", "kucoin", r"[a-f0-9]{24}|" + _UUID, credential_word=True),
    _named("launchdarkly_token", "launchdarkly", r"[a-z0-9=_-]{40}"),
    _named("linear_key", "linear", r"[a-f0-9]{32}"),
    _named("mailgun_key", "mailgun", r"[a-f0-9]{32}-[a-f0-9]{8}-[a-f0-9]{8}|(?:pub)?key-[a-f0-9]{32}"),
    _named("mattermost_token", "mattermost", r"[a-z0-9]{26}"),
    _named("messagebird_key", "messagebird message_bird message-bird", r"[a-z0-9]{25}"),
    _named("netlify_token", "netlify", r"[a-z0-9=_-]{40,46}"),
    _named("nytimes_token", "nytimes", r"[a-z0-9=_-]{32}"),
    _named("okta_token", "okta", r"00[a-z0-9=_-]{40}"),
    _named("plaid_key", "plaid", r"access-(?:sandbox|development|production)-" + _UUID + r"|[a-z0-9]{30}"),
    _named("rapidapi_key", "rapidapi", r"[a-z0-9_-]{50}"),
    _named("sendbird_token", "sendbird", r"[a-f0-9]{40}"),
    _named("sentry_token", "sentry", r"[a-f0-9]{64}"),
    _named("snyk_token", "snyk", _UUID, credential_word=True),
    _named("sonar_token", "sonar", r"sq[apu]_[a-f0-9]{40}|[a-z0-9=_-]{40}"),
    _named("squarespace_token", "squarespace", _UUID, credential_word=True),
    _named("sumologic_key", "sumo", r"[a-z0-9]{64}"),
    _named("travis_token", "travis", r"[a-z0-9]{22}"),
    _named("twilio_key", "twilio", r"[0-9a-f]{32}", credential_word=True),
    _named("twitch_token", "twitch", r"[a-z0-9]{30}"),
    _named(
        "twitter_token",
        "twitter",
        r"a{22}[a-z0-9%]{80,100}|[0-9]{15,25}-[a-z0-9]{20,40}|[a-z0-9]{50}|[a-z0-9]{45}|[a-z0-9]{25}",
    ),
    _named(
        "yandex_key", "yandex", r"aqvn[a-z0-9_-]{35,38}|yc[a-z0-9_-]{38}|t1\.[a-z0-9_-]+=*\.[a-z0-9_-]{86}=*"
    ),
    _named("zendesk_token", "zendesk", r"[a-z0-9]{40}"),
)

CONTEXT_RULES: tuple[SecretRule, ...] = (
    _rule("gcp_service_account", "private_key_id", r"\"private_key_id\"\s*:\s*\"(?P<secret>[0-9a-f]{40})\""),
    # A Sentry DSN's key (and, in old DSNs, its secret) is the user part of the URL.
    _rule("sentry_dsn", "sentry dsn", r"://(?P<secret>[0-9a-f]{32}(?::[0-9a-f]{32})?)@"),
    # The password of any URL (`postgres://app:pw@db`, `https://user:tok#en@host`). "://" is in most
    # texts, and the regex engine skips to it as fast as a substring search.
    _rule(
        "password",
        "://",
        r"://[^\s:/?#@'\"`<>]{0,64}+:(?P<secret>[^\s/?@'\"`<>]{1,128}+)@",
        check=_url_password_ok,
        fold=False,
        whole_text=True,
    ),
    _rule(
        "azure_storage_key",
        "accountkey= sharedaccesskey=",
        r"(?:accountkey|sharedaccesskey)=(?P<secret>[A-Za-z0-9+/]{20,}={0,2})",
    ),
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
    *_NAMED,
    _rule(
        "discord_token",
        "discord token bot login secret auth key .run(",
        r"(?<![\w-])(?P<secret>[mno][a-z0-9_-]{23,27}\.[a-z0-9_-]{6,7}\.[a-z0-9_-]{27,38})(?![\w-])",
        check=_discord_ok,
    ),
    # .npmrc: `//registry.npmjs.org/:_authToken=...` (an npm_ token, or a legacy UUID), `_auth`, `_password`.
    _rule(
        "npm_token",
        "_authtoken _auth _password",
        r"(?:^|:)_(?:authtoken|auth|password)[ \t]*=[ \t]*(?P<secret>[^\s\"'`]{8,1024})",
        check=_npmrc_ok,
        flags=re.MULTILINE,
    ),
    # A container registry login in ~/.docker/config.json: `"auth": "<base64 of user:password>"`.
    _rule("docker_auth", '"auth"', r"\"auth\"[ \t]*:[ \t]*\"(?P<secret>[a-z0-9+/]{8,}={0,2})\""),
    # Every value of a Kubernetes Secret's `data:` (base64) and `stringData:` (plain), in YAML.
    _rule(
        "kubernetes_secret",
        _K8S_KEYWORDS,
        r"^(?P<indent>[ \t]+)[\w.-]+:[ \t]*(?P<q>[\"']?)(?P<secret>[^\s#'\"|>][^\n]*?)(?P=q)[ \t]*\r?$",
        check=_k8s_secret_value_ok,
        fold=False,
        whole_text=True,
        flags=re.MULTILINE,
    ),
    _rule(
        "kubernetes_secret",
        _K8S_KEYWORDS,
        r"^(?P<indent>[ \t]+)[\w.-]+:[ \t]*[|>][-+]?[ \t]*\r?\n"
        r"(?P<secret>(?P=indent)[ \t]+\S[^\n]*(?:\n(?P=indent)[ \t]+\S[^\n]*)*)",
        check=_k8s_secret_value_ok,
        fold=False,
        whole_text=True,
        flags=re.MULTILINE,
    ),
    # `curl -u user:password` (or `--user`), also on a continuation line of the command.
    _rule(
        "password",
        "curl",
        r"curl(?=[ \t\\])(?:[^\n\\]|\\.|\\\r?\n){0,2000}?[ \t](?:-u|--user)[ \t=]?[ \t]*(?P<q>[\"']?)"
        r"(?P<user>[^\s:\"']{1,64}):(?P<secret>[^\s\"']{1,128})(?P=q)(?=\s|$)",
        check=all_of(bounded(), _curl_ok),
        whole_text=True,
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
