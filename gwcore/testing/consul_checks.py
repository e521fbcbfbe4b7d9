"""HTTP checks of the Consul double's agent (:mod:`gwcore.testing.consul`).

What a Consul agent does with a registration's ``Check.HTTP`` (Consul's
``agent/checks/check.go``, ``CheckHTTP``): every ``Interval`` it sends
``GET <url>`` (``Method`` may say otherwise) with a ``Timeout`` (10 s by default);
a 2xx answer makes the check ``passing``, 429 ``warning``, anything else or no
answer ``critical``; the output records the status line. The first run starts at
once, as the agent's does (a random stagger is left out: tests want it now).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent

DEFAULT_TIMEOUT = 10.0


def http_status(code: int) -> str:
    """The check status Consul gives an HTTP answer's status code."""
    if 200 <= code < 300:
        return "passing"
    if code == 429:
        return "warning"
    return "critical"


def schedule_http(double: Any, check_id: str, check: dict[str, Any], parse_wait: Any) -> None:
    """Start running the registration ``check`` (which has ``HTTP``) as ``check_id``."""
    interval = parse_wait(check.get("Interval", "10s"))
    timeout = parse_wait(check["Timeout"]) if check.get("Timeout") else DEFAULT_TIMEOUT
    method = (check.get("Method") or "GET").encode()
    url = check["HTTP"]
    agent = Agent(double.reactor, connectTimeout=timeout)

    def run() -> None:
        if (double.node, check_id) not in double.checks:
            return
        d: Deferred[Any] = agent.request(method, url.encode())
        d.addTimeout(timeout, double.reactor)

        def answered(response: Any) -> None:
            line = f"HTTP {method.decode()} {url}: {response.code} {response.phrase.decode()}"
            report(http_status(response.code), line)
            response.deliverBody(Protocol())  # read and dropped, as the agent does

        def failed(reason: Any) -> None:
            report("critical", f"Get {url}: {reason.getErrorMessage()}")

        d.addCallbacks(answered, failed)
        double.agent_checks[check_id] = double.reactor.callLater(interval, run)

    def report(status: str, output: str) -> None:
        if (double.node, check_id) in double.checks:
            double.set_check(double.node, check_id, status, output)

    old = double.agent_checks.get(check_id)
    if old is not None and old.active():
        old.cancel()
    double.agent_checks[check_id] = double.reactor.callLater(0, run)
