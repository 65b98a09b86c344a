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
    literal_ok,
    mixed_case,
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


def _command_value_ok(text: str, match: re.Match[str]) -> bool:
    """A password given on a command line (`mysql -pS3cret`, `sshpass -p S3cret`), not one asked for
    (`$DB_PASSWORD`, `<password>`, `{{ pw }}`) nor a stand-in."""
    value = secret(text, match)
    return not (
        value.lower() in _COMMAND_STAND_INS or TEMPLATE.match(value) or "$" in value or stand_in(value)
    )


def _inline_env_ok(text: str, match: re.Match[str]) -> bool:
    """`PGPASSWORD=S3cret psql ...`: an upper-case variable set for one command."""
    return text[match.start("name") : match.end("name")].isupper() and _command_value_ok(text, match)


def _htpasswd_ok(text: str, match: re.Match[str]) -> bool:
    """`htpasswd -b FILE USER PASSWORD`: the password is an argument only with `-b`."""
    return "b" in match.group("flags").replace("-", "") and _command_value_ok(text, match)


def _netrc_value_ok(text: str, match: re.Match[str]) -> bool:
    """A .netrc password as a literal would be judged (`pass1` in a parser's tests is a stand-in)."""
    value = secret(text, match).strip("\"'")
    return "\\" not in value and literal_ok(value, weak=False)  # `\xa1\xa2`: escapes in a test string


_VALUE = r"(?P<q>[\"']?)(?P<secret>[^\s\"'`]{4,256})(?P=q)(?=[\s;|&)]|$)"
"""A command-line argument, quoted or not, up to where it ends."""

COMMAND_RULES: tuple[SecretRule, ...] = (
    # `mysql -pS3cret` (`-p` with a space asks for it instead), and the tools that take the same flag.
    _rule(
        "password",
        "mysql mariadb",
        r"\b(?:mysql|mysqldump|mysqladmin|mysqlimport|mysqlshow|mariadb|mariadb-dump)\b[^\n]*?[ \t]-p"
        + r"(?P<q>[\"']?)(?P<secret>[^\s\"'`$<-][^\s\"'`]{3,255})(?P=q)(?=[\s;|&)]|$)",
        check=_command_value_ok,
        flags=re.MULTILINE,
    ),
    _rule("password", "sshpass", r"\bsshpass[ \t]+-p[ \t]*" + _VALUE, check=_command_value_ok),
    _rule(
        "password",
        "docker podman",
        r"\b(?:docker|podman)[ \t]+login\b[^\n]*?[ \t]-p[ \t]+" + _VALUE,
        check=_command_value_ok,
    ),
    _rule("password", "sqlcmd", r"\bsqlcmd\b[^\n]*?[ \t]-p[ \t]*" + _VALUE, check=_command_value_ok),
    # openssl's `-passin pass:S3cret` / `-passout pass:S3cret`
    _rule(
        "password",
        "pass:",
        r"-pass(?:in|out)?[ \t]+[\"']?pass:(?P<q>)(?P<secret>[^\s\"'`]{4,256})",
        check=_command_value_ok,
    ),
    # keytool's `-storepass`, `-keypass`, `-srcstorepass`, `-deststorepass`, ...
    _rule(
        "password",
        "storepass keypass",
        r"-(?:src|dest)?(?:store|key)pass[ \t]+" + _VALUE,
        check=_command_value_ok,
    ),
    _rule(
        "password",
        "htpasswd",
        r"\bhtpasswd(?P<flags>(?:[ \t]+-[a-z]+)+)[ \t]+\S+[ \t]+\S+[ \t]+" + _VALUE,
        check=_htpasswd_ok,
    ),
    # `PGPASSWORD=S3cret psql ...`, `MYSQL_PWD=S3cret mysql ...`: set for the one command that follows.
    _rule(
        "password",
        "password passwd pwd token secret",
        r"(?:^[+-]?|(?<=[\s;&|(]))(?P<name>[a-z][a-z0-9_]*(?:password|passwd|pwd|token|secret))="
        + r"(?P<q>[\"']?)(?P<secret>[^\s\"'`$]{4,256})(?P=q)[ \t]+(?=[a-z./])",
        check=_inline_env_ok,
        flags=re.MULTILINE,
    ),
    # A .netrc entry: `machine HOST login USER password S3cret`, on one line or several.
    _rule(
        "password",
        "machine",
        r"\bmachine[ \t]+\S+(?:\s+[+-]?[ \t]*login[ \t]+\S+)?\s+[+-]?[ \t]*password[ \t]+"
        r"(?P<q>)(?P<secret>\S{4,256})",
        check=all_of(_command_value_ok, _netrc_value_ok),
        whole_text=True,
    ),
    # Password hashes that can be cracked offline: .htpasswd's apr1/bcrypt, crypt(3)'s SHA-256/512.
    _rule(
        "password",
        "$apr1$ $2a$ $2b$ $2y$ $5$ $6$",
        r"\$(?:apr1|2[aby]|5|6)\$[./a-z0-9]{1,22}\$[./a-z0-9]{20,}",
        check=bounded(),
    ),
    # `-H "X-API-Key: ..."`, `{"X-Api-Key": "..."}`
    _rule(
        "password",
        "x-api-key",
        r"x-api-key[\"']?[ \t]*[:=][ \t]*[\"']?(?P<secret>[a-z0-9._~+/-]{16,256})",
        check=_command_value_ok,
    ),
    # `<property name="password" value="..."/>` (Spring, Maven, Ant)
    _rule(
        "password",
        "pass secret",
        r"name=[\"'][\w.-]*(?:password|passwd|secret)[\"'][ \t]+value=[\"'](?P<secret>[^\"'\s]{4,256})[\"']",
        check=_command_value_ok,
    ),
    # PHP: `define('DB_PASSWORD', '...')`
    _rule(
        "password",
        "define(",
        r"define\([ \t]*[\"'][\w]*(?:password|pass|secret|key|token)[\"'][ \t]*,[ \t]*[\"']"
        r"(?P<secret>[^\"'\n]{4,256})[\"']",
        check=_command_value_ok,
    ),
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
    documents of ``text`` that hold a `kind: Secret` (a Secret, or one in a `kind: List` as `kubectl get
    -o yaml` writes it): one pass over the lines, once per text. In a diff, each line's `+`, `-` or
    space is set aside first, so the Secret's old and new values are found as in the file."""
    entries: set[int] = set()
    position = 0
    diff = text.startswith("diff --git") or "\ndiff --git " in text or "\n@@ " in text
    for document in re.split(r"(?<=\n)(?=---)", text):
        if _K8S_SECRET_KIND.search(document):
            section: int | None = None  # the section key's indentation while inside one
            entry: int | None = None  # its entries' indentation
            offset = position
            for raw in document.splitlines(keepends=True):
                marked = diff and raw[:1] in ("+", "-", " ") and not raw.startswith(("+++", "---"))
                line = raw[1:] if marked else raw
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
                offset += len(raw)
        position += len(document)
    return frozenset(entries)


_K8S_SECTIONS = frozenset({"data:", "stringData:", "binaryData:"})
_K8S_SECRET_KIND = re.compile(
    r"^[+ -]?[ \t]*(?:-[ \t]+)?kind:[ \t]*[\"']?Secret[\"']?[ \t]*\r?$", re.MULTILINE
)
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
    # An AWS key pair passed by position (`boto3.Session("AKIA...", "...")`, Java's
    # `new BasicAWSCredentials("AKIA...", "...")`, Go's `NewStaticCredentials`): the secret is the
    # literal right after the key id, on the same line or the next.
    _rule(
        "aws_secret_key",
        "akia asia",
        r"(?:akia|asia)[a-z0-9]{16}[\"'`][ \t]*,[ \t]*\r?\n?[ \t]*"
        r"[bru]{0,2}[\"'`](?P<secret>[a-z0-9/+]{40})[\"'`]",
        check=mixed_case,
        whole_text=True,
    ),
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
        r"^[+ -]?(?P<indent>[ \t]+)[\w.-]+:[ \t]*(?P<q>[\"']?)(?P<secret>[^\s#'\"|>][^\n]*?)(?P=q)[ \t]*\r?$",
        check=_k8s_secret_value_ok,
        fold=False,
        whole_text=True,
        flags=re.MULTILINE,
    ),
    _rule(
        "kubernetes_secret",
        _K8S_KEYWORDS,
        r"^(?P<mark>[+ -]?)(?P<indent>[ \t]+)[\w.-]+:[ \t]*[|>][-+]?[ \t]*\r?\n"
        r"(?P<secret>(?P=mark)(?P=indent)[ \t]+\S[^\n]*(?:\n(?P=mark)(?P=indent)[ \t]+\S[^\n]*)*)",
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
    *COMMAND_RULES,
)
