"""HTTP/1.1 protocol upgrades (RFC 9110 §7.8) at L7 destinations, as Consul's Envoy treats them.

Consul turns on ``upgrade_configs: [{upgrade_type: websocket}]`` on every HTTP listener.
Envoy's rules, which these follow (sans-IO: the data path is ``gwcore.net.l7_upgrade``):

1. A request **asks for an upgrade** when it has an ``Upgrade`` field *and* its
   ``Connection`` field lists the ``upgrade`` token (Envoy's ``Utility::isUpgrade``).
   An ``Upgrade`` field without that token is an ordinary hop-by-hop field: removed,
   and the request is served as a plain one.
2. ``Upgrade: h2c`` (RFC 7540 §3.2, cleartext HTTP/2) is never switched: Envoy's
   HTTP/1 codec removes ``Upgrade``, the ``upgrade`` and ``http2-settings`` tokens of
   ``Connection`` and the ``HTTP2-Settings`` field, and serves the request as a plain
   HTTP/1.1 one (:data:`STRIP_H2C`).
3. ``Upgrade: websocket`` (the token compared without case) is **forwarded**: the
   service gets ``Connection: upgrade`` and the ``Upgrade`` value as sent; its ``101
   Switching Protocols`` turns both connections into one opaque byte stream
   (:data:`WEBSOCKET`).
4. Any other token (``Upgrade: foo``, a list ``websocket, foo``) has no
   ``upgrade_configs`` entry: Envoy answers ``403`` with an empty body before its
   filters run and closes the connection after it (:data:`REFUSE`).

Rule 3 needs an HTTP/1.1 service (``http``): the upgrade is refused as in rule 4 for
``http2``/``grpc`` destinations, whose upstream speaks HTTP/2 (RFC 8441's extended
CONNECT is not spoken by tgw).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "PLAIN",
    "REFUSE",
    "STRIP_H2C",
    "WEBSOCKET",
    "classify",
    "connection_tokens",
    "upgrade_fields",
    "without_h2c",
]

Header = tuple[str, str]

PLAIN = "plain"
"""No upgrade asked: any ``Upgrade`` field is hop-by-hop and removed (rule 1)."""
STRIP_H2C = "h2c"
"""``Upgrade: h2c``: its fields are removed, the request served as a plain one (rule 2)."""
WEBSOCKET = "websocket"
"""A WebSocket upgrade: forwarded, switched on ``101`` (rule 3)."""
REFUSE = "refuse"
"""An upgrade Consul's Envoy has no ``upgrade_configs`` entry for: ``403``, close (rule 4)."""


def connection_tokens(headers: Iterable[Header]) -> set[str]:
    """The lower-case tokens of every ``Connection`` field."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _upgrade_value(headers: Iterable[Header]) -> str | None:
    values = [v for k, v in headers if k.lower() == "upgrade"]
    return ", ".join(values) if values else None


def classify(headers: Iterable[Header], protocol: str = "http") -> str:
    """Which rule of the module docstring applies to a request with ``headers`` at a
    destination whose protocol is ``protocol`` (one pass over the fields: this runs
    for every request)."""
    upgrade: list[str] = []
    connection: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "upgrade":
            upgrade.append(value)
        elif lower == "connection":
            connection.append(value)
    if not upgrade or "upgrade" not in connection_tokens(("connection", v) for v in connection):
        return PLAIN
    token = ", ".join(upgrade).strip().lower()
    if token == "h2c":
        return STRIP_H2C
    if token == "websocket" and protocol == "http":
        return WEBSOCKET
    return REFUSE


def without_h2c(headers: Iterable[Header]) -> list[Header]:
    """``headers`` without an h2c upgrade (rule 2): no ``Upgrade``, no ``HTTP2-Settings``,
    and ``Connection`` without its ``upgrade`` and ``http2-settings`` tokens (dropped
    when nothing is left)."""
    kept: list[Header] = []
    for name, value in headers:
        lower = name.lower()
        if lower in ("upgrade", "http2-settings"):
            continue
        if lower == "connection":
            tokens = [t.strip() for t in value.split(",") if t.strip()]
            rest = [t for t in tokens if t.lower() not in ("upgrade", "http2-settings")]
            if not rest:
                continue
            value = ", ".join(rest)
        kept.append((name, value))
    return kept


def upgrade_fields(headers: Iterable[Header]) -> list[Header]:
    """The fields a WebSocket upgrade keeps toward the service (rule 3), which the
    hop-by-hop removal (RFC 9110 §7.6.1) would otherwise drop: ``connection: upgrade``
    and the ``Upgrade`` value as the client sent it."""
    value = _upgrade_value(headers)
    return [] if value is None else [("connection", "upgrade"), ("upgrade", value)]
