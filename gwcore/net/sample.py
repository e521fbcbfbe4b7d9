"""A tiny HTTP service to stand in for an external service in the default config."""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class SampleResource(Resource):
    """Answers every GET with the configured body, and echoes POST bodies back."""

    isLeaf = True

    def __init__(self, body: str) -> None:
        super().__init__()
        self.body = body.encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.body

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        return request.content.read() if request.content else b""


class QuietSite(Site):
    """A web site that does not log every request (the admin endpoint is scraped often)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Request) -> None:
        return None


def sample_site(body: str) -> Site:
    return QuietSite(SampleResource(body))
