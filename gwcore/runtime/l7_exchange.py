"""One HTTP request at an L7 destination, from its head to its access-log record.

The steps, in order (the framing-neutral contract is :mod:`gwcore.net.l7_core`):

1. **Normalise** the path with the catalog's ``mesh`` options
   (``HTTP.Incoming.RequestNormalization``): a path that cannot be normalised safely
   is answered 400; ``UNESCAPE_AND_REDIRECT`` of an escaped slash is answered 307 to
   the normalised path. Header names with underscores are allowed, dropped or refused
   (400) per ``headers_with_underscores_action``.
2. **Authorize** with ``AuthzRequest(..., http=HttpRequestFacts)`` through the site's
   authorizer, under the policy in force now (the newest site after a reload): deny
   overrides, the default policy when all abstain, an engine failure is a deny.
   A denial is ``403`` with body ``RBAC: access denied``; the connection stays usable.
   The request body is not read before the decision.
3. **Addons** ``tgw_http_requestheaders`` (may rewrite the request or answer it).
4. **Upstream**: hop-by-hop fields removed (RFC 9110 §7.6.1), ``Host`` kept, the
   request sent on a pooled connection; its body streamed with flow control.
5. **Response** streamed back: ``tgw_http_responseheaders``, hop-by-hop fields
   removed, body with flow control, ``tgw_http_response`` at its end. Failures:
   502 (no endpoint, reset before a head), 503 (pool and queue full), 504 (the
   resolver's ``RequestTimeout``); after a head was sent the exchange can only abort.
   ``tgw_http_error`` on any failure.
6. **Record**: one access-log record (``record_type = "request"``) and the metrics.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from gwcore.contract.http_flow import Headers, HttpFlow, HttpRequest, HttpResponse
from gwcore.net.access_fields import rfc3339
from gwcore.net.h11_trusted import same_provenance
from gwcore.net.l7_core import UpstreamFailure
from gwcore.policy.http_facts import HttpRequestFacts
from gwcore.policy.model import Decision
from gwcore.policy.xfcc import XFCC_HEADER
from gwcore.runtime.l7_rules import (
    PathRejected,
    RedirectPath,
    gateway_headers,
    headers_with_underscores,
    hop_by_hop,
    request_id,
    with_request_id,
    without_hop_by_hop,
)
from gwcore.runtime.l7_websocket import keep_upgrade_fields, refused_upgrade, switch

if TYPE_CHECKING:
    from gwcore.net.l7_core import Producer, ResponseWriter, UpstreamStream

log = Logger(namespace="tgw.http")

DENIED_BODY = b"RBAC: access denied"
"""Envoy's RBAC filter answers exactly this (Consul's L7 intentions)."""

METHOD_CLASSES = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

_FAILURE_BODIES = {
    502: b"upstream connect error or disconnect/reset before headers\n",
    503: b"upstream overflow\n",
    504: b"upstream request timeout\n",
}


class L7Exchange:
    """One request's way through the gateway (an ``l7_core.Exchange`` and ``ResponseSink``)."""

    def __init__(
        self, step: Any, conn: Any, request: HttpRequest, writer: ResponseWriter, link: Any
    ):
        self.step = step
        self.conn = conn
        self.link = link  # the connection's starter: decides with its cached facts
        self.request = request
        self.writer = writer
        self.started = time.monotonic()
        self.start_time = time.time()
        self.path = request.path
        self.stream: UpstreamStream | None = None
        self._producer: Producer | None = None
        self.decision: Decision | None = None
        self.flow: HttpFlow | None = None
        self.status: int | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.head_written = False
        self.finished = False
        self.error: str | None = None
        self.upstream_seconds: float | None = None
        self._pending: Any = None
        self._timer: Any = None
        self.outgoing: Headers = request.headers  # gateway_headers(), set in begin()
        self.xfcc: str | None = None
        self._chunked = "chunked" in (request.headers.get("transfer-encoding") or "").lower()
        self.upgrade = False  # a WebSocket upgrade (gwcore.runtime.l7_websocket)

    # --- the codec's side (l7_core.Exchange) -------------------------------------------

    @property
    def request_producer(self) -> Producer | None:
        return self._producer

    @request_producer.setter
    def request_producer(self, producer: Producer | None) -> None:
        self._producer = producer
        if self.stream is not None:
            self.stream.set_request_producer(producer)

    def request_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.stream is not None and not self.finished:
            self.stream.send_data(data)

    def request_end(self, trailers: Headers | None = None) -> None:
        if self.finished or self.stream is None:
            return
        flow = self.flow
        if flow is not None and self.step.wants("tgw_http_request"):
            # Before the end goes upstream: an addon may still change the trailers, or
            # answer (or fail closed) and the upstream never gets a complete request.
            flow.request.trailers = trailers
            self.step.dispatch("tgw_http_request", flow)
            if self._addon_answered(flow):
                return
            trailers = flow.request.trailers
        self.stream.send_end(trailers)

    def client_gone(self, reason: str) -> None:
        if self.finished:
            return
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.cancel()
        if self.stream is not None:
            self.stream.cancel(reason)
        self._failed_hook(f"client_gone: {reason}")
        self._finish(None, "client_gone")

    # --- 1. normalise, 2. authorize ---------------------------------------------------

    def begin(self) -> L7Exchange:
        mesh = self.step.mesh_http()
        if self._refused_as_envoy_does():
            return self
        options = mesh.normalization
        try:
            path = self.step.paths.normalize(self.request.path, options, self.request.method)
            kept = headers_with_underscores(
                self.request.headers.items(), options.headers_with_underscores_action
            )
        except PathRejected as e:
            reason = "header_underscore" if e.reason == "header_underscore" else "path"
            self.step.bad_request(self.conn, reason, f"{e.reason}: {self.request.path[:200]!r}")
            self._answer(400, b"Bad Request\n", f"{reason}_rejected")
            return self
        if isinstance(path, RedirectPath):
            self._answer(307, b"", "redirect", [("location", str(path))])
            return self
        self.path = path = str(path)
        if len(kept) != len(self.request.headers):
            self.request.headers = Headers(kept)
        # What the service will get, decided on as such (OPA input, header matches).
        self.outgoing, self.xfcc = gateway_headers(
            self.request.headers, self.conn, mesh.sanitize_x_forwarded_client_cert
        )
        keep_upgrade_fields(self, self.outgoing)
        facts = HttpRequestFacts(
            method=self.request.method,
            path=path,
            authority=self.request.authority,
            scheme=self.request.scheme,
            protocol="HTTP/2" if self.request.http_version == "HTTP/2" else "HTTP/1.1",
            headers=tuple([(k.lower(), v) for k, v in self.outgoing.items()]),
            original_path=self.request.path,
        )
        answer = self.link.decide(facts)
        if isinstance(answer, Decision):
            # Decided at once (intentions, a cached OPA answer): no Deferred, the same
            # steps and the same failure handling as a Deferred's callbacks.
            try:
                self._decided(answer)
            except Exception:
                self._internal_error(Failure())
            return self
        self._pending = answer
        answer.addCallback(self._decided)
        answer.addErrback(self._internal_error)
        return self

    def _refused_as_envoy_does(self) -> bool:
        """Requests Consul's Envoy listener never routes (``docs/l7.md``, "Refused
        requests"): an HTTP/1.0 request (``accept_http_10`` is off: 426, then close),
        an HTTP/1.1 ``CONNECT`` (no route matches it without a ``connect_matcher``:
        404). Counted as bad requests, recorded, never sent upstream."""
        request = self.request
        if request.http_version == "HTTP/1.0":
            self.step.bad_request(self.conn, "http_1_0", f"{request.method} {request.path[:200]!r}")
            self._answer(426, b"", "http_1_0_rejected", [("connection", "close")])
            return True
        if request.method == "CONNECT":
            self.step.bad_request(self.conn, "connect_refused", f"CONNECT {request.path[:200]!r}")
            self._answer(404, b"", "route_not_found")
            return True
        return refused_upgrade(self)

    def _decided(self, decision: Decision) -> None:
        self._pending = None
        if self.finished:
            return
        self.decision = decision
        if not decision.allowed:
            self.step.denied(self.conn, decision, self)
            self._answer(403, DENIED_BODY, "denied", [("content-type", "text/plain")])
            return
        self._allowed()

    # --- 3. addons, 4. upstream -------------------------------------------------------

    def _allowed(self) -> None:
        if not self.step.addons():
            self._send_upstream(self._upstream_request())
            return
        conn = self.conn
        request = self.request
        flow = self.flow = HttpFlow(
            request=HttpRequest(
                method=request.method,
                path=self.path,
                authority=request.authority,
                scheme=request.scheme,
                http_version=request.http_version,
                headers=with_request_id(Headers(self.outgoing.items())),
            ),
            source=conn.identity,
            destination=conn.destination,
            site=self.step.site.name,
            conn=conn.info,
            decision=self.decision,
        )
        if self.step.wants("tgw_http_requestheaders"):
            self.step.dispatch("tgw_http_requestheaders", flow)
            if flow.response is not None:  # an addon answered (HttpFlow.respond)
                self._answer_flow(flow)
                return
        outgoing = flow.request
        drop = hop_by_hop(outgoing.headers)
        headers = Headers((k, v) for k, v in outgoing.headers if k.lower() not in drop)
        keep_upgrade_fields(self, headers)
        # Again after the addons, so none can forge it: the value decided on.
        headers.remove("x-forwarded-client-cert")
        if self.xfcc is not None:
            headers.add("x-forwarded-client-cert", self.xfcc)
        if self._chunked:
            headers.add("transfer-encoding", "chunked")  # a body of unknown length follows
        upstream = HttpRequest(
            method=outgoing.method,
            path=outgoing.path,
            authority=outgoing.authority,
            scheme=outgoing.scheme,
            http_version=outgoing.http_version,
            headers=headers,
        )
        self.path = outgoing.path
        self._send_upstream(upstream)

    def _upstream_request(self) -> HttpRequest:
        """The request as the service gets it when no addon listens: what
        :meth:`_allowed` builds through the flow, without the flow. The fields decided
        on are already free of hop-by-hop fields, but for the ``Connection: upgrade``
        and ``Upgrade`` fields of a WebSocket upgrade (``keep_upgrade_fields``, in
        :meth:`begin`); nothing here adds one."""
        request = self.request
        fields = self.outgoing.items()
        has_id = False
        xfcc_at = -1
        for i, (name, _) in enumerate(fields):
            lower = name.lower()
            if lower == "x-request-id":
                has_id = True
            elif lower == XFCC_HEADER:
                xfcc_at = i
        if xfcc_at >= 0:
            del fields[xfcc_at]  # gateway_headers added exactly one: it goes last
        if not has_id:
            fields.append(("x-request-id", request_id()))
        if self.xfcc is not None:
            fields.append((XFCC_HEADER, self.xfcc))
        if self._chunked:
            fields.append(("transfer-encoding", "chunked"))  # a body of unknown length
        return HttpRequest(
            method=request.method,
            path=self.path,
            authority=request.authority,
            scheme=request.scheme,
            http_version=request.http_version,
            # Known valid if the fields decided on were: only values the gateway made
            # were added (gwcore.net.h11_trusted: h11 does not check them again).
            headers=same_provenance(self.outgoing, fields),
        )

    def _send_upstream(self, upstream: HttpRequest) -> None:
        conn = self.conn
        self.sent_at = time.monotonic()
        stream = self.stream = self.step.pool_for(conn).open(upstream, self, conn)
        timeout = self.step.request_timeout(conn.destination)
        if timeout:
            self._timer = self.step.site.reactor.callLater(timeout, self._timed_out, timeout)
        if self._producer is not None:
            stream.set_request_producer(self._producer)

    def _timed_out(self, seconds: float) -> None:
        self._timer = None
        if self.finished or self.stream is None:
            return
        self.stream.cancel("request timeout")
        self.response_failed(
            UpstreamFailure("timeout", f"no complete response within {seconds:g}s", 504)
        )

    # --- 5. the response (l7_core.ResponseSink) -----------------------------------------

    def response_head(self, response: HttpResponse) -> None:
        if self.finished:
            return
        self.upstream_seconds = time.monotonic() - self.sent_at
        flow = self.flow
        if flow is not None:
            flow.response = response
            if self.step.wants("tgw_http_responseheaders"):
                self.step.dispatch("tgw_http_responseheaders", flow)
                if self._addon_answered(flow):  # an addon failed (502) or answered
                    return
                response = flow.response or response
        if response.status == 101:
            switch(self, response)  # a WebSocket upgrade: a tunnel from now on
            return
        if flow is None:  # the service's fields, as known valid as they came
            headers = same_provenance(
                response.headers, without_hop_by_hop(response.headers.items())
            )
        else:  # list(): an addon's response may hold any iterable of fields
            headers = Headers.adopt(without_hop_by_hop(list(response.headers)))
        self.status = response.status
        self.head_written = True
        self.writer.write_head(HttpResponse(response.status, headers))
        if self.stream is not None:
            self.writer.set_response_producer(self.stream)

    def response_data(self, data: bytes) -> None:
        if self.finished:
            return
        self.bytes_out += len(data)
        self.writer.write_data(data)

    def response_end(self, trailers: Headers | None = None) -> None:
        if self.finished:
            return
        flow = self.flow
        if flow is not None and flow.response is not None and self.step.wants("tgw_http_response"):
            flow.response.trailers = trailers
            self.step.dispatch("tgw_http_response", flow)
        writer = self.writer
        self._finish(self.status, None)
        writer.set_response_producer(None)
        writer.write_end(trailers)

    def response_failed(self, failure: UpstreamFailure) -> None:
        if self.finished:
            return
        if failure.endpoint is not None and self.stream is not None:
            self.stream.endpoint = self.stream.endpoint or failure.endpoint
        self.step.upstream_failed(self.conn, failure)
        self._failed_hook(f"{failure.reason}: {failure.detail}")
        if self.head_written:
            self._finish(self.status, failure.reason)
            self.writer.abort(failure.detail)
            return
        body = _FAILURE_BODIES.get(failure.status, b"")
        self._answer(failure.status, body, failure.reason, [("content-type", "text/plain")])

    # --- answering here, finishing --------------------------------------------------

    def _answer(
        self, status: int, body: bytes, error: str | None, headers: list[tuple[str, str]] = ()
    ) -> None:
        if self.finished:
            return
        fields = Headers([*headers, ("content-length", str(len(body)))])
        writer = self.writer
        self.bytes_out += len(body)
        self._finish(status, error if status >= 400 else None)
        writer.write_head(HttpResponse(status, fields))
        if body:
            writer.write_data(body)
        writer.write_end(None)

    def _addon_answered(self, flow: HttpFlow) -> bool:
        """After a hook: an addon's answer (or a fail-closed one) replaces the upstream's,
        whose stream is dropped unless a response head already went out."""
        if flow.answered_by is None or flow.response is None or self.head_written:
            return False
        if self.stream is not None:
            self.stream.cancel(f"answered by {flow.answered_by}")
        self._answer_flow(flow)
        return True

    def _answer_flow(self, flow: HttpFlow) -> None:
        response = flow.response
        assert response is not None
        body = response.body or b""
        headers = [(k, v) for k, v in response.headers if k.lower() != "content-length"]
        if flow.addon_error is not None:
            self.error = f"addon_error: {flow.addon_error}"
        if self.step.wants("tgw_http_response"):
            self.step.dispatch("tgw_http_response", flow)
        self._answer(response.status, body, None, headers)

    def _failed_hook(self, error: str) -> None:
        self.error = error
        flow = self.flow
        if flow is not None and self.step.wants("tgw_http_error"):
            flow.error = error
            self.step.dispatch("tgw_http_error", flow)

    def _internal_error(self, failure: Any) -> None:
        self._pending = None
        if self.finished:
            return
        log.failure("HTTP exchange failed", failure)
        self._answer(500, b"internal error\n", "internal_error")

    def _finish(self, status: int | None, error: str | None) -> None:
        self.finished = True
        self.status = status
        if error and self.error is None:
            self.error = error
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.step.finished(self)

    def method_class(self) -> str:
        method = self.request.method
        return method if method in METHOD_CLASSES else "other"

    def record(self) -> dict[str, Any]:
        """The access-log record of this request (``docs/l7.md``, "Access log")."""
        conn = self.conn
        decision = self.decision
        endpoint = self.stream.endpoint if self.stream is not None else None
        return {
            "time": rfc3339(self.start_time),
            "record_type": "request",
            "site": self.step.site.name,
            "connection_id": conn.connection_id,
            "source": conn.identity.uri if conn.identity is not None else None,
            "destination": conn.destination.name if conn.destination is not None else None,
            "protocol": self.request.http_version,
            "method": self.request.method,
            "authority": self.request.authority or None,
            "path": self.path,
            "status": self.status,
            "bytes_request": self.bytes_in,
            "bytes_response": self.bytes_out,
            "duration_seconds": round(time.monotonic() - self.started, 6),
            "upstream_seconds": round(self.upstream_seconds, 6)
            if self.upstream_seconds is not None
            else None,
            "upstream_host": str(endpoint) if endpoint is not None else None,
            "decision": decision.verdict.value if decision is not None else None,
            "engine": decision.engine if decision is not None else None,
            "reason": decision.reason if decision is not None else None,
            "error": self.error,
            "answered_by": self.flow.answered_by if self.flow is not None else None,
        }
