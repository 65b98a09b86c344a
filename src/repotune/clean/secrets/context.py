"""Secrets known by where they stand, not by their own shape: a provider's name before the value,
a URL's user part, a command's option, a file's format (``.npmrc``, a registry's ``config.json``,
a Kubernetes Secret).

Provider families that gitleaks knows only by a name near the value (``ALGOLIA_API_KEY = <32
characters>``) are one table, ``_NAMED``: the provider's name, then the value's exact shape.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache, partial

from repotune.clean.secrets.checks import (
    CALL,
    MASK,
    TEMPLATE,
    all_of,
    bounded,
    classes,
    letters_and_digits,
    secret,
    stand_in,
    words,
)
from repotune.clean.secrets.engine import SecretRule, rule

_rule = partial(rule, fold=True)


def _url_password_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    return (
        len(value) >= 3
        and not stand_in(value)
        and value.lower() not in {"user", "username", "pass"}
        and not value.isdigit()  # `host:8080@...` is a port
    )


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


def _npmrc_ok(text: str, match: re.Match[str]) -> bool:
    value = secret(text, match)
    if TEMPLATE.match(value) or "${" in value or CALL.match(value):
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
    """A value under `data:`/`stringData:` of a YAML document whose `kind` is `Secret`, unless it
    stands for one (`REPLACE_ME`, `<token>`, `{{ .Values.password }}`) or is a URL."""
    value = secret(text, match)
    if stand_in(value) or _PLACEHOLDER_NAME.fullmatch(value):
        return False
    return match.start() in _secret_entries(text)


# Templates fill Secrets with upper-case words (`REPLACE_ME`, `CHANGEME`); generated values have digits.
_PLACEHOLDER_NAME = re.compile(r"[A-Z]+(?:_[A-Z]+)*")


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
        r"(?P<user>[^\s:\"'`]{1,64}):(?P<secret>[^\s\"'`]{1,128})(?P=q)(?=[\s`]|$)",
        check=all_of(bounded(), _curl_ok),
        whole_text=True,
    ),
)
