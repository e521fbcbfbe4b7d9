"""The agent endpoints of the Consul double: ``/v1/agent/self`` and agent service
registration with its TCP check.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints, protocol

from gwcore.testing.consul_checks import schedule_http
from gwcore.testing.consul_http import parse_wait


class _AgentEndpoints:
    """The agent endpoints of the double: ``/v1/agent/self`` and service (de)registration with
    the TCP check an agent runs. A part of :class:`~gwcore.testing.consul.ConsulDouble`."""

    def _agent_self(self) -> dict[str, Any]:
        """The parts of ``GET /v1/agent/self`` tgw reads (``Config``, ``DebugConfig``)."""
        debug: dict[str, Any] = {
            "ACLsEnabled": self.acls_enabled,
            "ACLResolverSettings": {"ACLDefaultPolicy": self.acl_default_policy},
            "Datacenter": self.datacenter,
            "NodeName": self.node,
        }
        if self.default_intention_policy:
            debug["DefaultIntentionPolicy"] = self.default_intention_policy
        config = {"Datacenter": self.datacenter, "NodeName": self.node, "Server": False}
        member = {"Name": self.node, "Addr": self.node_address, "Port": 8301}
        return {"Config": config, "DebugConfig": debug, "Member": member, "Meta": {}}

    def _agent_register(self, body: dict[str, Any]) -> None:
        sid = body.get("ID") or body["Name"]
        self.agent_services[sid] = body
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
                "Address": self.node_address,
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
