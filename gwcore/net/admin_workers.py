"""With ``workers = N``, the admin endpoint answers for every worker.

Each worker serves a plain :class:`~gwcore.net.admin.AdminResource` for itself on a
private unix socket in the supervisor's directory (mode 0700, so only the gateway's
user can reach it): :func:`listen_private`. Worker 0's public admin endpoint has its
``/ready``, ``/routes``, ``/certs``, ``/config`` and ``/explain`` replaced
(:func:`fan_out`): each asks every worker's socket and merges the answers.

- ``/ready``: 200 only when every worker is ready; ``workers`` holds each worker's
  own answer (``sites`` and ``draining`` stay at the top, as with one worker);
- ``/routes``, ``/certs``: every worker's sites, each with its ``worker`` index;
- ``/config``: the configuration when all workers run the same one; 409 with each
  worker's when they differ (a reload that failed in some);
- ``/explain``: worker 0's answer, and each worker's decision under ``workers``;
- ``?worker=N`` on any of them: worker N's own answer, as it gave it.

A worker that does not answer within :data:`ASK_TIMEOUT` makes ``/ready`` 503 and
the other endpoints 502, naming it. ``/metrics`` is not asked around: the workers'
multiprocess files are already added up (``gwcore.contract.metrics``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.web.client import Agent, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

ASK_TIMEOUT = 2.0
FANNED = (b"ready", b"routes", b"certs", b"config", b"explain")

Answer = tuple[int, Any]
"""(HTTP status, parsed JSON body) of one worker; status 0 when it did not answer."""


async def listen_private(reactor: Any, resource: Resource, path: str) -> Any:
    """Serve ``resource`` on the unix socket ``path`` (a stale one from a worker that
    died is removed first)."""
    from gwcore.net.sample import QuietSite

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    escaped = path.replace("\\", "\\\\").replace(":", "\\:")
    return await serverFromString(reactor, f"unix:{escaped}:mode=600").listen(QuietSite(resource))


@implementer(IAgentEndpointFactory)
class _Sockets:
    def __init__(self, reactor: Any, socket_of: Callable[[int], str]) -> None:
        self.reactor = reactor
        self.socket_of = socket_of

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        index = int(uri.host.decode().rpartition("-")[2])
        return UNIXClientEndpoint(self.reactor, self.socket_of(index), timeout=ASK_TIMEOUT)


class WorkerAsker:
    """GETs an admin path from one worker's private socket."""

    def __init__(self, reactor: Any, count: int, socket_of: Callable[[int], str]) -> None:
        self.reactor = reactor
        self.count = count
        self._agent = Agent.usingEndpointFactory(reactor, _Sockets(reactor, socket_of))

    async def ask(self, index: int, path: bytes) -> Answer:
        try:
            d = self._agent.request(b"GET", b"http://worker-%d%s" % (index, path))
            d.addTimeout(ASK_TIMEOUT, self.reactor)
            response = await d
            body = await readBody(response)
            return response.code, json.loads(body)
        except Exception as e:
            return 0, f"worker {index} did not answer: {type(e).__name__}: {e}"

    async def ask_all(self, path: bytes) -> list[Answer]:
        pending = [Deferred.fromCoroutine(self.ask(i, path)) for i in range(self.count)]
        return [value for _, value in await DeferredList(pending)]


def _json(request: Request, body: Any, code: int) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True, default=str).encode() + b"\n"


def _missing(answers: list[Answer]) -> dict[str, str]:
    return {str(i): body for i, (code, body) in enumerate(answers) if code == 0}


def merge_ready(answers: list[Answer]) -> Answer:
    workers = {
        str(i): body if code else {"ready": False, "error": body}
        for i, (code, body) in enumerate(answers)
    }
    ready = all(w.get("ready") is True for w in workers.values())
    first = workers.get("0", {})
    body = {
        "ready": ready,
        "draining": any(w.get("draining") for w in workers.values()),
        "sites": first.get("sites", {}),
        "workers": workers,
    }
    return (200 if ready else 503), body


def merge_sites(answers: list[Answer]) -> Answer:
    missing = _missing(answers)
    if missing:
        return 502, {"error": "not every worker answered", "workers": missing}
    return 200, [{**site, "worker": i} for i, (_, body) in enumerate(answers) for site in body]


def merge_config(answers: list[Answer]) -> Answer:
    missing = _missing(answers)
    if missing:
        return 502, {"error": "not every worker answered", "workers": missing}
    bodies = [body for _, body in answers]
    if all(body == bodies[0] for body in bodies):
        return 200, bodies[0]
    return 409, {
        "error": "the workers run different configurations (a reload failed in some)",
        "workers": {str(i): body for i, body in enumerate(bodies)},
    }


def merge_explain(answers: list[Answer]) -> Answer:
    code, first = answers[0]
    if code != 200:
        return (code or 502), first
    workers = {
        str(i): body.get("decision") if c == 200 else {"error": body}
        for i, (c, body) in enumerate(answers)
    }
    return 200, {**first, "workers": workers}


MERGES: dict[bytes, Callable[[list[Answer]], Answer]] = {
    b"ready": merge_ready,
    b"routes": merge_sites,
    b"certs": merge_sites,
    b"config": merge_config,
    b"explain": merge_explain,
}


class _FanOut(Resource):
    isLeaf = True

    def __init__(self, name: bytes, asker: WorkerAsker) -> None:
        super().__init__()
        self.name = name
        self.asker = asker

    def render_GET(self, request: Request) -> int:
        args = {k: v for k, v in request.args.items() if k != b"worker"}
        query = urlencode([(k, v) for k, vs in args.items() for v in vs])
        path = b"/" + self.name + (b"?" + query.encode() if query else b"")
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        wanted = request.args.get(b"worker")
        d = Deferred.fromCoroutine(self._answer(path, wanted[0] if wanted else None))

        def respond(answer: Answer) -> None:
            if not gone:
                request.write(_json(request, answer[1], answer[0]))
                request.finish()

        d.addCallback(respond)
        return NOT_DONE_YET

    async def _answer(self, path: bytes, wanted: bytes | None) -> Answer:
        if wanted is None:
            return MERGES[self.name](await self.asker.ask_all(path))
        if not wanted.isdigit() or int(wanted) >= self.asker.count:
            return 404, {"error": f"no worker {wanted.decode(errors='replace')!r}"}
        code, body = await self.asker.ask(int(wanted), path)
        return (code or 502), body


def fan_out(resource: Resource, reactor: Any, count: int, socket_of: Callable[[int], str]) -> None:
    """Make ``resource`` (worker 0's public admin root) answer for all ``count`` workers."""
    asker = WorkerAsker(reactor, count, socket_of)
    for name in FANNED:
        resource.putChild(name, _FanOut(name, asker))
