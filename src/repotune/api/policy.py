"""Which repository URLs a client may register and run: the scheme, the host name, and the addresses the
name resolves to. A run clones what it is given from the API's machine, so without this a client could
make it fetch from the cloud metadata service or from services that only the API's network can reach.

Two layers:

- Syntax (:func:`parse_repo_url`, no network): one of the known schemes; a host that is a host name
  or an IP literal; a user name, host and path that cannot be read as a command-line option (git is
  also always called with ``--`` before a URL); no password; no user for http(s); no query or fragment
  (where tokens hide: ``?access_token=...``).
- Policy (:class:`SourcePolicy`, with the settings and DNS): the scheme is one the server allows
  (``REPOTUNE_API_SOURCE_SCHEMES``); the host is listed (``REPOTUNE_API_SOURCE_HOSTS``, when set);
  every address the host resolves to is public, or inside a network the server allows
  (``REPOTUNE_API_SOURCE_NETWORKS``: loopback and private networks are refused unless listed there);
  link-local and cloud metadata addresses are refused whatever is configured.

What remains (DNS rebinding): the check resolves the name when the source is registered and again when
a run starts; git resolves it once more when it connects. For http(s) the run's git is pinned to the
checked addresses (``http.curloptResolve``) and follows no redirects, so that last resolution cannot
differ. For ssh:// and git:// nothing can pin it: a name whose DNS answer changes within those seconds
can still lead git elsewhere. Runs on a KFP cluster resolve there; the cluster's egress policy
(a NetworkPolicy) is the control for them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from repotune.api.errors import ApiError

SCHEMES = ("https", "http", "ssh", "git", "file")
"""Schemes a repository URL may have; the server allows a subset (default: https, ssh, git)."""
DEFAULT_PORTS = {"https": 443, "http": 80, "ssh": 22, "git": 9418}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused whatever is configured: link-local (where the metadata services live), "this host",
# multicast and broadcast, and metadata addresses outside link-local (Alibaba, Azure's WireServer, the
# IPv6 address of AWS's instance metadata).
NEVER: tuple[IpNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "224.0.0.0/4", "ff00::/8",
        "255.255.255.255/32", "100.100.100.200/32", "168.63.129.16/32", "fd00:ec2::254/128",
    )
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_SCP = re.compile(r"^(?P<user>[^@/:]+)@(?P<host>[^@/:]+):(?P<path>[^:].*)$")


@dataclass(frozen=True)
class RepoUrl:
    """A repository URL taken apart; ``host`` is None only for file:// URLs."""

    url: str
    scheme: str
    host: str | None
    port: int | None


def _check_host(host: str, url: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"repo_url {url!r}: {host!r} is not a host name")
    return host


def parse_repo_url(url: str) -> RepoUrl:
    """The URL's parts; ValueError (worded for the client) when it is not a repository URL this API
    takes, whatever the server's settings."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValueError("repo_url must not contain spaces or control characters")
    if url.startswith("-"):
        raise ValueError("repo_url must not start with '-'")
    if "?" in url or "#" in url:
        # git has no use for a query; one is most often a token (?access_token=...), which the source's
        # record and the run's log would show. The URL itself is not repeated here, for the same reason.
        raise ValueError(
            "repo_url must not have a query or fragment ('?', '#'); "
            "configure credentials on the server instead"
        )
    scp = _SCP.match(url) if "://" not in url else None
    if scp is not None:
        if not _NAME.match(scp["user"]):
            raise ValueError(f"repo_url {url!r}: the user name must be letters, digits, '.', '_' or '-'")
        if scp["path"].startswith("-"):
            raise ValueError(f"repo_url {url!r}: the path must not start with '-'")
        return RepoUrl(url, "ssh", _check_host(scp["host"], url).lower(), None)
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"repo_url must be a {', '.join(s + '://' for s in SCHEMES)} or user@host:path URL")
    if parts.password is not None or (parts.scheme in ("http", "https") and parts.username):
        # A run's command line (and its record here) would expose them; the server's git
        # credential configuration is the place for credentials.
        raise ValueError("repo_url must not carry credentials; configure them on the server instead")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"repo_url {url!r}: a file:// URL names an absolute path on the server")
        return RepoUrl(url, "file", None, None)
    if parts.username is not None and not _NAME.match(parts.username):
        raise ValueError(f"repo_url {url!r}: the user name must be letters, digits, '.', '_' or '-'")
    if not parts.hostname:
        raise ValueError(f"repo_url {url!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"repo_url {url!r} has an invalid port") from None
    return RepoUrl(url, parts.scheme, _check_host(parts.hostname, url).lower(), port)


def _embedded(address: IpAddress) -> IpAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address; else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


def _matches(host: str, pattern: str) -> bool:
    pattern = pattern.lower().removesuffix(".")
    host = host.removesuffix(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (an IP literal resolves to itself, in whatever notation)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


class SourcePolicy:
    """Decides whether a repository URL may be used as a source, resolving its host to decide."""

    def __init__(
        self,
        schemes: tuple[str, ...],
        hosts: tuple[str, ...] = (),
        networks: tuple[IpNetwork, ...] = (),
        resolver: Resolver = resolve,
    ) -> None:
        self.schemes, self.hosts, self.networks, self.resolver = schemes, hosts, networks, resolver

    def check(self, url: str) -> tuple[RepoUrl, list[IpAddress]]:
        """The URL's parts and the addresses its host resolves to now, all of them allowed; 422 otherwise."""
        try:
            parsed = parse_repo_url(url)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        if parsed.scheme not in self.schemes:
            raise _refused(
                f"{parsed.scheme}:// sources are not allowed here (allowed: {', '.join(self.schemes)}; "
                "REPOTUNE_API_SOURCE_SCHEMES)"
            )
        if parsed.host is None:
            return parsed, []
        if self.hosts and not any(_matches(parsed.host, pattern) for pattern in self.hosts):
            raise _refused(f"host {parsed.host} is not one of REPOTUNE_API_SOURCE_HOSTS")
        port = parsed.port or DEFAULT_PORTS[parsed.scheme]
        try:
            found = [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(parsed.host, port)]
        except (OSError, UnicodeError) as exc:
            raise ApiError(
                422, "source_host_unknown", f"host {parsed.host} does not resolve: {exc}"
            ) from None
        if not found:
            raise ApiError(422, "source_host_unknown", f"host {parsed.host} resolves to no address")
        for address in found:
            self._check_address(parsed.host, address)
        return parsed, found

    def _check_address(self, host: str, address: IpAddress) -> None:
        inner = _embedded(address)
        shown = host if host == str(address) else f"{host} ({address})"
        if any(
            candidate in net
            for candidate in {address, inner}
            for net in NEVER
            if candidate.version == net.version
        ):
            raise _refused(
                f"{shown} is a link-local or cloud metadata address; such sources are never allowed"
            )
        if any(inner in net for net in self.networks if inner.version == net.version) or any(
            address in net for net in self.networks if address.version == net.version
        ):
            return
        if not inner.is_global:
            raise _refused(
                f"{shown} is a loopback, private or reserved address; allow its network with "
                "REPOTUNE_API_SOURCE_NETWORKS (e.g. 10.0.0.0/8) to use sources inside it"
            )


def _refused(message: str) -> ApiError:
    return ApiError(422, "source_not_allowed", message)


def git_pins(parsed: RepoUrl, addresses: list[IpAddress], environ: Mapping[str, str]) -> dict[str, str]:
    """Environment entries that make every git of a run reach ``parsed``'s host at ``addresses`` only
    (http and https: ``http.curloptResolve``, and no redirects, which could lead to another host);
    nothing for other schemes, which git resolves itself. Appended after any ``GIT_CONFIG_*`` entries
    ``environ`` has already."""
    if parsed.scheme not in ("http", "https") or parsed.host is None or not addresses:
        return {}
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    listed = ",".join(f"[{a}]" if a.version == 6 else str(a) for a in addresses)
    entries = [("http.curloptResolve", f"{parsed.host}:{port}:{listed}"), ("http.followRedirects", "false")]
    try:
        start = int(environ.get("GIT_CONFIG_COUNT") or 0)
    except ValueError:
        start = 0
    env = {"GIT_CONFIG_COUNT": str(start + len(entries))}
    for offset, (key, value) in enumerate(entries):
        env[f"GIT_CONFIG_KEY_{start + offset}"] = key
        env[f"GIT_CONFIG_VALUE_{start + offset}"] = value
    return env
