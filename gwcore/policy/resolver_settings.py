"""A ``service-resolver``'s settings other than its subsets, read and validated (sans-IO).

What each one does at a terminating site (Consul origin: ``ServiceResolverConfigEntry``
in agent/structs/config_entry_discoverychain.go, applied in agent/xds/clusters.go):

- ``ConnectTimeout``: the upstream connect timeout of the service and its subsets, over
  the site's ``connect_timeout`` (Consul: the cluster's ``connect_timeout``).
- ``LoadBalancer``: ``Policy`` (``round_robin``, ``least_request`` with
  ``LeastRequestConfig.ChoiceCount``, ``random``, ``ring_hash`` with
  ``RingHashConfig.MinimumRingSize``/``MaximumRingSize``, ``maglev``) orders the
  endpoints (:mod:`gwcore.policy.lb`). At L4 the hash policies hash the connection's
  source identity (its SPIFFE ID) or, with ``SourceIP``, its address.
- ``RequestTimeout`` and ``HashPolicies`` on ``header``/``cookie``/``query_parameter``
  are L7 route settings: at ``http`` destinations each request is hashed by them
  (:mod:`gwcore.policy.request_hash`); they are also reported in ``/routes``.
- ``DefaultSubset``, ``Redirect`` and ``Failover`` are decided by the calling sidecar's
  discovery chain in Consul; the gateway validates and reports them (``DefaultSubset``
  also picks the plain name's endpoints, as Consul's gateways do).

Go durations are strings (``"5s"``) or, as Consul's decoder reads them, integer
nanoseconds. Every problem names its key; nothing raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gwcore.policy.config import parse_duration
from gwcore.policy.model import (
    DEFAULT_CHOICES,
    DEFAULT_LB,
    DEFAULT_MAX_RING,
    DEFAULT_MIN_RING,
    HashPolicy,
    LoadBalancer,
)

POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")
HASH_POLICIES = ("ring_hash", "maglev")
HASH_FIELDS = ("header", "cookie", "query_parameter")
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    connect_timeout: float | None = None
    request_timeout: float | None = None
    load_balancer: LoadBalancer = DEFAULT_LB
    # what /routes reports (the entry's own keys, as written)
    report: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False, hash=False)


def _norm(key: object) -> str:
    return str(key).replace("_", "").lower()


def _get(value: Mapping[str, Any], name: str) -> tuple[str, Any]:
    for key, item in value.items():
        if _norm(key) == name:
            return str(key), item
    return name, None


def _duration(item: Any) -> float | None:
    if isinstance(item, int) and not isinstance(item, bool):
        return item / 1e9 if item >= 0 else None  # Go time.Duration: nanoseconds
    return parse_duration(item) if isinstance(item, str) else None


def _int(item: Any) -> int | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item
    if isinstance(item, str) and item.isdigit():
        return int(item)  # weakly typed, as Consul's decoder
    return None


def _bool(item: Any) -> bool | None:
    if isinstance(item, bool):
        return item
    if isinstance(item, str) and item.lower() in ("1", "t", "true", "0", "f", "false"):
        return item.lower() in ("1", "t", "true")
    return None


def parse_settings(
    value: Mapping[str, Any], where: str
) -> tuple[ResolverSettings, list[tuple[str, str]]]:
    """The settings of one resolver document and (key, message) problems."""
    problems: list[tuple[str, str]] = []

    def at(key: str) -> str:
        return f"{where}.{key}" if where else key

    timeouts: dict[str, float | None] = {}
    for name in ("connecttimeout", "requesttimeout"):
        key, item = _get(value, name)
        timeouts[name] = None
        if item is not None:
            seconds = _duration(item)
            if seconds is None:
                problems.append((at(key), f'{item!r} is not a duration >= 0 (e.g. "5s")'))
            timeouts[name] = seconds or None
    key, raw_lb = _get(value, "loadbalancer")
    lb = LoadBalancer()
    if isinstance(raw_lb, Mapping):
        lb = _load_balancer(raw_lb, at(key), problems)
    key, redirect = _get(value, "redirect")
    if isinstance(redirect, Mapping):
        _redirect(value, redirect, at(key), problems)
    key, failover = _get(value, "failover")
    if isinstance(failover, Mapping):
        _failover(failover, at(key), problems)
    report = {
        k: v
        for k, v in value.items()
        if _norm(k)
        in (
            "connecttimeout",
            "requesttimeout",
            "loadbalancer",
            "redirect",
            "failover",
            "defaultsubset",
        )
        and v not in (None, "", {})
    }
    settings = ResolverSettings(
        timeouts["connecttimeout"],
        timeouts["requesttimeout"],
        lb,
        MappingProxyType(report),
    )
    return settings, problems


def _load_balancer(
    raw: Mapping[str, Any], at: str, problems: list[tuple[str, str]]
) -> LoadBalancer:
    _, policy = _get(raw, "policy")
    policy = policy or ""
    if policy and policy not in POLICIES:
        problems.append((f"{at}.Policy", f"Bad LoadBalancer policy: {policy!r} is not supported"))
        return LoadBalancer()  # the rest depends on the policy: one problem is enough
    lb = LoadBalancer(policy)
    key, ring = _get(raw, "ringhashconfig")
    if ring:
        if policy != "ring_hash":
            problems.append(
                (f"{at}.{key}", f"RingHashConfig specified for incompatible policy {policy!r}")
            )
        elif isinstance(ring, Mapping):
            lo_key, lo = _get(ring, "minimumringsize")
            hi_key, hi = _get(ring, "maximumringsize")
            low = DEFAULT_MIN_RING if lo in (None, 0) else _int(lo)
            high = DEFAULT_MAX_RING if hi in (None, 0) else _int(hi)
            if low is None or low < 0:
                problems.append((f"{at}.{key}.{lo_key}", "must be a number >= 0"))
            elif high is None or high < 0:
                problems.append((f"{at}.{key}.{hi_key}", "must be a number >= 0"))
            elif low > high:
                problems.append(
                    (f"{at}.{key}", f"MinimumRingSize {low} is above MaximumRingSize {high}")
                )
            else:
                lb = LoadBalancer(policy, min_ring=low, max_ring=high)
    key, least = _get(raw, "leastrequestconfig")
    if least:
        if policy != "least_request":
            problems.append(
                (f"{at}.{key}", f"LeastRequestConfig specified for incompatible policy {policy!r}")
            )
        elif isinstance(least, Mapping):
            c_key, count = _get(least, "choicecount")
            choices = DEFAULT_CHOICES if count in (None, 0) else _int(count)
            if choices is None or choices < 2:
                problems.append((f"{at}.{key}.{c_key}", "ChoiceCount must be at least 2"))
            else:
                lb = LoadBalancer(policy, choice_count=choices)
    key, hashes = _get(raw, "hashpolicies")
    if hashes:
        if policy not in HASH_POLICIES:
            problems.append(
                (f"{at}.{key}", f"HashPolicies specified for non-hash-based Policy: {policy!r}")
            )
        elif not isinstance(hashes, list):
            problems.append((f"{at}.{key}", "must be a list"))
        else:
            parsed = [_hash_policy(h, f"{at}.{key}[{i}]", problems) for i, h in enumerate(hashes)]
            lb = LoadBalancer(
                policy, lb.min_ring, lb.max_ring, lb.choice_count, tuple(p for p in parsed if p)
            )
    return lb


def _hash_policy(raw: Any, at: str, problems: list[tuple[str, str]]) -> HashPolicy | None:
    if not isinstance(raw, Mapping):
        problems.append((at, "must be an object"))
        return None
    _, fld = _get(raw, "field")
    _, value = _get(raw, "fieldvalue")
    _, source_ip = _get(raw, "sourceip")
    _, terminal = _get(raw, "terminal")
    _, cookie = _get(raw, "cookieconfig")
    fld, value = fld or "", value or ""
    src, term = _bool(source_ip) or False, _bool(terminal) or False
    before = len(problems)
    if fld and fld not in HASH_FIELDS:
        problems.append((f"{at}.Field", f"Field {fld!r} is not one of {', '.join(HASH_FIELDS)}"))
    if fld and src:
        problems.append(
            (at, f"A single hash policy cannot hash both a source address and a {fld!r}")
        )
    if fld and not value:
        problems.append((at, f"Field {fld!r} was specified without a FieldValue"))
    if value and not fld:
        problems.append((f"{at}.FieldValue", "FieldValue requires a Field to apply to"))
    if not fld and not src:
        problems.append((at, "a hash policy needs a Field or SourceIP"))
    if cookie and fld != "cookie":
        problems.append(
            (f"{at}.CookieConfig", "Only cookie based hash policies can set CookieConfig")
        )
    ttl, path = _cookie_config(cookie, at, problems) if cookie and fld == "cookie" else (None, "")
    return HashPolicy(fld, value, src, term, ttl, path) if len(problems) == before else None


def _cookie_config(raw: Any, at: str, problems: list[tuple[str, str]]) -> tuple[float | None, str]:
    """``CookieConfig`` {Session, TTL, Path}: the generated cookie's lifetime (0.0: a
    session cookie; None: none is generated, as Consul when neither is set) and path."""
    if not isinstance(raw, Mapping):
        problems.append((f"{at}.CookieConfig", "must be an object"))
        return None, ""
    _, session = _get(raw, "session")
    ttl_key, ttl = _get(raw, "ttl")
    _, path = _get(raw, "path")
    seconds = None if ttl in (None, "", 0) else _duration(ttl)
    if ttl not in (None, "", 0) and seconds is None:
        problems.append((f"{at}.CookieConfig.{ttl_key}", f"bad duration {ttl!r}"))
    if _bool(session) and seconds:
        problems.append((f"{at}.CookieConfig", "a session cookie cannot have an associated TTL"))
    if _bool(session):
        return 0.0, str(path or "")
    return seconds, str(path or "")


def _redirect(
    entry: Mapping[str, Any], raw: Mapping[str, Any], at: str, problems: list[tuple[str, str]]
) -> None:
    known = (
        "service",
        "servicesubset",
        "namespace",
        "partition",
        "datacenter",
        "peer",
        "samenessgroup",
    )
    for key in raw:
        if _norm(key) not in known:
            problems.append((f"{at}.{key}", "unknown field"))
    if not any(_get(raw, k)[1] for k in known):
        problems.append((at, "Redirect is empty"))
    if _get(raw, "servicesubset")[1] and not _get(raw, "service")[1]:
        problems.append((at, "Redirect.ServiceSubset defined without Redirect.Service"))
    if _get(raw, "peer")[1] and _get(raw, "datacenter")[1]:
        problems.append((at, "Peer cannot be set with Datacenter"))
    if _get(entry, "subsets")[1]:
        problems.append((at, "Redirect and Subsets cannot both be set"))
    if _get(entry, "failover")[1]:
        problems.append((at, "Redirect and Failover cannot both be set"))


def _failover(raw: Mapping[str, Any], at: str, problems: list[tuple[str, str]]) -> None:
    known = (
        "service",
        "servicesubset",
        "namespace",
        "datacenters",
        "targets",
        "policy",
        "samenessgroup",
    )
    for subset, body in raw.items():
        where = f"{at}.{subset}"
        if not isinstance(body, Mapping):
            problems.append((where, "must be an object"))
            continue
        for key in body:
            if _norm(key) not in known:
                problems.append((f"{where}.{key}", "unknown field"))
        dcs = _get(body, "datacenters")[1]
        targets = _get(body, "targets")[1]
        if dcs is not None and not (isinstance(dcs, list) and all(isinstance(d, str) for d in dcs)):
            problems.append((f"{where}.Datacenters", "must be a list of strings"))
        if targets and dcs:
            problems.append((where, "Targets cannot be set with Datacenters"))
        if not any(_get(body, k)[1] for k in known):
            problems.append(
                (
                    where,
                    "one of Service, ServiceSubset, Namespace, Targets, "
                    "SamenessGroup, or Datacenters is required",
                )
            )
