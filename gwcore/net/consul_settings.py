"""How a plugin reaches its Consul agent: the connection keys of its config section, their
checks, and the error and answer types every Consul request shares.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gwcore.policy.config import SectionReader
from gwcore.policy.url_secrets import url_credentials

DEFAULT_ADDRESS = "http://127.0.0.1:8500"
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
DEFAULT_MAX_CONNECTIONS = 16
MIN_MAX_CONNECTIONS = 8  # the long polls of the three Consul plugins fit in 7 slots
DEFAULT_TIMEOUT = 10.0
DEFAULT_RATE = 5.0
RATE_BURST = 2
DEFAULT_RETRY_MIN = 0.5
DEFAULT_RETRY_MAX = 60.0
MAX_BODY = 64 << 20
TOKEN_HEADER = b"X-Consul-Token"

# The permission each endpoint needs (reference §5), named in the one-time 403 report.
PERMISSIONS: Mapping[str, str] = {
    "gateway-services": "service:read on the gateway name",
    "catalog-services": "service:read",
    "health-state": "node:read and service:read",
    "catalog-nodes": "node:read",
    "agent-self": "agent:read",
    "health-service": "service:read and node:read on the service and its nodes",
    "config": "service:read on the service (config entries)",
    "ca-roots": "none (agent endpoint)",
    "ca-leaf": "service:write on the service",
    "intentions-match": "intentions:read",
    "agent-register": "service:write on the gateway name",
    "agent-deregister": "service:write on the gateway name",
    # a mesh site (plugins/consul_mesh.py); "mesh-gateways:<dc>" is looked up by its prefix
    "config-terminating": "service:read on the terminating gateways (config entries)",
    "catalog-datacenters": "none",
    "mesh-gateways": "service:read and node:read on the mesh gateways, in that datacenter",
    "federation-states": "service:read and node:read on the mesh gateways",
}


class ConsulError(Exception):
    """A Consul request failed. ``kind`` is a bounded label for metrics."""

    def __init__(self, endpoint: str, kind: str, detail: str, status: int = 0) -> None:
        super().__init__(f"{endpoint}: {detail}")
        self.endpoint = endpoint
        self.kind = kind
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class ConsulResponse:
    """A 2xx answer: status, ``X-Consul-Index`` (0 when absent) and the body."""

    status: int
    index: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class ConsulSettings:
    """How to reach the agent (the connection keys every Consul plugin section accepts).

    ``token_file`` is an absolute path (resolved against the config file when read).
    """

    address: str = DEFAULT_ADDRESS
    token: str = field(default="", repr=False)  # never in a log line or an error
    token_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    datacenter: str = ""
    wait: float = DEFAULT_WAIT
    timeout: float = DEFAULT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    rate: float = DEFAULT_RATE
    retry_min: float = DEFAULT_RETRY_MIN
    retry_max: float = DEFAULT_RETRY_MAX

    @property
    def scheme(self) -> str:
        return urlsplit(self.address).scheme


CONNECTION_KEYS = (
    "address",
    "token",
    "token_file",
    "ca_file",
    "cert_file",
    "key_file",
    "datacenter",
    "wait",
    "timeout",
    "max_connections",
    "rate",
    "retry_min",
    "retry_max",
)


def read_consul_settings(reader: SectionReader, base_dir: Path) -> ConsulSettings:
    """Read the connection keys of a Consul plugin section (problems go to ``reader``)."""
    address = reader.string("address", DEFAULT_ADDRESS) or DEFAULT_ADDRESS
    parts = urlsplit(address)
    secret = "@" in address or url_credentials(address, query=False)
    if secret:
        # user:password@ or ?token= would be shown by /config and in every retry
        # warning; Consul's API authenticates with ACL tokens anyway. Not echoed.
        why = "must not hold credentials (user:password@host)" if secret is True else secret
        reader.problem(
            "address",
            f"{why}: Consul's API takes an ACL token, set `token` or `token_file` instead",
        )
        address = DEFAULT_ADDRESS
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem("address", f"must be an http:// or https:// URL, not {address!r}")
        address = DEFAULT_ADDRESS
    elif parts.path not in ("", "/"):
        reader.problem("address", "must not have a path (the agent's API is at /v1)")

    def path_key(name: str) -> str:
        value = reader.string(name, "") or ""
        if not value:
            return ""
        path = Path(value)
        return str(path if path.is_absolute() else base_dir / path)

    token = reader.string("token", "") or ""
    token_file = path_key("token_file")
    if token and token_file:
        reader.problem("token_file", "set token or token_file, not both")
    ca_file, cert_file, key_file = path_key("ca_file"), path_key("cert_file"), path_key("key_file")
    if bool(cert_file) != bool(key_file):
        reader.problem("cert_file", "cert_file and key_file go together")
    if (ca_file or cert_file) and urlsplit(address).scheme != "https":
        reader.problem("ca_file", "TLS files need an https:// address")
    datacenter = reader.string("datacenter", "") or ""
    wait = reader.duration("wait", DEFAULT_WAIT, minimum=0.1)
    if wait > MAX_WAIT:
        reader.problem("wait", f"must be at most {MAX_WAIT:g}s (Consul's maximum)")
        wait = MAX_WAIT
    return ConsulSettings(
        address=address.rstrip("/"),
        token=token,
        token_file=token_file,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        datacenter=datacenter,
        wait=wait,
        timeout=reader.duration("timeout", DEFAULT_TIMEOUT, minimum=0.1),
        max_connections=reader.integer(
            "max_connections", DEFAULT_MAX_CONNECTIONS, minimum=MIN_MAX_CONNECTIONS, maximum=1024
        ),
        rate=reader.number("rate", DEFAULT_RATE, minimum=0.1, maximum=1000),
        retry_min=reader.duration("retry_min", DEFAULT_RETRY_MIN, minimum=0.01),
        retry_max=reader.duration("retry_max", DEFAULT_RETRY_MAX, minimum=0.01),
    )


def check_files(settings: ConsulSettings) -> list[tuple[str, str]]:
    """``(key, message)`` for every configured file that cannot be read (for validation)."""
    problems = []
    for key in ("token_file", "ca_file", "cert_file", "key_file"):
        path = getattr(settings, key)
        if path and not os.access(path, os.R_OK):
            problems.append((key, f"{path!r} cannot be read"))
    return problems


def connection_problems(reader: SectionReader, settings: ConsulSettings) -> None:
    """Add a problem to ``reader`` for every connection file that cannot be read."""
    for key, message in check_files(settings):
        reader.problem(key, message)
