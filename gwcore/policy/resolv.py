"""What a stub resolver decides before it asks DNS. Sans-IO: text in, decisions out.

- :func:`parse_resolv_conf`: ``nameserver``, ``search`` / ``domain`` and
  ``options ndots:N`` of a resolv.conf, as glibc reads them (the last of ``search`` and
  ``domain`` wins; no nameserver means ``127.0.0.1``; ``ndots`` is capped at 15).
- :func:`search_names`: the names to ask for one host name, in order, as glibc's
  ``res_search`` and c-ares (Envoy) do: a name with a trailing dot is absolute; one
  with at least ``ndots`` dots is asked as it is first, then with each search domain
  appended; one with fewer dots is asked with each search domain first, then as it is.
  A candidate answered NXDOMAIN or NODATA moves to the next; any other outcome
  (an answer, a timeout, SERVFAIL) ends the search.
- :func:`parse_hosts`: a hosts file (``address name [aliases...]``, ``#`` comments),
  every address of every line naming a host, in file order, as getaddrinfo returns them.
- :func:`localhost_addresses`: RFC 6761 section 6.3: ``localhost`` and every name
  under ``.localhost`` are the loopback addresses, answered without any lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_NAMESERVER = ("127.0.0.1", 53)
SYSTEM_RESOLV_CONF = "/etc/resolv.conf"
SYSTEM_HOSTS = "/etc/hosts"
DEFAULT_EDNS_PAYLOAD = 4096  # RFC 6891's example, what BIND and Unbound advertise
MIN_EDNS_PAYLOAD = 512  # RFC 6891 6.2.5: smaller values are treated as 512
MAX_EDNS_PAYLOAD = 65535
DEFAULT_NDOTS = 1
MAX_NDOTS = 15  # glibc's cap (RES_MAXNDOTS)
MAX_SEARCH = 32  # more search domains than any libc keeps is a mistake, not a list
LOCALHOST_V4 = "127.0.0.1"
LOCALHOST_V6 = "::1"


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """The parts of a resolv.conf a stub resolver uses."""

    nameservers: tuple[tuple[str, int], ...] = (DEFAULT_NAMESERVER,)
    search: tuple[str, ...] = ()
    ndots: int = DEFAULT_NDOTS


def parse_resolv_conf(text: str) -> ResolvConf:
    """Read resolv.conf text; lines that do not parse are ignored, as libc does."""
    nameservers: list[tuple[str, int]] = []
    search: tuple[str, ...] = ()
    ndots = DEFAULT_NDOTS
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].split()
        if len(line) < 2:
            continue
        keyword, values = line[0], line[1:]
        if keyword == "nameserver":
            host = values[0].split("%", 1)[0]  # a scope id (fe80::1%eth0) is not ours to use
            if _is_ip(host):
                nameservers.append((host, 53))
        elif keyword in ("search", "domain"):
            search = tuple(normalize(v) for v in values if normalize(v))[:MAX_SEARCH]
            if keyword == "domain":
                search = search[:1]
        elif keyword == "options":
            for option in values:
                if option.startswith("ndots:") and option[6:].isdigit():
                    ndots = min(int(option[6:]), MAX_NDOTS)
    return ResolvConf(tuple(nameservers) or (DEFAULT_NAMESERVER,), search, ndots)


def normalize(name: str) -> str:
    """A name in lower case without its trailing dot."""
    return name.strip().rstrip(".").lower()


def search_names(name: str, search: Sequence[str], ndots: int) -> tuple[str, ...]:
    """The names to ask for ``name``, in order (rules in the module docstring)."""
    if name.endswith("."):
        return (normalize(name),)
    base = normalize(name)
    expanded = tuple(f"{base}.{domain}" for domain in search if domain)
    if base.count(".") >= ndots:
        return (base, *expanded)
    return (*expanded, base)


@dataclass(frozen=True, slots=True)
class HostsFile:
    """A parsed hosts file: name (lower case) → its addresses, in file order."""

    entries: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def addresses(self, name: str) -> tuple[str, ...]:
        return self.entries.get(normalize(name), ())


def parse_hosts(text: str) -> HostsFile:
    """Read hosts-file text; a line whose first field is not an IP address is ignored."""
    entries: dict[str, list[str]] = {}
    for raw in text.splitlines():
        fields = raw.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        address = fields[0].split("%", 1)[0]
        if not _is_ip(address):
            continue
        address = str(ipaddress.ip_address(address))
        for name in fields[1:]:
            known = entries.setdefault(normalize(name), [])
            if address not in known:
                known.append(address)
    return HostsFile(MappingProxyType({k: tuple(v) for k, v in entries.items()}))


def is_localhost(name: str) -> bool:
    """RFC 6761 6.3: ``localhost`` or a name under it."""
    base = normalize(name)
    return base == "localhost" or base.endswith(".localhost")


def localhost_addresses(name: str) -> tuple[str, ...] | None:
    """The loopback addresses (IPv4, IPv6) for a localhost name, ``None`` for any other."""
    return (LOCALHOST_V4, LOCALHOST_V6) if is_localhost(name) else None


def split_families(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) addresses of ``addresses``, each in order."""
    v4 = [a for a in addresses if ":" not in a]
    v6 = [a for a in addresses if ":" in a]
    return v4, v6


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
