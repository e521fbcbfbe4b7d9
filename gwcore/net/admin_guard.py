"""Who may use the admin endpoint: checked before any admin resource renders.

1. The ``Host`` header must name a loopback address (``localhost``, ``127.0.0.0/8``,
   ``::1``) or one of ``[gateway] admin_hosts``, with any port. A page in a browser
   on the same machine can make requests to a loopback port through a name it
   controls (DNS rebinding); such requests carry the attacker's name in ``Host``
   and are refused (403).
2. When ``admin_token`` or ``admin_token_file`` is set, every request must carry
   ``Authorization: Bearer <token>`` (401 otherwise), compared in constant time.

Each refusal is one log line and counts in ``tgw_admin_refused_total{reason}``.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from gwcore.policy.config import MIN_ADMIN_TOKEN, GatewayConfig
from gwcore.policy.redact import secret_files, secret_values

log = Logger(namespace="tgw.admin")

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def admin_token(config: GatewayConfig) -> str:
    """The bearer token the admin endpoint requires ("" for none).

    Raises ``ValueError`` when ``admin_token_file`` cannot be read or holds too short
    a token: an admin endpoint meant to be protected never starts open.
    """
    path = config.admin_token_file
    if path is None:
        return config.admin_token
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"gateway.admin_token_file: {path} cannot be read: {e}") from None
    if len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(
            f"gateway.admin_token_file: {path} must hold a token of at least "
            f"{MIN_ADMIN_TOKEN} characters"
        )
    return token


def config_secrets(config: GatewayConfig) -> set[str]:
    """Every secret value of ``config``: secret keys' values and token files' contents."""
    found = secret_values(config.raw)
    for name in secret_files(config.raw):
        path = config.base_dir / name  # an absolute name stays as it is
        with contextlib.suppress(OSError, UnicodeDecodeError):
            content = path.read_text(encoding="utf-8").strip()
            if content:
                found.add(content)
    return found


def host_name(header: bytes | None) -> str | None:
    """The host part of a ``Host`` header (lower-case, no port, no brackets), or None."""
    if not header:
        return None
    try:
        text = header.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not _is_port(text[end + 1 :])):
            return None
        return text[1:end]
    if text.count(":") == 1:
        text, port = text.split(":")
        if not port.isdigit():
            return None
    elif ":" in text:
        return None  # a bare IPv6 address is not a valid Host header
    return text or None


def _is_port(suffix: str) -> bool:
    return suffix.startswith(":") and suffix[1:].isdigit()


def host_allowed(name: str | None, configured: Iterable[str] = ()) -> bool:
    if name is None:
        return False
    if name in LOOPBACK_NAMES or name in configured:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _ErrorPage(Resource):
    isLeaf = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__()
        self.code, self.message = code, message

    def render(self, request: Request) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"error": self.message}).encode() + b"\n"


class AdminGuard:
    """The checks above, for one admin endpoint."""

    def __init__(self, token: str = "", hosts: Iterable[str] = (), metrics: Any = None) -> None:
        self._token = token.encode()
        self.hosts = frozenset(hosts)
        self.metrics = metrics

    @property
    def requires_token(self) -> bool:
        return bool(self._token)

    def refusal(self, request: Request) -> Resource | None:
        """None to let ``request`` through, else the resource that refuses it."""
        name = host_name(request.getHeader(b"host"))
        if not host_allowed(name, self.hosts):
            return self._refuse(request, "host", 403, "Host not allowed", f"Host {name!r}")
        if self._token and not self._bearer_ok(request.getHeader(b"authorization")):
            request.setHeader(b"www-authenticate", b'Bearer realm="tgw-admin"')
            return self._refuse(request, "token", 401, "bearer token required", "no valid token")
        return None

    def _bearer_ok(self, header: bytes | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(value.strip(), self._token)

    def _refuse(
        self, request: Request, reason: str, code: int, message: str, detail: str
    ) -> Resource:
        client = request.getClientAddress()
        log.info(
            "admin: refused {method} from {client}: {detail}",
            method=(request.method or b"?").decode("ascii", "replace"),
            client=getattr(client, "host", None) or "unix socket",
            detail=detail,
        )
        if self.metrics is not None:
            self.metrics.admin_refused.labels(reason=reason).inc()
        return _ErrorPage(code, message)
