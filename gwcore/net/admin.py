"""The admin HTTP endpoint: metrics, readiness, live routes, certificates, config."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Request

from gwcore.metrics import GatewayMetrics

ENDPOINTS = ("/metrics", "/ready", "/routes", "/certs", "/config")


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

    ``/ready`` answers 200 only while every site listens and every catalog source
    has produced a snapshot without a current error; otherwise 503 with details.
    """

    def __init__(
        self, metrics: GatewayMetrics, sites: Callable[[], Sequence[Any]], config: Any
    ) -> None:
        super().__init__()
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

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":  # "/" itself
            return self
        return notFound("No such resource", "The admin endpoint serves " + ", ".join(ENDPOINTS))

    def render_GET(self, request: Request) -> bytes:
        return _json(request, {"endpoints": list(ENDPOINTS)})

    def _metrics(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)

    def _ready(self, request: Request) -> bytes:
        sites = {s.name: s.readiness() for s in self.sites()}
        ready = bool(sites) and all(s["ready"] for s in sites.values())
        return _json(request, {"ready": ready, "sites": sites}, 200 if ready else 503)
