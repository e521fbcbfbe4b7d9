"""Calling the five HTTP addon hooks for one request, and what an addon failure does.

The L7 driver keeps one :class:`HttpAddons` per site (built from the site's stack) and
calls it per request, in this order, only after the engines allowed the request::

    addons.request_headers(flow)      # flow.response set: answered, do not forward
    addons.request(flow)              # the whole request was read
    addons.response_headers(flow)     # the upstream's head; skipped for an answer
    addons.response(flow)             # complete (from the upstream or an answer)
    addons.error(flow)                # instead of response(): the exchange failed

Rules (mitmproxy's model, with Envoy ext_proc's ``failure_mode_allow = false``):

- Implementations run in stack order. After one answers with ``flow.respond(...)``
  the later implementations of that request hook (and ``tgw_http_request``) are not
  called: the first answer wins and nothing replaces it.
- **Fail closed.** An addon that raises in a request hook may have meant to block or
  to strip something: the request is answered ``500`` by the gateway and never
  forwarded. Raising in ``tgw_http_responseheaders`` replaces the upstream's response
  by ``502``. Raising in ``tgw_http_response`` or ``tgw_http_error`` (the head is
  already sent) is only logged. Every failure is one warning line (addon, hook,
  exception type; the traceback at debug level), counted in
  ``tgw_addon_errors_total{site,hook}``, and recorded as ``flow.addon_error``.
- A hook nobody implements costs one tuple check (:attr:`HttpAddons.active`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

from gwcore.contract.hookspecs import HTTP_HOOKS
from gwcore.contract.http_flow import Headers, HttpFlow, HttpResponse

if TYPE_CHECKING:
    from gwcore.contract.plugin_host import PluginStack

REQUEST_FAILED_STATUS = 500
RESPONSE_FAILED_STATUS = 502
ANSWERED_BY_GATEWAY = "tgw"
"""``answered_by`` of the response the gateway makes when an addon failed closed."""


def _failure_response(status: int) -> HttpResponse:
    body = b"addon error\n"
    headers = Headers([("content-type", "text/plain"), ("content-length", str(len(body)))])
    return HttpResponse(status, headers, body)


class HttpAddons:
    """The HTTP hooks of one site's stack, called with the fail-closed rule above."""

    def __init__(
        self, stack: PluginStack, log: Logger, metrics: Any | None, site: str | None = None
    ) -> None:
        self._impls = {hook: stack.listeners(hook) for hook in HTTP_HOOKS}
        self._log = log
        self._metrics = metrics
        self._site = site if site is not None else stack.site.key
        self.active = any(self._impls.values())
        """False when no plugin implements any HTTP hook: the driver may skip the flow."""

    def implemented(self, hook: str) -> bool:
        return bool(self._impls[hook])

    def request_headers(self, flow: HttpFlow) -> None:
        """``tgw_http_requestheaders``; afterwards ``flow.response`` set means answered."""
        self._request_phase("tgw_http_requestheaders", flow)

    def request(self, flow: HttpFlow) -> None:
        """``tgw_http_request``; not called after an answer."""
        if flow.response is None:
            self._request_phase("tgw_http_request", flow)

    def response_headers(self, flow: HttpFlow) -> None:
        """``tgw_http_responseheaders`` on the upstream's response (never on an answer)."""
        if flow.answered_by is not None or flow.response is None:
            return
        failed = self._call_each("tgw_http_responseheaders", flow, stop_on_answer=False)
        if failed:
            flow.response = _failure_response(RESPONSE_FAILED_STATUS)
            flow.answered_by = ANSWERED_BY_GATEWAY

    def response(self, flow: HttpFlow) -> None:
        """``tgw_http_response``: observers only; a raise is logged and counted."""
        self._call_each("tgw_http_response", flow, stop_on_answer=False, stop_on_error=False)

    def error(self, flow: HttpFlow) -> None:
        """``tgw_http_error``: observers only; a raise is logged and counted."""
        self._call_each("tgw_http_error", flow, stop_on_answer=False, stop_on_error=False)

    def _request_phase(self, hook: str, flow: HttpFlow) -> None:
        if self._call_each(hook, flow, stop_on_answer=True):
            flow.response = _failure_response(REQUEST_FAILED_STATUS)
            flow.answered_by = ANSWERED_BY_GATEWAY

    def _call_each(
        self, hook: str, flow: HttpFlow, *, stop_on_answer: bool, stop_on_error: bool = True
    ) -> bool:
        """Call every implementation of ``hook``; True when one raised (and, with
        ``stop_on_error``, the rest were skipped)."""
        conn = flow.conn
        failed = False
        try:
            for impl in self._impls[hook]:
                answered_before = flow.answered_by
                if conn is not None:
                    conn.writer = impl.plugin_name  # annotation keys belong to their writer
                try:
                    impl.function(**{a: flow for a in impl.argnames})
                except Exception as error:
                    failed = True
                    self._failed(impl.plugin_name, hook, flow, error, stop_on_error)
                    if stop_on_error:
                        return True
                    continue
                if answered_before is None and flow.answered_by == "addon":
                    flow.answered_by = impl.plugin_name  # respond() left at its default
                if stop_on_answer and flow.answered_by is not None:
                    return False
        finally:
            if conn is not None:
                conn.writer = None
        return failed

    def _failed(
        self, addon: str, hook: str, flow: HttpFlow, error: Exception, closing: bool
    ) -> None:
        if flow.addon_error is None:
            flow.addon_error = f"{addon} raised in {hook}"
        # One line for the operator; the exception's text stays at debug level, since
        # an addon's message may quote request data (headers, credentials).
        self._log.warn(
            "addon {addon} raised {error_type} in {hook}{outcome}",
            addon=addon,
            hook=hook,
            error_type=type(error).__name__,
            outcome="; the request fails closed" if closing else "",
        )
        self._log.failure("addon {addon} in {hook}", level=LogLevel.debug, addon=addon, hook=hook)
        if self._metrics is not None:
            self._metrics.addon_errors.labels(site=self._site, hook=hook).inc()
