"""Personal data, redacted on request (``--redact-pii``): e-mail and IP addresses.

Kept: addresses at reserved domains (example.com, .test, .invalid, .localhost), ``git@`` SSH users, and
``noreply@``/``no-reply@`` service senders (no person behind them); ``@users.noreply.github.com``
addresses carry a user name and are redacted. Only globally routable IPs are redacted: loopback,
private, link-local and documentation ranges (127.0.0.1, 10.0.0.0/8, 192.0.2.0/24, ...) are not
personal, nor is anything that reads as a version (``v1.2.3.4``, ``version = "1.2.3.4"``).
"""

from __future__ import annotations

import ipaddress
import re

from repotune.clean.secrets.checks import words
from repotune.clean.secrets.engine import SecretRule

_GENERIC_TLDS = words(
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
        ("@",),
        check=_email_ok,
        tag="PII",
    ),
    SecretRule(
        "ip_address",
        re.compile(rf"(?<![\w.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?!\w|\.\w)"),
        (),
        check=_ip_ok,
        # Starts with a literal ".", so lines with dotted numbers are found without trying every digit.
        lines=re.compile(r"\.\d{1,3}\.\d"),
        tag="PII",
    ),
    SecretRule(
        "ip_address",
        re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]|\.\w)"),
        (),
        check=_ip_ok,
        lines=re.compile(r"::|:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:"),
        tag="PII",
    ),
)
