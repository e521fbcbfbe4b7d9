"""Calling the five HTTP addon hooks for one request, and what an addon failure does.

The L7 driver calls, per request and only after the engines allowed it, either
``site.dispatch(hook, flow)`` (the plugin stack sends HTTP hooks to
:func:`dispatch_http`) or the same through an :class:`HttpAddons`, in this order::

    tgw_http_requestheaders    # flow.response set afterwards: answered, do not forward
    tgw_http_request           # the whole request was read; skipped after an answer
    tgw_http_responseheaders   # the upstream's head; skipped for an answer
    tgw_http_response          # complete (from the upstream or an answer)
    tgw_http_error             # instead of tgw_http_response: the exchange failed

Rules (mitmproxy's model, with Envoy ext_proc's ``failure_mode_allow = false``):

- Implementations run in stack order. After one answers with ``flow.respond(...)``
  the later implementations of that request hook (and ``tgw_http_request``) are not
  called: the first answer wins and nothing replaces it.
- **Fail closed.** An addon that raises in a request hook may have meant to block or
  to strip something: the request is answered ``500`` by the gateway instead of the
  upstream (from ``tgw_http_requestheaders`` nothing is forwarded; from
  ``tgw_http_request`` the upstream stream is cancelled before its end). Raising in
  ``tgw_http_responseheaders`` replaces the upstream's response by ``502``. Raising
  in ``tgw_http_response`` or ``tgw_http_error`` (the head is already sent) is only
  logged. Every failure is one warning line (addon, hook,
  exception type; the traceback at debug level), counted in
  ``tgw_addon_errors_total{site,hook}``, and recorded as ``flow.addon_error``.
- A hook nobody implements costs nothing (``site.has_listeners(hook)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger, LogLevel

from gwcore.contract.hookspecs import HTTP_HOOKS
from gwcore.contract.http_flow import Headers, HttpFlow, HttpResponse

REQUEST_FAILED_STATUS = 500
RESPONSE_FAILED_STATUS = 502
ANSWERED_BY_GATEWAY = "tgw"
"""``answered_by`` of the response the gateway makes when an addon failed closed."""
_REQUEST_HOOKS = ("tgw_http_requestheaders", "tgw_http_request")


def _failure_response(status: int) -> HttpResponse:
    body = b"addon error\n"
    headers = Headers([("content-type", "text/plain"), ("content-length", str(len(body)))])
    return HttpResponse(status, headers, body)


def dispatch_http(
    hook: str,
    flow: HttpFlow,
    impls: Sequence[Any],
    log: Logger,
    metrics: Any | None,
    site: str,
) -> None:
    """Call ``impls`` (a stack's implementations of ``hook``, in stack order) with the
    rules above. :meth:`PluginStack.dispatch` sends every HTTP hook here, so the L7
    driver's ``site.dispatch(hook, flow)`` gets them too."""
    if hook in _REQUEST_HOOKS:
        if flow.response is not None:
            return  # answered already: nothing may replace the first answer
        if _call_each(hook, flow, impls, log, metrics, site, stop_on_answer=True):
            flow.response = _failure_response(REQUEST_FAILED_STATUS)
            flow.answered_by = ANSWERED_BY_GATEWAY
    elif hook == "tgw_http_responseheaders":
        if flow.answered_by is not None or flow.response is None:
            return  # an answer (or nothing) is not the upstream's response head
        if _call_each(hook, flow, impls, log, metrics, site, stop_on_answer=False):
            flow.response = _failure_response(RESPONSE_FAILED_STATUS)
            flow.answered_by = ANSWERED_BY_GATEWAY
    else:  # tgw_http_response, tgw_http_error: observers
        _call_each(hook, flow, impls, log, metrics, site, stop_on_answer=False, closing=False)


class HttpAddons:
    """The HTTP hooks of one site's stack for the driver, one method per hook."""

    def __init__(self, stack: Any, log: Logger, metrics: Any | None, site: str) -> None:
        self._impls = {hook: stack.listeners(hook) for hook in HTTP_HOOKS}
        self._log = log
        self._metrics = metrics
        self._site = site
        self.active = any(self._impls.values())
        """False when no plugin implements any HTTP hook: the driver may skip the flow."""

    def implemented(self, hook: str) -> bool:
        return bool(self._impls[hook])

    def _run(self, hook: str, flow: HttpFlow) -> None:
        dispatch_http(hook, flow, self._impls[hook], self._log, self._metrics, self._site)

    def request_headers(self, flow: HttpFlow) -> None:
        """``tgw_http_requestheaders``; afterwards ``flow.response`` set means answered."""
        self._run("tgw_http_requestheaders", flow)

    def request(self, flow: HttpFlow) -> None:
        """``tgw_http_request``; not called after an answer."""
        self._run("tgw_http_request", flow)

    def response_headers(self, flow: HttpFlow) -> None:
        """``tgw_http_responseheaders`` on the upstream's response (never on an answer)."""
        self._run("tgw_http_responseheaders", flow)

    def response(self, flow: HttpFlow) -> None:
        """``tgw_http_response``: observers only; a raise is logged and counted."""
        self._run("tgw_http_response", flow)

    def error(self, flow: HttpFlow) -> None:
        """``tgw_http_error``: observers only; a raise is logged and counted."""
        self._run("tgw_http_error", flow)


def _call_each(
    hook: str,
    flow: HttpFlow,
    impls: Sequence[Any],
    log: Logger,
    metrics: Any | None,
    site: str,
    *,
    stop_on_answer: bool,
    closing: bool = True,
) -> bool:
    """Call every implementation of ``hook``; True when one raised (with ``closing``,
    the rest are skipped: the request or response fails closed)."""
    conn = flow.conn
    failed = False
    try:
        for impl in impls:
            answered_before = flow.answered_by
            if conn is not None:
                conn.writer = impl.plugin_name  # annotation keys belong to their writer
            try:
                impl.function(**{a: flow for a in impl.argnames})
            except Exception as error:
                failed = True
                _failed(impl.plugin_name, hook, flow, error, closing, log, metrics, site)
                if closing:
                    return True
                continue
            if answered_before is None and flow.answered_by == "addon":
                flow.answered_by = impl.plugin_name  # respond() left at its default
            if stop_on_answer and flow.answered_by is None and flow.response is not None:
                flow.answered_by = impl.plugin_name  # set flow.response itself (mitmproxy)
            if stop_on_answer and flow.answered_by is not None:
                return False
    finally:
        if conn is not None:
            conn.writer = None
    return failed


def _failed(
    addon: str,
    hook: str,
    flow: HttpFlow,
    error: Exception,
    closing: bool,
    log: Logger,
    metrics: Any | None,
    site: str,
) -> None:
    if flow.addon_error is None:
        flow.addon_error = f"{addon} raised in {hook}"
    # One line for the operator; the exception's text stays at debug level, since
    # an addon's message may quote request data (headers, credentials).
    log.warn(
        "addon {addon} raised {error_type} in {hook}{outcome}",
        addon=addon,
        hook=hook,
        error_type=type(error).__name__,
        outcome="; failing closed" if closing else "",
    )
    log.failure("addon {addon} in {hook}", level=LogLevel.debug, addon=addon, hook=hook)
    if metrics is not None:
        metrics.addon_errors.labels(site=site, hook=hook).inc()
