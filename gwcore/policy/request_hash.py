"""A request's hash key from a ``service-resolver``'s ``LoadBalancer.HashPolicies`` (sans-IO).

Consul turns each hash policy into one of Envoy's route hash policies
(agent/xds/routes.go ``injectLBToRouteAction``); Envoy evaluates them per request
(``HashPolicyImpl::generateHash``). The rules, as Envoy's:

- ``Field: header``: the named header's values (the name matched without case),
  sorted, together; absent → no hash from this policy.
- ``Field: cookie``: the named cookie's value from the ``Cookie`` header(s), the first
  occurrence. Absent, and the policy has a ``CookieConfig`` with ``TTL`` or
  ``Session``: a cookie is generated from the client's address and port, the request
  is hashed on it, and the response sets it (``Set-Cookie``, ``HttpOnly``, ``Max-Age``
  unless a session cookie, ``Path`` when configured).
- ``Field: query_parameter``: the first value of the named query parameter, as sent
  (not percent-decoded).
- ``SourceIP``: the client's address (without the port).
- Policies are evaluated in order; each hash is folded into the one so far
  (``rotl(h, 1) ^ new``, so two equal policies do not cancel out). A policy with
  ``Terminal`` stops the walk once a hash exists (from it or an earlier policy).
- No policy yielding a hash: no key (the balancer then behaves as without hash
  policies: a random endpoint, as Envoy's ring hash does).

The hash function is :func:`gwcore.policy.lb.hash64` (stable across workers and
restarts); the values are not Envoy's xxHash64, only the behaviour is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gwcore.policy.lb import hash64
from gwcore.policy.model import HashPolicy

MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class RequestHash:
    """The request's hash (None: no policy yielded one) and the ``Set-Cookie`` value
    the response must carry when a cookie was generated ("" otherwise)."""

    value: int | None
    set_cookie: str = ""


NO_HASH = RequestHash(None)


def _cookie(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first ``name`` cookie of the request (RFC 6265 §5.4 pairs; a quoted value
    loses its quotes, as Envoy's ``parseCookieValue``)."""
    for key, value in headers:
        if key.lower() != "cookie":
            continue
        for pair in value.split(";"):
            k, sep, v = pair.strip().partition("=")
            if sep and k == name:
                if len(v) >= 2 and v[0] == v[-1] == '"':
                    v = v[1:-1]
                return v
    return None


def _query(target: str, name: str) -> str | None:
    _, sep, query = target.partition("?")
    if not sep:
        return None
    query = query.partition("#")[0]
    for pair in query.split("&"):
        k, _, v = pair.partition("=")
        if k == name:
            return v
    return None


def _set_cookie(policy: HashPolicy, value: str) -> str:
    parts = [f"{policy.field_value}={value}"]
    if policy.cookie_ttl:
        parts.append(f"Max-Age={int(policy.cookie_ttl)}")
    if policy.cookie_path:
        parts.append(f"Path={policy.cookie_path}")
    parts.append("HttpOnly")
    return "; ".join(parts)


def request_hash(
    policies: Iterable[HashPolicy],
    headers: Iterable[tuple[str, str]],
    target: str,
    client_address: str,
    client_port: int = 0,
) -> RequestHash:
    """The hash of one request under ``policies`` (see the module docstring).

    ``headers`` are the request's fields as the service gets them (iterated once per
    header or cookie policy); ``target`` is its
    path with the query; ``client_address``/``client_port`` are the caller's.
    """
    result: int | None = None
    set_cookie = ""
    for policy in policies:
        new: int | None = None
        if policy.source_ip:
            if client_address:
                new = hash64(client_address)
        elif policy.field == "header":
            name = policy.field_value.lower()
            values = sorted(v for k, v in headers if k.lower() == name)
            if values:
                new = hash64("\x00".join(values))
        elif policy.field == "cookie":
            value = _cookie(headers, policy.field_value)
            if value is None and policy.cookie_ttl is not None and not set_cookie:
                value = f"{hash64(f'{client_address}:{client_port}'):016x}"
                set_cookie = _set_cookie(policy, value)
            if value is not None:
                new = hash64(value)
        elif policy.field == "query_parameter":
            value = _query(target, policy.field_value)
            if value is not None:
                new = hash64(value)
        if new is not None:
            result = new if result is None else (((result << 1) | (result >> 63)) & MASK) ^ new
        if result is not None and policy.terminal:
            break
    if result is None:
        return NO_HASH
    return RequestHash(result, set_cookie)
