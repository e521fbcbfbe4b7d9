"""The admin HTTP endpoint: metrics, readiness, live routes, certificates, config."""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gwcore import __version__
from gwcore.contract.metrics import GatewayMetrics
from gwcore.contract.providers import AuthzRequest
from gwcore.net.admin_guard import AdminGuard
from gwcore.policy.decision import combine, failure
from gwcore.policy.explain_http import ExplainArgumentError, explain_request
from gwcore.policy.http_facts import HttpRequestFacts, is_l7
from gwcore.policy.http_path import RedirectPath
from gwcore.policy.model import DEFAULT_NAMESPACE, SpiffeID
from gwcore.policy.sni import service_sni

log = Logger(namespace="tgw.admin")

_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.*")
"""What /explain accepts in a service, namespace, datacenter or site name."""

ENDPOINTS = ("/metrics", "/ready", "/routes", "/certs", "/config", "/explain")


def _json(request: Request, body: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True, default=str).encode() + b"\n"


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[Request], bytes]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request: Request) -> bytes:
        return self._render(request)


class AdminResource(Resource):
    """``/metrics`` (Prometheus text), ``/ready``, ``/routes``, ``/certs``, ``/config``.

    ``/config`` is the file as loaded with every secret redacted (``config.raw`` is
    the redacted copy, see :mod:`gwcore.policy.redact`); ``guard`` checks each
    request's ``Host`` and bearer token (:mod:`gwcore.net.admin_guard`).

    ``/ready`` answers 200 only while every site listens and every catalog source
    has produced a snapshot without a current error; otherwise 503 with details.
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        sites: Callable[[], Sequence[Any]],
        config: Any,
        guard: AdminGuard | None = None,
    ) -> None:
        super().__init__()
        self.guard = guard
        self.metrics = metrics
        self.sites = sites
        self.config = config
        self.putChild(b"metrics", _Leaf(self._metrics))
        self.putChild(b"ready", _Leaf(self._ready))
        self.putChild(
            b"routes", _Leaf(lambda r: _json(r, [s.describe_routes() for s in self.sites()]))
        )
        self.putChild(
            b"certs", _Leaf(lambda r: _json(r, [s.describe_certificates() for s in self.sites()]))
        )
        self.putChild(b"config", _Leaf(lambda r: _json(r, self.config.raw)))
        self.putChild(b"explain", _Explain(sites))

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        # Every request passes here first (the root is never a leaf): Host and token.
        if self.guard is not None:
            refused = self.guard.refusal(request)
            if refused is not None:
                return refused
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":  # "/" itself
            return self
        return notFound("No such resource", "The admin endpoint serves " + ", ".join(ENDPOINTS))

    def render_GET(self, request: Request) -> bytes:
        return _json(request, {"endpoints": list(ENDPOINTS)})

    def _metrics(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.exposition)

    def _ready(self, request: Request) -> bytes:
        sites = {s.name: s.readiness() for s in self.sites()}
        # A stopping instance says so while it drains (gwcore.runtime.drain).
        draining = bool(getattr(self.config, "draining", False))
        ready = bool(sites) and all(s["ready"] for s in sites.values()) and not draining
        body = {"ready": ready, "draining": draining, "version": __version__, "sites": sites}
        return _json(request, body, 200 if ready else 503)


class _BadArgumentError(ValueError):
    """A query argument the admin endpoint refuses (answered with 400)."""


class _Explain(Resource):
    """``/explain?source=web&destination=billing[&site=main][&namespace=..][&datacenter=..]``
    ``[&method=GET][&path=/x][&header=Name:+value]...``

    Asks every engine of the live site what it would decide for that pair, and how
    the site combines the answers — without counting the decision in the metrics.
    With ``method``, ``path`` or ``header`` at an L7 destination, the decision is the
    per-request one, for the request as the data path would see it (path normalised
    with the catalog's ``mesh`` options; :mod:`gwcore.policy.explain_http`).
    """

    isLeaf = True

    def __init__(self, sites: Callable[[], Sequence[Any]]) -> None:
        super().__init__()
        self.sites = sites

    def render_GET(self, request: Request) -> bytes | int:
        try:
            return self._explain(request)
        except (_BadArgumentError, ExplainArgumentError) as e:
            # Bad input from the client: one line, no traceback, and a 400.
            log.info("admin: bad request for /explain: {detail}", detail=str(e))
            return _json(request, {"error": str(e)}, 400)

    def _explain(self, request: Request) -> bytes | int:
        def arg(name: str, default: str = "") -> str:
            values = request.args.get(name.encode(), [])
            if not values:
                return default
            try:
                value = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise _BadArgumentError(f"{name}= is not UTF-8") from None
            if len(value) > 253 or not _NAME_CHARS.issuperset(value):
                raise _BadArgumentError(f"{name}= is not a name (letters, digits, '-', '_', '.')")
            return value

        source, wanted = arg("source"), arg("destination")
        if not source or not wanted:
            return _json(request, {"error": "give source= and destination="}, 400)
        sites = {s.name: s for s in self.sites()}
        site = sites.get(arg("site")) if arg("site") else next(iter(sites.values()), None)
        if site is None:
            return _json(request, {"error": f"no site {arg('site')!r}", "sites": list(sites)}, 404)
        routes, _ = site.current()
        destination = next((d for _, d in routes if d.name == wanted), None)
        if destination is None:
            return _json(request, {"error": f"{wanted!r} is not routed by site {site.name}"}, 404)
        config = site.config
        http = self._http(request, site, destination)
        identity = SpiffeID(
            config.trust_domain,
            arg("namespace", DEFAULT_NAMESPACE),
            arg("datacenter", config.datacenter),
            source,
        )
        authz = AuthzRequest(
            site=site.name,
            gateway_name=config.name,
            datacenter=config.datacenter,
            source=identity,
            destination=destination,
            sni=service_sni(destination.service, config.datacenter, config.trust_domain),
            client_address="",
            client_port=0,
            gateway_address="",
            gateway_port=0,
            http=http if http is not None and is_l7(destination.protocol) else None,
        )
        answers = []
        for engine in site.engines:
            d = maybeDeferred(engine.authorize, authz)
            d.addErrback(lambda f, e=engine: failure(e.name, f.getErrorMessage()))
            answers.append(d)

        def respond(results: list[tuple[bool, Any]]) -> None:
            decisions = [r for _, r in results]
            final = combine(decisions, config.default_policy)
            body = {
                "site": site.name,
                "source": identity.uri,
                "destination": destination.name,
                "default_policy": config.default_policy,
                "engines": [
                    {"engine": d.engine, "verdict": d.verdict.value, "reason": d.reason}
                    for d in decisions
                ],
                "decision": {
                    "verdict": final.verdict.value,
                    "engine": final.engine,
                    "reason": final.reason,
                },
            }
            if http is not None:
                body["request"] = _described(http, destination.protocol)
            request.write(_json(request, body))
            request.finish()

        DeferredList(answers, consumeErrors=True).addCallback(respond)
        return NOT_DONE_YET

    @staticmethod
    def _http(request: Request, site: Any, destination: Any) -> HttpRequestFacts | None:
        def texts(name: str) -> list[str]:
            try:
                return [v.decode("utf-8") for v in request.args.get(name.encode(), [])]
            except UnicodeDecodeError:
                raise _BadArgumentError(f"{name}= is not UTF-8") from None

        method, path, headers = texts("method"), texts("path"), texts("header")
        if not (method or path or headers):
            return None
        return explain_request(
            method[0] if method else "",
            path[0] if path else "",
            headers,
            site.catalog_view().mesh_http,
            authority=destination.name,
        )


def _described(http: HttpRequestFacts, protocol: str) -> dict[str, Any]:
    """The request part of an /explain answer."""
    described: dict[str, Any] = {
        "method": http.method,
        "path": http.path,
        "original_path": http.original_path,
        "headers": [f"{k}: {v}" for k, v in http.headers],
        "protocol": protocol,
    }
    if isinstance(http.path, RedirectPath):
        described["note"] = f"the gateway answers 307 to {http.path} (UNESCAPE_AND_REDIRECT)"
    if not is_l7(protocol):
        described["note"] = (
            f"the destination's protocol is {protocol}: it is decided per connection, "
            "so the request was not used (an L7 intention denies)"
        )
    return described
