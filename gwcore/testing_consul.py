"""A Consul agent double: the HTTP endpoints tgw's Consul plugins use, served by Twisted.

This is a **double**, not Consul. Consul has no Debian package and no installable
package in this environment, so the contract tests run against this in-process HTTP
server, built from ``reference/consul-terminating-gateway.md`` §1-§6 (paths, JSON field
names, blocking-query rules, SPIFFE forms, intention precedence).

What it emulates:

- blocking queries with real waiting: ``?index=N&wait=D`` holds the request until the
  endpoint's index exceeds N or D (default 5m, at most 10m, plus up to D/16 jitter)
  passes; every answer carries ``X-Consul-Index`` (plus ``X-Consul-KnownLeader``);
- per-endpoint indexes from one raft-like counter, so an unrelated write does not
  wake a watch (health per service, config per kind, roots, intentions);
- ``GET /v1/catalog/gateway-services/:gw`` from the ``terminating-gateway`` entry,
  wildcards expanded to non-Connect services with ``FromWildcard: true``;
- ``GET /v1/health/service/:svc`` (``{Node, Service, Checks}``, ``?passing``),
  ``GET /v1/health/state/any``, ``GET /v1/catalog/services``;
- ``GET/PUT/DELETE /v1/config...`` for config entries (404 for a missing one);
- ``GET /v1/agent/connect/ca/roots`` with every root listed and one active, root
  rotation (:meth:`ConsulDouble.rotate_root`) and removal;
- ``GET /v1/agent/connect/ca/leaf/:svc``: leaves signed by the active root with
  Consul's SPIFFE URI (via :mod:`gwcore.pki`), cached and re-signed after a rotation;
- ``GET /v1/connect/intentions/match?by=destination&name=..`` in precedence order
  (the §6 table) from ``service-intentions`` entries;
- ``PUT /v1/catalog/register``, ``/v1/catalog/deregister``, ``/v1/agent/service/register``
  (the agent runs the registration's TCP or HTTP check against the address it names,
  as an agent does: :mod:`gwcore.testing_consul_checks`) and
  ``/v1/agent/service/deregister/:id``;
- an ACL token (``X-Consul-Token`` or ``Authorization: Bearer``; 403 otherwise) and
  per-endpoint permission denial;
- faults: injected error statuses, hanging requests, :meth:`down`/:meth:`up` (the
  port closes and reopens), and :meth:`restart` with a lower index (connections
  dropped, every index reset, data kept as after a snapshot restore).

What it does not emulate: Enterprise namespaces and partitions (always ``default``),
multiple datacenters, ``?filter=``/``?near=``/``?tag=``, hash-based blocking,
``X-Cache``/``Age``, the legacy intentions CRUD API, ``/v1/agent/connect/authorize``,
``service-resolver`` subsets, anti-entropy, ACL policies (one token grants
everything except what :meth:`deny` refuses), check types other than TCP, and
Consul's server-side rate limits.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from twisted.internet import endpoints, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server
from zope.interface import implementer

from gwcore import pki
from gwcore.policy.model import ServiceName
from gwcore.testing import TRUST_DOMAIN
from gwcore.testing_consul_checks import schedule_http

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
TYPICAL = ("", "typical")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_wait(text: str) -> float:
    """A Go duration as Consul parses ``?wait=`` (a bare number means seconds)."""
    if re.fullmatch(r"\d+", text):
        return float(text)
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * _SCALE[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(text)
    return total


def precedence(src_ns: str, src: str, dst_ns: str, dst: str) -> int:
    """Consul's intention precedence table (reference §6)."""
    if dst_ns == "*":
        value = 3
    elif dst == "*":
        value = 6
    else:
        value = 9
    if src_ns == "*":
        value -= 2
    elif src == "*":
        value -= 1
    return value


@dataclass
class _Root:
    cert: x509.Certificate
    key: Any
    name: str
    serial: int
    create_index: int
    modify_index: int

    @property
    def id(self) -> str:
        return pki.fingerprint_hex(self.cert)


@dataclass
class _Leaf:
    leaf: Any
    root_id: str
    create_index: int
    issued_at: float


@dataclass
class _Waiter:
    request: server.Request
    index: int
    current: Callable[[], int]
    answer: Callable[[], None]
    timer: Any = None


@dataclass
class _Fault:
    prefix: str
    status: int
    remaining: int | None  # None: until cleared


@dataclass
class RequestRecord:
    method: str
    path: str
    args: dict[str, list[str]]
    token: str | None


class _Tracking(server.Site):
    def __init__(self, double: ConsulDouble, root: resource.Resource) -> None:
        super().__init__(root)
        self.double = double
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        self.double.accepted += 1
        return super().buildProtocol(addr)


class _AgentResource(resource.Resource):
    isLeaf = True

    def __init__(self, double: ConsulDouble) -> None:
        super().__init__()
        self.double = double

    def render(self, request: server.Request) -> Any:
        return self.double._handle(request)


class ConsulDouble:
    """One Consul agent (and its datacenter) in the reactor; see the module docstring."""

    def __init__(
        self,
        reactor: Any,
        *,
        trust_domain: str = TRUST_DOMAIN,
        datacenter: str = "dc1",
        node: str = "consul-double",
        acl_token: str | None = None,
        leaf_ttl: float = 72 * 3600.0,
        tls: tuple[x509.Certificate, Any] | None = None,
        jitter: bool = True,
    ) -> None:
        self.reactor = reactor
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.node = node
        self.acl_token = acl_token
        self.leaf_ttl = leaf_ttl
        self.tls = tls
        self.jitter = jitter
        self.index = 10
        self._topics: dict[str, int] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}
        self.config: dict[tuple[str, str], dict[str, Any]] = {}
        self.roots: list[_Root] = []
        self.active_root_id = ""
        self.leaves: dict[str, _Leaf] = {}
        self.agent_checks: dict[str, Any] = {}  # check id -> LoopingCall-ish timer
        self.requests: list[RequestRecord] = []
        self.accepted = 0
        self._waiters: list[_Waiter] = []
        self._faults: list[_Fault] = []
        self._hang: list[str] = []
        self._hung: list[server.Request] = []
        self._denied: set[str] = set()
        self.port: Any = None
        self._wrapper: WrappingFactory | None = None
        self.port_number = 0
        self.rotate_root(name="Consul CA Primary Cert")

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> ConsulDouble:
        await self._listen(0)
        return self

    async def _listen(self, port: int) -> None:
        site = _Tracking(self, _AgentResource(self))
        if self.tls is None:
            ep = endpoints.TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1")
        else:
            cert, key = self.tls
            ep = endpoints.SSL4ServerEndpoint(
                self.reactor, port, _ServerContext(cert, key), interface="127.0.0.1"
            )
        self._wrapper = WrappingFactory(site)
        self.port = await ep.listen(self._wrapper)
        self.port_number = self.port.getHost().port

    @property
    def address(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port_number}"

    @property
    def open_connections(self) -> int:
        """Client connections open now (what the plugins cost in sockets)."""
        return len(self._wrapper.protocols) if self._wrapper is not None else 0

    def _drop_connections(self) -> None:
        for waiter in list(self._waiters):
            self._forget(waiter)
        if self._wrapper is not None:
            for p in list(self._wrapper.protocols):
                p.transport.abortConnection()

    async def stop(self) -> None:
        for call in self.agent_checks.values():
            if call.active():
                call.cancel()
        self.agent_checks.clear()
        self._drop_connections()
        if self.port is not None:
            await self.port.stopListening()
            self.port = None

    async def down(self) -> None:
        """The agent goes away: connections reset, the port refuses connections."""
        self._drop_connections()
        if self.port is not None:
            await self.port.stopListening()
            self.port = None

    async def up(self) -> None:
        """The agent is back on the same port, with the same data and indexes."""
        if self.port is None:
            await self._listen(self.port_number)

    def restart(self, index: int = 2) -> None:
        """A restart with a lower index: connections drop, every index falls to ``index``."""
        self._drop_connections()
        self.index = index
        self._topics = {k: min(v, index) for k, v in self._topics.items()}

    # --- faults ---------------------------------------------------------------

    def fail(self, status: int = 500, *, prefix: str = "/v1/", count: int | None = None) -> None:
        """Answer requests whose path starts with ``prefix`` with ``status``."""
        self._faults.append(_Fault(prefix, status, count))

    def hang(self, prefix: str = "/v1/") -> None:
        """Never answer requests whose path starts with ``prefix`` (until :meth:`clear`)."""
        self._hang.append(prefix)

    def deny(self, prefix: str) -> None:
        """The token lacks the permission for paths starting with ``prefix`` (403)."""
        self._denied.add(prefix)

    def clear(self) -> None:
        """Remove every injected fault; hung requests stay hung (their clients time out)."""
        self._faults.clear()
        self._hang.clear()
        self._denied.clear()

    # --- writes (also reachable over HTTP) --------------------------------------

    def _bump(self, *topics: str) -> int:
        self.index += 1
        for topic in topics:
            self._topics[topic] = self.index
        self.reactor.callLater(0, self._wake)
        return self.index

    def _topic(self, *topics: str) -> int:
        return max([self._topics.get(t, 0) for t in topics] + [1])

    def register(self, body: dict[str, Any]) -> None:
        """``PUT /v1/catalog/register``: a node, optionally a service and checks."""
        node = body["Node"]
        index = self._bump("nodes", "services", "checks")
        existing = self.nodes.get(node)
        self.nodes[node] = {
            "ID": body.get("ID", ""),
            "Node": node,
            "Address": body.get("Address", ""),
            "Datacenter": self.datacenter,
            "TaggedAddresses": body.get("TaggedAddresses"),
            "Meta": body.get("NodeMeta") or {},
            "CreateIndex": existing["CreateIndex"] if existing else index,
            "ModifyIndex": index,
        }
        touched = set(self._services_on(node))
        svc = body.get("Service")
        if svc:
            sid = svc.get("ID") or svc["Service"]
            old = self.services.get((node, sid))
            self.services[(node, sid)] = {
                "ID": sid,
                "Service": svc["Service"],
                "Tags": svc.get("Tags") or [],
                "Address": svc.get("Address", ""),
                "Port": svc.get("Port", 0),
                "Meta": svc.get("Meta") or {},
                "Weights": svc.get("Weights") or {"Passing": 1, "Warning": 1},
                "EnableTagOverride": False,
                "Kind": svc.get("Kind", ""),
                **({"Connect": svc["Connect"]} if svc.get("Connect") else {}),
                **({"Proxy": svc["Proxy"]} if svc.get("Proxy") else {}),
                "CreateIndex": old["CreateIndex"] if old else index,
                "ModifyIndex": index,
            }
            touched.add(svc["Service"])
        checks = ([body["Check"]] if body.get("Check") else []) + list(body.get("Checks") or [])
        for check in checks:
            self._put_check(node, check, index)
            touched.update(self._check_services(node, check.get("ServiceID", "")))
        for name in touched:
            self._topics[f"svc:{name}"] = index

    def _put_check(self, node: str, check: dict[str, Any], index: int) -> None:
        cid = check.get("CheckID") or check.get("Name")
        sid = check.get("ServiceID", "")
        service = self.services.get((node, sid))
        old = self.checks.get((node, cid))
        self.checks[(node, cid)] = {
            "Node": node,
            "CheckID": cid,
            "Name": check.get("Name", cid),
            "Status": check.get("Status", "critical"),
            "Notes": "",
            "Output": check.get("Output", ""),
            "ServiceID": sid,
            "ServiceName": service["Service"] if service else "",
            "ServiceTags": [],
            "Type": check.get("Type", "tcp" if check.get("TCP") else ""),
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }

    def _services_on(self, node: str) -> list[str]:
        return [s["Service"] for (n, _), s in self.services.items() if n == node]

    def _check_services(self, node: str, service_id: str) -> list[str]:
        if not service_id:
            return self._services_on(node)
        svc = self.services.get((node, service_id))
        return [svc["Service"]] if svc else []

    def deregister(self, node: str, service_id: str | None = None) -> None:
        """``PUT /v1/catalog/deregister``: a service instance, or the whole node."""
        names = self._services_on(node) if service_id is None else []
        if service_id is not None:
            svc = self.services.pop((node, service_id), None)
            names = [svc["Service"]] if svc else []
            for key in [
                k for k, c in self.checks.items() if k[0] == node and c["ServiceID"] == service_id
            ]:
                del self.checks[key]
        else:
            self.nodes.pop(node, None)
            for key in [k for k in self.services if k[0] == node]:
                del self.services[key]
            for key in [k for k in self.checks if k[0] == node]:
                del self.checks[key]
        self._bump("nodes", "services", "checks", *(f"svc:{n}" for n in names))

    def set_check(self, node: str, check_id: str, status: str, output: str = "") -> None:
        check = self.checks[(node, check_id)]
        if check["Status"] == status:
            return
        names = self._check_services(node, check["ServiceID"])
        index = self._bump("checks", *(f"svc:{n}" for n in names))
        check.update(Status=status, Output=output, ModifyIndex=index)

    def put_config(self, entry: dict[str, Any]) -> None:
        kind, name = entry["Kind"], entry["Name"]
        index = self._bump(f"config:{kind}")
        old = self.config.get((kind, name))
        self.config[(kind, name)] = {
            **entry,
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }

    def delete_config(self, kind: str, name: str) -> None:
        if self.config.pop((kind, name), None) is not None:
            self._bump(f"config:{kind}")

    def link(self, gateway: str, *services: str | dict[str, Any]) -> None:
        """Write the gateway's ``terminating-gateway`` entry linking ``services``."""
        linked = [{"Name": s} if isinstance(s, str) else s for s in services]
        self.put_config({"Kind": "terminating-gateway", "Name": gateway, "Services": linked})

    def intentions(self, destination: str, *sources: tuple[str, str]) -> None:
        """Write the ``service-intentions`` entry of ``destination``: ``(source, action)``."""
        if not sources:
            self.delete_config("service-intentions", destination)
            return
        self.put_config(
            {
                "Kind": "service-intentions",
                "Name": destination,
                "Sources": [{"Name": n, "Action": a, "Type": "consul"} for n, a in sources],
            }
        )

    def rotate_root(self, name: str = "Consul CA Primary Cert") -> _Root:
        """Add a new root and make it active; the old ones stay listed (as Consul does)."""
        cert, key = pki.new_ca(self.trust_domain, common_name=name)
        index = self._bump("roots")
        root = _Root(cert, key, name, cert.serial_number, index, index)
        self.roots.append(root)
        self.active_root_id = root.id
        return root

    def remove_root(self, root_id: str) -> None:
        self.roots = [r for r in self.roots if r.id != root_id]
        self._bump("roots")

    @property
    def active_root(self) -> _Root:
        return next(r for r in self.roots if r.id == self.active_root_id)

    def client_leaf(self, service: str, root: _Root | None = None, datacenter: str = "dc1") -> Any:
        """A leaf for a *client* service signed by ``root`` (default the active one)."""
        root = root or self.active_root
        return pki.service_leaf(
            root.cert, root.key, ServiceName(service), datacenter, self.trust_domain
        )

    # --- HTTP -----------------------------------------------------------------

    def _handle(self, request: server.Request) -> Any:
        path = unquote(request.path.decode())
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        token = request.getHeader("X-Consul-Token")
        bearer = request.getHeader("Authorization")
        if token is None and bearer and bearer.startswith("Bearer "):
            token = bearer[len("Bearer ") :]
        method = request.method.decode()
        self.requests.append(RequestRecord(method, path, args, token))
        request.setHeader("Content-Type", "application/json")
        for prefix in self._hang:
            if path.startswith(prefix):
                self._hung.append(request)
                return server.NOT_DONE_YET
        for fault in self._faults:
            if path.startswith(fault.prefix) and fault.remaining != 0:
                if fault.remaining is not None:
                    fault.remaining -= 1
                request.setResponseCode(fault.status)
                return b"injected failure"
        if self.acl_token is not None and token != self.acl_token:
            request.setResponseCode(403)
            return b"ACL not found"
        if any(path.startswith(p) for p in self._denied):
            request.setResponseCode(403)
            return b"Permission denied"
        try:
            return self._route(request, method, path, args)
        except _HTTPError as e:
            request.setResponseCode(e.status)
            return e.text.encode()

    def _route(self, request: server.Request, method: str, path: str, args: dict) -> Any:
        parts = path.strip("/").split("/")
        if parts[:1] != ["v1"]:
            raise _HTTPError(404, "not found")
        rest = parts[1:]
        if method == "GET":
            if rest[:2] == ["catalog", "gateway-services"] and len(rest) == 3:
                gw = rest[2]
                return self._blocking(
                    request,
                    lambda: self._topic("config:terminating-gateway", "services"),
                    lambda: self._gateway_services(gw),
                )
            if rest == ["catalog", "services"]:
                return self._blocking(
                    request, lambda: self._topic("services"), self._catalog_services
                )
            if rest[:2] == ["health", "service"] and len(rest) == 3:
                svc = rest[2]
                passing = "passing" in args
                return self._blocking(
                    request,
                    lambda: (
                        self._topic(f"svc:{svc}")
                        if f"svc:{svc}" in self._topics
                        else self._topic("services")
                    ),
                    lambda: self._health_service(svc, passing),
                )
            if rest[:2] == ["health", "state"] and len(rest) == 3:
                state = rest[2]
                return self._blocking(
                    request, lambda: self._topic("checks"), lambda: self._health_state(state)
                )
            if rest[0] == "config" and len(rest) == 2:
                kind = rest[1]
                return self._blocking(
                    request,
                    lambda: self._topic(f"config:{kind}"),
                    lambda: [e for (k, _), e in sorted(self.config.items()) if k == kind],
                )
            if rest[0] == "config" and len(rest) == 3:
                kind, name = rest[1], rest[2]
                if (kind, name) not in self.config:
                    request.setHeader("X-Consul-Index", str(self._topic(f"config:{kind}")))
                    raise _HTTPError(404, f'Config entry not found for "{kind}" / "{name}"')
                return self._blocking(
                    request,
                    lambda: self.config.get((kind, name), {}).get("ModifyIndex", 1),
                    lambda: self.config.get((kind, name)),
                )
            if rest in (["agent", "connect", "ca", "roots"], ["connect", "ca", "roots"]):
                return self._blocking(request, lambda: self._topic("roots"), self._roots_body)
            if rest[:4] == ["agent", "connect", "ca", "leaf"] and len(rest) == 5:
                svc = rest[4]
                self._leaf_for(svc)
                return self._blocking(
                    request,
                    lambda: self._leaf_for(svc).create_index,
                    lambda: self._leaf_body(svc),
                )
            if rest == ["connect", "intentions", "match"]:
                if args.get("by") != ["destination"] or not args.get("name"):
                    raise _HTTPError(400, "required query parameters: by=destination, name")
                names = args["name"]
                return self._blocking(
                    request,
                    lambda: self._topic("config:service-intentions"),
                    lambda: {n: self._match(n) for n in names},
                )
        if method == "PUT":
            body = json.loads(request.content.read() or b"null")
            if rest == ["catalog", "register"]:
                self.register(body)
                return b"true"
            if rest == ["catalog", "deregister"]:
                self.deregister(body["Node"], body.get("ServiceID"))
                return b"true"
            if rest == ["config"]:
                self.put_config(body)
                return b"true"
            if rest[:3] == ["agent", "service", "register"]:
                self._agent_register(body)
                return b""
            if rest[:3] == ["agent", "service", "deregister"] and len(rest) == 4:
                self._agent_deregister(rest[3])
                return b""
        if method == "DELETE" and rest[0] == "config" and len(rest) == 3:
            self.delete_config(rest[1], rest[2])
            return b"true"
        raise _HTTPError(404 if method == "GET" else 405, f"no such endpoint: {method} {path}")

    def _blocking(
        self, request: server.Request, current: Callable[[], int], body: Callable[[], Any]
    ) -> Any:
        def answer() -> None:
            if request.finished or request._disconnected:
                return
            request.setHeader("X-Consul-Index", str(current()))
            request.setHeader("X-Consul-KnownLeader", "true")
            request.setHeader("X-Consul-LastContact", "0")
            request.write(json.dumps(body()).encode())
            request.finish()

        raw = request.args.get(b"index")
        index = int(raw[0]) if raw else 0
        if index <= 0 or current() > index:
            answer()
            return server.NOT_DONE_YET
        wait_raw = request.args.get(b"wait")
        try:
            wait = parse_wait(wait_raw[0].decode()) if wait_raw else DEFAULT_WAIT
        except ValueError:
            raise _HTTPError(400, "Invalid wait time") from None
        wait = min(wait, MAX_WAIT)
        if self.jitter:
            wait += random.uniform(0, wait / 16)
        waiter = _Waiter(request, index, current, answer)
        waiter.timer = self.reactor.callLater(wait, self._expire, waiter)
        self._waiters.append(waiter)
        request.notifyFinish().addErrback(lambda _: self._forget(waiter))
        return server.NOT_DONE_YET

    def _expire(self, waiter: _Waiter) -> None:
        waiter.timer = None
        self._forget(waiter)
        waiter.answer()

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        waiter.timer = None

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if waiter.current() > waiter.index:
                self._forget(waiter)
                waiter.answer()

    @property
    def blocked(self) -> int:
        """Blocking queries being held right now."""
        return len(self._waiters)

    # --- bodies (the JSON shapes of reference §5) --------------------------------

    def _connect_capable(self) -> set[str]:
        capable = set()
        for svc in self.services.values():
            connect = svc.get("Connect") or {}
            if connect.get("Native") or connect.get("SidecarService"):
                capable.add(svc["Service"])
            if svc["Kind"] == "connect-proxy":
                capable.add((svc.get("Proxy") or {}).get("DestinationServiceName", ""))
        return capable

    def _gateway_services(self, gateway: str) -> list[dict[str, Any]]:
        entry = self.config.get(("terminating-gateway", gateway))
        if entry is None:
            return []
        out: dict[str, dict[str, Any]] = {}
        wildcard = None
        for linked in entry.get("Services") or []:
            if linked["Name"] == "*":
                wildcard = linked
                continue
            out[linked["Name"]] = self._gateway_service(gateway, linked, entry, False)
        if wildcard is not None:
            capable = self._connect_capable()
            plain = {s["Service"] for s in self.services.values() if s["Kind"] in TYPICAL}
            for name in sorted(plain - capable):
                if name not in out:
                    out[name] = self._gateway_service(
                        gateway, {**wildcard, "Name": name}, entry, True
                    )
        return [out[name] for name in sorted(out)]

    def _gateway_service(
        self, gateway: str, linked: dict[str, Any], entry: dict[str, Any], wildcard: bool
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "Gateway": {"Name": gateway},
            "Service": {"Name": linked["Name"]},
            "GatewayKind": "terminating-gateway",
        }
        for key in ("CAFile", "CertFile", "KeyFile", "SNI"):
            if linked.get(key):
                item[key] = linked[key]
        if wildcard:
            item["FromWildcard"] = True
        item["ServiceKind"] = "service"
        item["CreateIndex"] = entry["CreateIndex"]
        item["ModifyIndex"] = entry["ModifyIndex"]
        return item

    def _catalog_services(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for svc in self.services.values():
            out.setdefault(svc["Service"], [])
            out[svc["Service"]] = sorted(set(out[svc["Service"]]) | set(svc["Tags"]))
        return out

    def _health_service(self, name: str, passing: bool) -> list[dict[str, Any]]:
        out = []
        for (node, sid), svc in sorted(self.services.items()):
            if svc["Service"] != name:
                continue
            checks = [
                {k: v for k, v in c.items() if k not in ("CreateIndex", "ModifyIndex")}
                for (n, _), c in sorted(self.checks.items())
                if n == node and c["ServiceID"] in ("", sid)
            ]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            service = {k: v for k, v in svc.items() if k not in ("Connect", "Proxy")}
            out.append({"Node": self.nodes[node], "Service": service, "Checks": checks})
        return out

    def _health_state(self, state: str) -> list[dict[str, Any]]:
        return [c for _, c in sorted(self.checks.items()) if state == "any" or c["Status"] == state]

    def _roots_body(self) -> dict[str, Any]:
        return {
            "ActiveRootID": self.active_root_id,
            "TrustDomain": self.trust_domain,
            "Roots": [
                {
                    "ID": r.id,
                    "Name": r.name,
                    "SerialNumber": r.serial,
                    "SigningKeyID": r.id,
                    "ExternalTrustDomain": self.trust_domain,
                    "NotBefore": _rfc3339(r.cert.not_valid_before_utc.timestamp()),
                    "NotAfter": _rfc3339(r.cert.not_valid_after_utc.timestamp()),
                    "RootCert": pki.certificate_pem(r.cert).decode(),
                    "IntermediateCerts": None,
                    "Active": r.id == self.active_root_id,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": r.create_index,
                    "ModifyIndex": r.modify_index,
                }
                for r in self.roots
            ],
        }

    def _leaf_for(self, service: str) -> _Leaf:
        cached = self.leaves.get(service)
        now = time.time()
        if (
            cached is None
            or cached.root_id != self.active_root_id
            or now >= cached.issued_at + 0.7 * self.leaf_ttl
        ):
            root = self.active_root
            leaf = pki.service_leaf(
                root.cert,
                root.key,
                ServiceName(service),
                self.datacenter,
                self.trust_domain,
                valid_for=self.leaf_ttl,
            )
            self.index += 1
            cached = self.leaves[service] = _Leaf(leaf, root.id, self.index, now)
        return cached

    def _leaf_body(self, service: str) -> dict[str, Any]:
        issued = self._leaf_for(service)
        cert = issued.leaf.certificate
        chain, key = pki.leaf_pem(issued.leaf)
        return {
            "SerialNumber": format(cert.serial_number, "x").zfill(2),
            "CertPEM": chain.decode(),
            "PrivateKeyPEM": key.decode(),
            "Service": service,
            "ServiceURI": pki.uri_sans(cert)[0],
            "ValidAfter": _rfc3339(cert.not_valid_before_utc.timestamp()),
            "ValidBefore": _rfc3339(cert.not_valid_after_utc.timestamp()),
            "CreateIndex": issued.create_index,
            "ModifyIndex": issued.create_index,
        }

    def _match(self, name: str) -> list[dict[str, Any]]:
        found = []
        for (kind, dest), entry in self.config.items():
            if kind != "service-intentions" or dest not in (name, "*"):
                continue
            dst_ns = entry.get("Namespace") or "default"
            for src in entry.get("Sources") or []:
                src_ns = src.get("Namespace") or "default"
                item: dict[str, Any] = {
                    "ID": "",
                    "Description": src.get("Description", ""),
                    "SourcePeer": src.get("Peer", ""),
                    "SourcePartition": "default",
                    "SourceNS": src_ns,
                    "SourceName": src["Name"],
                    "DestinationPartition": "default",
                    "DestinationNS": dst_ns,
                    "DestinationName": dest,
                    "SourceType": "consul",
                    "Action": src.get("Action", ""),
                    "Precedence": precedence(src_ns, src["Name"], dst_ns, dest),
                    "Meta": {},
                    "CreateIndex": entry["CreateIndex"],
                    "ModifyIndex": entry["ModifyIndex"],
                }
                if src.get("Permissions"):
                    item["Permissions"] = src["Permissions"]
                found.append(item)
        found.sort(key=lambda i: (-i["Precedence"], i["SourceName"], i["DestinationName"]))
        return found

    # --- the agent: self-registration with a TCP check ---------------------------

    def _agent_register(self, body: dict[str, Any]) -> None:
        sid = body.get("ID") or body["Name"]
        check = body.get("Check")
        checks = []
        if check:
            checks.append(
                {
                    "CheckID": check.get("CheckID") or f"service:{sid}",
                    "Name": check.get("Name", f"Service '{body['Name']}' check"),
                    "Status": check.get("Status", "critical"),
                    "ServiceID": sid,
                    "Type": "tcp" if check.get("TCP") else "http" if check.get("HTTP") else "",
                }
            )
        self.register(
            {
                "Node": self.node,
                "Address": "127.0.0.1",
                "Service": {
                    "ID": sid,
                    "Service": body["Name"],
                    "Kind": body.get("Kind", ""),
                    "Address": body.get("Address", ""),
                    "Port": body.get("Port", 0),
                    "Meta": body.get("Meta") or {},
                    "Tags": body.get("Tags") or [],
                },
                "Checks": checks,
            }
        )
        if check and check.get("TCP"):
            interval = parse_wait(check.get("Interval", "10s"))
            self._schedule_tcp(checks[0]["CheckID"], check["TCP"], interval, 0)
        elif check and check.get("HTTP"):
            schedule_http(self, checks[0]["CheckID"], check, parse_wait)

    def _schedule_tcp(self, check_id: str, target: str, interval: float, delay: float) -> None:
        old = self.agent_checks.get(check_id)
        if old is not None and old.active():
            old.cancel()
        self.agent_checks[check_id] = self.reactor.callLater(
            delay, self._run_tcp, check_id, target, interval
        )

    def _run_tcp(self, check_id: str, target: str, interval: float) -> None:
        if (self.node, check_id) not in self.checks:
            return
        host, _, port = target.rpartition(":")
        ep = endpoints.TCP4ClientEndpoint(self.reactor, host.strip("[]"), int(port), timeout=2)

        def passed(proto: Any) -> None:
            proto.transport.loseConnection()
            self._check_result(check_id, "passing", f"TCP connect {target}: Success")

        def failed(reason: Any) -> None:
            self._check_result(check_id, "critical", f"dial tcp {target}: {reason.value}")

        ep.connect(protocol.Factory.forProtocol(protocol.Protocol)).addCallbacks(passed, failed)
        self.agent_checks[check_id] = self.reactor.callLater(
            interval, self._run_tcp, check_id, target, interval
        )

    def _check_result(self, check_id: str, status: str, output: str) -> None:
        if (self.node, check_id) in self.checks:
            self.set_check(self.node, check_id, status, output)

    def _agent_deregister(self, service_id: str) -> None:
        for key, check in list(self.checks.items()):
            if key[0] == self.node and check["ServiceID"] == service_id:
                call = self.agent_checks.pop(check["CheckID"], None)
                if call is not None and call.active():
                    call.cancel()
        self.deregister(self.node, service_id)

    def health_of(self, service: str) -> list[dict[str, Any]]:
        """What ``GET /v1/health/service/<service>`` answers now (for assertions)."""
        return self._health_service(service, False)


class _HTTPError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@implementer(IOpenSSLServerConnectionCreator)
class _ServerContext:
    """A server TLS context from cryptography objects (Twisted's CertificateOptions
    still wants deprecated pyOpenSSL ones)."""

    def __init__(self, cert: x509.Certificate, key: Any) -> None:
        from OpenSSL import SSL

        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.use_certificate(cert)
        self._context.use_privatekey(key)

    def serverConnectionForTLS(self, tls_protocol: Any) -> Any:
        from OpenSSL import SSL

        return SSL.Connection(self._context, None)


def server_certificate(ca_cert: x509.Certificate, ca_key: Any) -> tuple[x509.Certificate, Any]:
    """A TLS server certificate for the double on 127.0.0.1 (IP SAN), signed by a test CA."""
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes

    key = pki.new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "consul")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


@dataclass
class Recorder:
    """Collects calls (for a test's callbacks)."""

    items: list[Any] = field(default_factory=list)

    def __call__(self, item: Any) -> None:
        self.items.append(item)


def wait_deferred(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def find(records: Iterable[RequestRecord], prefix: str) -> list[RequestRecord]:
    return [r for r in records if r.path.startswith(prefix)]
