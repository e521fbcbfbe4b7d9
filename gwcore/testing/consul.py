"""A Consul agent double: the HTTP endpoints tgw's Consul plugins use, served by Twisted.

This is a **double**, not Consul. Consul has no Debian package and no installable
package in this environment, so the contract tests run against this in-process HTTP
server, built from ``reference/consul-terminating-gateway.md`` §1-§6 (paths, JSON field
names, blocking-query rules, SPIFFE forms, intention precedence).

What it emulates:

- blocking queries with real waiting: ``?index=N&wait=D`` holds the request until the
  endpoint's index exceeds N or D (default 5m, at most 10m, plus up to D/16 jitter)
  passes; every answer carries ``X-Consul-Index`` (plus ``X-Consul-KnownLeader``);
- Consul's indexes (:mod:`gwcore.testing.consul_state`, after ``catalog.go``): one
  raft-like counter, an index per table, per service and per node; a write that
  changes nothing moves nothing; a node update moves the node's and its services'
  indexes, not the ``services``/``checks`` tables; config entries read back carry
  ``Hash`` (uint64), ``CreateIndex`` and ``ModifyIndex``, and intention sources inherit
  the destination's namespace and partition (``normalize()``);
- ``GET /v1/catalog/gateway-services/:gw`` from the ``terminating-gateway`` entry
  (``ServiceKind: "destination"`` for a linked name with no instances whose
  ``service-defaults`` has a ``Destination``, as Consul's catalog classifies it),
  wildcards expanded to non-Connect services with ``FromWildcard: true``;
- ``GET /v1/health/service/:svc`` (``{Node, Service, Checks}``, ``?passing``, ``?ns=``,
  ``?partition=``), ``GET /v1/health/state/any``, ``GET /v1/catalog/services``,
  ``GET /v1/catalog/nodes``; ``GET /v1/agent/self`` (``DebugConfig`` with the ACL and
  default-intention settings given to the constructor, ``Member.Addr``);
- ``?dc=`` naming another datacenter: answered by that datacenter's double once the
  doubles are joined (:func:`gwcore.testing.consul_mesh.federate`), else a 500, as an
  agent without a WAN path answers; ``GET /v1/health/connect/:svc``,
  ``/v1/catalog/datacenters`` and ``/v1/internal/federation-states/mesh-gateways``, what
  a mesh gateway reads (:mod:`gwcore.testing.consul_mesh`);
- ``GET/PUT/DELETE /v1/config...`` for config entries (404 for a missing one), one
  entry per kind, name, namespace and partition (``?ns=``, ``?partition=``), one index
  per kind; ``proxy-defaults``/``mesh`` have fixed names (consul_state rule 7);
- ``GET /v1/agent/connect/ca/roots`` with every root listed and one active, root
  rotation (:meth:`ConsulDouble.rotate_root`) and removal;
- ``GET /v1/agent/connect/ca/leaf/:svc`` (``?ns=``, ``?partition=``): leaves signed by
  the active root, or by its intermediate with ``intermediate=True`` (listed in the
  root's ``IntermediateCerts``, appended to ``CertPEM``), with Consul's SPIFFE URI (via
  :mod:`gwcore.contract.pki`) and a colon-hex ``SerialNumber``, cached and re-signed after a
  rotation;
- ``GET /v1/connect/intentions/match?by=destination&name=..`` in precedence order
  (the §6 table) from ``service-intentions`` entries, ``SourcePeer`` and
  ``SourceSamenessGroup`` included, scoped by ``?ns=``;
- ``PUT /v1/catalog/register``, ``/v1/catalog/deregister``, ``/v1/agent/service/register``
  (the agent runs the registration's TCP or HTTP check against the address it names,
  as an agent does: :mod:`gwcore.testing.consul_checks`) and
  ``/v1/agent/service/deregister/:id``;
- an ACL token (``X-Consul-Token`` or ``Authorization: Bearer``; 403 otherwise) and
  per-endpoint permission denial;
- faults: injected error statuses, hanging requests, :meth:`down`/:meth:`up` (the
  port closes and reopens), and :meth:`restart` with a lower index (connections
  dropped, every index reset, data kept as after a snapshot restore).

What it does not emulate: ``ns=*`` listings, WAN latency or a partitioned WAN,
``?filter=``/``?near=``/``?tag=``, hash-based blocking, ``X-Cache``/``Age``, the legacy
intentions CRUD API, ``/v1/agent/connect/authorize``, ``service-resolver`` subsets,
anti-entropy, ACL policies (one token grants everything except what :meth:`deny`
refuses), check types other than TCP, and Consul's server-side rate limits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from cryptography import x509
from twisted.internet import endpoints
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

from gwcore.testing.consul_agent import _AgentEndpoints
from gwcore.testing.consul_connect import _ConnectCA, _ServerContext, precedence, server_certificate
from gwcore.testing.consul_http import (
    DEFAULT_WAIT,
    MAX_WAIT,
    Recorder,
    RequestRecord,
    _Fault,
    _HTTPError,
    _scope,
    _Waiter,
    find,
    parse_wait,
    wait_deferred,
)
from gwcore.testing.consul_mesh import _MeshEndpoints
from gwcore.testing.consul_state import CatalogStore, ConfigEntryError, Indexes
from gwcore.testing.fakes import TRUST_DOMAIN

if TYPE_CHECKING:
    from gwcore.testing.consul_connect import _Leaf, _Root

__all__ = [
    "ConsulDouble",
    "Recorder",
    "RequestRecord",
    "find",
    "parse_wait",
    "precedence",
    "server_certificate",
    "wait_deferred",
]


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


class ConsulDouble(_ConnectCA, _AgentEndpoints, _MeshEndpoints):
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
        acls_enabled: bool | None = None,
        acl_default_policy: str = "deny",
        default_intention_policy: str = "",
        intermediate: bool = False,
        node_address: str = "127.0.0.1",
    ) -> None:
        self.reactor = reactor
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self.node = node
        self.acl_token = acl_token
        self.leaf_ttl = leaf_ttl
        self.tls = tls
        self.jitter = jitter
        # /v1/agent/self: ACLs are on when a token is required, unless said otherwise.
        self.acls_enabled = acl_token is not None if acls_enabled is None else acls_enabled
        self.acl_default_policy = acl_default_policy
        self.default_intention_policy = default_intention_policy
        self.intermediate = intermediate
        self.node_address = node_address
        self.agent_services: dict[str, dict[str, Any]] = {}  # bodies of agent registrations
        self.federation: dict[str, ConsulDouble] = {}  # datacenter -> double (federate())
        self._connect_names: dict[str, set[str]] = {}  # consul_mesh.connect_index
        self.indexes = Indexes()
        self.store = CatalogStore(datacenter, self.indexes)
        self.nodes = self.store.nodes
        self.services = self.store.services
        self.checks = self.store.checks
        self.config = self.store.config
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
        self.indexes.lower_to(index)

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

    @property
    def index(self) -> int:
        """The raft counter: the number of the last write."""
        return self.indexes.raft

    def _bump(self, *topics: str) -> int:
        index = self.indexes.next()
        self.indexes.touch(index, *topics)
        self._changed()
        return index

    def _changed(self) -> None:
        self.reactor.callLater(0, self._wake)
        self.wake_federation()

    def _topic(self, *topics: str) -> int:
        return self.indexes.get(*topics)

    def register(self, body: dict[str, Any]) -> None:
        """``PUT /v1/catalog/register`` with Consul's index rules (:mod:`.testing_consul_state`)."""
        self.store.register(body)
        self._changed()

    def deregister(self, node: str, service_id: str | None = None) -> None:
        """``PUT /v1/catalog/deregister``: a service instance, or the whole node."""
        self.store.deregister(node, service_id)
        self._changed()

    def set_check(self, node: str, check_id: str, status: str, output: str = "") -> None:
        self.store.set_check(node, check_id, status, output)
        self._changed()

    def put_config(self, entry: dict[str, Any]) -> None:
        self.store.put_config(entry)
        self._changed()

    def delete_config(
        self, kind: str, name: str, namespace: str = "default", partition: str = "default"
    ) -> None:
        self.store.delete_config(kind, name, namespace, partition)
        self._changed()

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

    # --- HTTP -----------------------------------------------------------------

    def _handle(self, request: server.Request) -> Any:
        path = unquote(request.path.decode())
        # Go's url.ParseQuery keeps a bare "?passing" (no "="); Twisted's parser drops it.
        query = request.uri.partition(b"?")[2].decode(errors="replace")
        args: dict[str, list[str]] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            args.setdefault(key, []).append(value)
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
        dc = (args.get("dc") or [self.datacenter])[0]
        if dc != self.datacenter and dc in self.federation:  # over the WAN (consul_mesh)
            return self._remote(self.federation[dc], request, method, path, args)
        if dc != self.datacenter:
            request.setResponseCode(500)  # what an agent without a WAN path answers
            return f"No path to datacenter {dc!r}".encode()
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
                    lambda: self._gateway_services(gw, *_scope(args)),
                )
            if rest == ["catalog", "services"]:
                return self._blocking(
                    request, lambda: self._topic("services"), self.store.catalog_services
                )
            if rest == ["agent", "self"]:
                return json.dumps(self._agent_self()).encode()
            if rest == ["catalog", "nodes"]:
                return self._blocking(
                    request,
                    lambda: self._topic("nodes"),
                    lambda: [n for _, n in sorted(self.nodes.items())],
                )
            if rest[:2] == ["health", "service"] and len(rest) == 3:
                svc = rest[2]
                passing = "passing" in args
                return self._blocking(
                    request,
                    lambda: self.store.service_index(svc),
                    lambda: self.store.health_service(svc, passing, *_scope(args)),
                )
            if rest[:2] == ["health", "connect"] and len(rest) == 3:
                svc, passing = rest[2], "passing" in args
                return self._blocking(
                    request,
                    lambda: self.connect_index(svc),
                    lambda: self.health_connect(svc, passing, *_scope(args)),
                )
            if rest == ["catalog", "datacenters"]:
                return json.dumps(self.datacenters()).encode()
            if rest == ["internal", "federation-states", "mesh-gateways"]:
                return self._blocking(request, self.fedstate_index, self.mesh_gateways_by_dc)
            if rest[:2] == ["health", "state"] and len(rest) == 3:
                state = rest[2]
                return self._blocking(
                    request, lambda: self._topic("checks"), lambda: self.store.health_state(state)
                )
            if rest[0] == "config" and len(rest) == 2:
                kind = rest[1]
                return self._blocking(
                    request,
                    lambda: self._topic(f"config:{kind}"),
                    lambda: self.store.entries(kind, *_scope(args)),
                )
            if rest[0] == "config" and len(rest) == 3:
                kind, name = rest[1], rest[2]
                scope = _scope(args)
                if self.store.entry(kind, name, *scope) is None:
                    request.setHeader("X-Consul-Index", str(self._topic(f"config:{kind}")))
                    raise _HTTPError(404, f'Config entry not found for "{kind}" / "{name}"')
                return self._blocking(
                    request,
                    lambda: (self.store.entry(kind, name, *scope) or {}).get("ModifyIndex", 1),
                    lambda: self.store.entry(kind, name, *scope),
                )
            if rest in (["agent", "connect", "ca", "roots"], ["connect", "ca", "roots"]):
                return self._blocking(request, lambda: self._topic("roots"), self._roots_body)
            if rest[:4] == ["agent", "connect", "ca", "leaf"] and len(rest) == 5:
                svc = rest[4]
                scope = _scope(args)
                self._leaf_for(svc, *scope)
                return self._blocking(
                    request,
                    lambda: self._leaf_for(svc, *scope).create_index,
                    lambda: self._leaf_body(svc, *scope),
                )
            if rest == ["connect", "intentions", "match"]:
                if args.get("by") != ["destination"] or not args.get("name"):
                    raise _HTTPError(400, "required query parameters: by=destination, name")
                names = args["name"]
                ns = _scope(args)[0]
                return self._blocking(
                    request,
                    lambda: self._topic("config:service-intentions"),
                    lambda: {n: self._match(n, ns) for n in names},
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
                try:
                    self.put_config(body)
                except ConfigEntryError as e:
                    raise _HTTPError(500, str(e)) from None
                return b"true"
            if rest[:3] == ["agent", "service", "register"]:
                self._agent_register(body)
                return b""
            if rest[:3] == ["agent", "service", "deregister"] and len(rest) == 4:
                self._agent_deregister(rest[3])
                return b""
        if method == "DELETE" and rest[0] == "config" and len(rest) == 3:
            self.delete_config(rest[1], rest[2], *_scope(args))
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

    # --- the agent: self-registration with a TCP check ---------------------------

    def health_of(self, service: str) -> list[dict[str, Any]]:
        """What ``GET /v1/health/service/<service>`` answers now (for assertions)."""
        return self.store.health_service(service, False)
