"""The WebSocket upgrade as an L7 exchange runs it (``docs/l7.md``, "WebSocket").

Which upgrade is forwarded, stripped or refused is :mod:`gwcore.policy.http_upgrade`;
the switched connection is :mod:`gwcore.net.l7_upgrade`. An upgrade request is an
ordinary request until the service answers ``101``: path normalisation, authorization
by the engines (a denial is the ``403`` of any request, and the connection stays
HTTP), the addons, the pooled upstream connection. What differs:

- the fields decided on, handed to the addons and sent to the service keep
  ``Connection: upgrade`` and the client's ``Upgrade`` (Envoy keeps both for an
  upgrade it forwards), re-added after the addons so none can forge or drop them;
- a ``101`` (after ``tgw_http_responseheaders``) is relayed with its ``Upgrade`` and
  ``Connection: upgrade``, ``tgw_http_response`` runs (a ``101`` has no body), the
  resolver's ``RequestTimeout`` stops counting, and the exchange ends only when the
  tunnel does: its record has status ``101`` and the bytes moved after the switch;
- any other answer is an ordinary response, and the connection stays HTTP; an addon
  that turns the service's ``101`` into another status gets the addon-error ``502``
  (:func:`unswitched`: the service's connection has switched, it can carry no HTTP);
- an open tunnel is registered on the step (:mod:`gwcore.runtime.l7_tunnels`) until
  it ends, and decided again on every policy change.
"""

from __future__ import annotations

from typing import Any

from gwcore.contract.http_addons import ANSWERED_BY_GATEWAY, RESPONSE_FAILED_STATUS
from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.l7_core import UpstreamFailure
from gwcore.policy.http_upgrade import (
    REFUSE,
    STRIP_H2C,
    WEBSOCKET,
    classify,
    upgrade_fields,
    without_h2c,
)
from gwcore.runtime.l7_rules import hop_by_hop
from gwcore.runtime.l7_tunnels import policy_mark

__all__ = ["keep_upgrade_fields", "refused_upgrade", "switch", "unswitched"]


def refused_upgrade(exchange: Any) -> bool:
    """Classify the request's upgrade (rules of ``policy.http_upgrade``): remember a
    WebSocket one, strip an h2c one, and answer any other ``403`` with an empty body and
    ``Connection: close`` (Envoy's ``upgrade_failed``; counted as a bad request,
    reason ``upgrade_refused``). True when answered."""
    request = exchange.request
    kind = classify(request.headers, exchange.conn.destination.protocol)
    exchange.upgrade = kind == WEBSOCKET
    if exchange.upgrade:
        # The policy it is decided under: a tunnel opening after a change is decided again.
        exchange.policy_mark = policy_mark(exchange.step.site)
    if kind == STRIP_H2C:
        request.headers = Headers(without_h2c(request.headers))
    if kind != REFUSE:
        return False
    asked = ", ".join(request.headers.get_all("upgrade"))
    exchange.step.bad_request(exchange.conn, "upgrade_refused", f"Upgrade: {asked[:100]!r}")
    exchange._answer(403, b"", "upgrade_refused", [("connection", "close")])
    return True


def keep_upgrade_fields(exchange: Any, headers: Headers) -> None:
    """Add back to ``headers`` (hop-by-hop fields already removed) what a WebSocket
    upgrade forwards: ``connection: upgrade`` and the client's ``Upgrade``."""
    if getattr(exchange, "upgrade", False):
        for name, value in upgrade_fields(exchange.request.headers):
            headers.remove(name)
            headers.add(name, value)


def switch(exchange: Any, response: HttpResponse) -> None:
    """The service answered ``101``: relay it and join the client to the service."""
    stream = exchange.stream
    end = getattr(stream, "upgraded", None)
    take = getattr(exchange.writer, "switch_protocols", None)
    accepted = classify(response.headers) == WEBSOCKET
    if end is None or take is None or not getattr(exchange, "upgrade", False) or not accepted:
        # RFC 9110 §7.8: a server switches only to a protocol the client asked for.
        detail = "the service switched to a protocol the client did not ask for"
        exchange.response_failed(UpstreamFailure("protocol", detail, 502))
        return
    drop = hop_by_hop(response.headers)
    headers = Headers((k, v) for k, v in response.headers if k.lower() not in drop)
    for name, value in upgrade_fields(response.headers):
        headers.add(name, value)
    timer, exchange._timer = exchange._timer, None
    if timer is not None and timer.active():
        timer.cancel()  # a tunnel lasts as long as its peers want (idle_timeout applies)
    exchange.status = 101
    exchange.head_written = True

    def ended(bytes_up: int, bytes_down: int, error: str | None) -> None:
        exchange.step.tunnels.ended(exchange)
        exchange.bytes_in += bytes_up
        exchange.bytes_out += bytes_down
        exchange._finish(101, error)

    if not take(HttpResponse(101, headers), end, ended):
        if not exchange.finished:  # the codec's close may have finished it already
            exchange._finish(None, "protocol")
        return
    flow = exchange.flow
    if flow is not None and exchange.step.wants("tgw_http_response"):
        flow.response = response
        exchange.step.dispatch("tgw_http_response", flow)
    if not exchange.finished:  # live until ended(): re-decided on policy changes
        exchange.step.tunnels.opened(exchange)


def unswitched(exchange: Any, response: HttpResponse) -> bool:
    """An addon changed the service's ``101`` into another status: the service's
    connection has switched and can carry no HTTP response, so the request is answered
    with the addon-error ``502`` (as when ``tgw_http_responseheaders`` raises), and the
    switched connection closes untaken. True when answered."""
    if response.status == 101 or getattr(exchange.stream, "upgraded", None) is None:
        return False
    flow = exchange.flow
    flow.addon_error = flow.addon_error or f"an addon changed the 101 to {response.status}"
    body = b"addon error\n"
    headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
    flow.response = HttpResponse(RESPONSE_FAILED_STATUS, Headers(headers), body)
    flow.answered_by = ANSWERED_BY_GATEWAY
    exchange._answer_flow(flow)
    return True
