"""Self-registration of a ``consul_catalog`` gateway instance with its local agent.

The instance registers as a ``terminating-gateway`` service (``PUT
/v1/agent/service/register``) with a TCP check once its listener is open, retrying with
back-off, and the check dials the address the service is registered with: the agent
may run in another network namespace (a sidecar container, consul-dataplane), where
``127.0.0.1`` is not tgw. For a wildcard bind registered without an address Consul gives
the service its node's address, so the check dials the agent's node address
(``Member.Addr`` of ``/v1/agent/self``); ``check_address`` overrides both.

With ``check = "http"`` the check is an HTTP GET of the admin endpoint's ``/ready``
instead (:func:`gwcore.policy.registration.http_check`). On SIGTERM,
:meth:`SelfRegistration.withdraw_registration` deregisters before the site drains
(``gwcore.runtime.drain``) and stops any retry from registering again.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred

from gwcore.net.consul import ConsulError, backoff_delay
from gwcore.policy.registration import http_check


class SelfRegistration:
    """Mixed into :class:`~gwcore.plugins.consul_catalog.ConsulCatalogSource`, whose
    ``_site``, ``settings``, ``client``, ``freshness``, ``_rng`` and registration
    attributes it uses."""

    _site: Any
    settings: Any
    client: Any
    freshness: Any
    gateway: str
    service_id: str | None
    _rng: Any
    _running: bool
    _registered: bool
    _withdrawn: bool
    _register_call: Any
    _register_failures: int
    registration_kind = "terminating-gateway"  # a mesh site registers as "mesh-gateway"

    def owns_listener(self, site: str, address: str) -> bool:
        """Whether the site that started at ``address`` is this source's site."""
        if site != self._site.name or not self._running:
            return False
        # Compare listeners, so two gateways in one process never take each other's
        # registration.
        listening = self._site.listening_address()
        if listening is None:
            return True
        return f"{listening[0]}:{listening[1]}" == address

    def register(self, address: str) -> None:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        port = int(port_text)
        wildcard = host in ("0.0.0.0", "::", "")
        reg_address = self.settings.register_address or ("" if wildcard else host)
        # The agent dials the check, maybe from another network namespace (a sidecar
        # container, consul-dataplane): so the address the service is registered with,
        # or for a wildcard bind the node's (the agent's), never a loopback guess.
        check_host = self.settings.check_address or reg_address
        self.service_id = self.settings.service_id or (
            f"{self.gateway}-{reg_address or socket.gethostname()}-{port}"
        )
        self._check_port = port
        target = f"[{check_host}]:{port}" if ":" in check_host else f"{check_host}:{port}"
        body = {
            "ID": self.service_id,
            "Name": self.gateway,
            "Kind": self.registration_kind,
            "Address": reg_address,
            "Port": port,
            "Meta": {"tgw-site": self._site.name},
            "Check": {
                "CheckID": f"{self.service_id}:tcp",
                "Name": "tgw listener (TCP)",
                "TCP": target,
                "Interval": f"{int(self.settings.check_interval * 1000)}ms",
                "Timeout": "5s",
            },
        }
        if self.settings.check == "http":
            ready = http_check(self.service_id, self._site, self.settings)
            if ready is not None:
                body["Check"] = ready  # the agent GETs /ready (gwcore.runtime.drain)
        self._register_body = body
        self._check_host = check_host
        self._try_register()

    def withdraw_registration(self) -> Deferred[None]:
        """Deregister now and never register again (the instance is stopping)."""
        self._withdrawn = True
        if self._register_call is not None and self._register_call.active():
            self._register_call.cancel()
        return Deferred.fromCoroutine(self._deregister())

    async def _deregister(self) -> None:
        if self._registered and self.client is not None and self.service_id:
            self._registered = False
            try:
                await self.client.put(
                    "agent-deregister", f"/v1/agent/service/deregister/{self.service_id}"
                )
                self._site.log.info("deregistered {id} from Consul", id=self.service_id)
            except ConsulError as e:
                self._site.log.warn("could not deregister from Consul: {e}", e=str(e))

    async def _put_registration(self) -> Any:
        assert self.client is not None
        body = self._register_body
        if not self._check_host and "TCP" in body["Check"]:
            # A wildcard bind registered without an address: Consul uses the node's
            # address, which is the agent's (Member.Addr in /v1/agent/self).
            response = await self.client.get("agent-self", "/v1/agent/self")
            member = (response.json() or {}).get("Member") or {}
            host = member.get("Addr") or ""
            if not host:
                raise ConsulError("agent-self", "invalid", "no Member.Addr in /v1/agent/self")
            port = self._check_port
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            body = {**body, "Check": {**body["Check"], "TCP": target}}
            self._register_body = body
            self._check_host = host
        return await self.client.put("agent-register", "/v1/agent/service/register", body)

    def _try_register(self) -> None:
        self._register_call = None
        if not self._running or self.client is None or self._withdrawn:
            return
        d = Deferred.fromCoroutine(self._put_registration())

        def done(_: Any) -> None:
            self._registered = True
            self._register_failures = 0
            self.freshness.ok("agent-register")
            self._site.log.info(
                "registered {id} with Consul as {gateway}", id=self.service_id, gateway=self.gateway
            )
            if self._withdrawn:  # the stop began while the registration was in flight
                Deferred.fromCoroutine(self._deregister())

        def failed(f: Any) -> None:
            if isinstance(f.value, ConsulError):
                self.freshness.failed(f.value)
            else:
                self._site.log.failure("registering with Consul failed", f)
            if not self._running:
                return
            self._register_failures += 1
            consul = self.settings.consul
            delay = backoff_delay(
                self._register_failures, consul.retry_min, consul.retry_max, self._rng
            )
            self._register_call = self._site.reactor.callLater(delay, self._try_register)

        d.addCallbacks(done, failed)
