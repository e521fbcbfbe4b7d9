"""The OPA REST client against a real OPA-compatible server on 127.0.0.1: the request it
sends, its response bound, and its retry rules (never after the budget ran out)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from gwcore.net.opa_client import OpaClient
from tests.harness import free_port
from tests.opa_server import opa_servers_fixture  # noqa: F401  (provides opa_servers)

POLICY = """package tgw
import rego.v1
default allow := false
allow if input.who == "web"
answer := {"allowed": false, "reason": concat("", ["x" | some _ in numbers.range(1, 300)])}
"""


def client(url: str, **kw) -> OpaClient:
    options = {"timeout": 2.0, "max_connections": 2, "retries": 1, **kw}
    return OpaClient(reactor, url, **options)


@pytest_twisted.ensureDeferred
async def test_posts_the_input_to_the_data_api_and_reads_the_result(opa_servers):
    server = opa_servers.start(POLICY)
    opa = client(server.url + "/")
    try:
        assert (await opa.evaluate("tgw/allow", {"who": "web"})).allowed is True
        assert (await opa.evaluate("tgw/allow", {"who": "api"})).allowed is False
        assert server.requests[0] == {
            "path": "/v1/data/tgw/allow",
            "body": {"input": {"who": "web"}},
        }
    finally:
        await opa.close()


@pytest_twisted.ensureDeferred
async def test_an_answer_over_the_bound_is_an_error(opa_servers):
    """max_response_bytes bounds what is read; a larger answer is refused, not buffered."""
    server = opa_servers.start(POLICY)
    opa = client(server.url, max_response_bytes=100)
    try:
        evaluation = await opa.evaluate("tgw/answer", {})
        assert evaluation.error_kind == "bad_response" and "larger than 100" in evaluation.reason
    finally:
        await opa.close()


@pytest_twisted.ensureDeferred
async def test_a_timeout_is_not_retried(opa_servers):
    """The budget covers every attempt: once it ran out, nothing is sent again."""
    server = opa_servers.start(POLICY)
    server.stall.set()
    opa = client(server.url, timeout=0.2, retries=3)
    try:
        evaluation = await opa.evaluate("tgw/allow", {"who": "web"})
        assert evaluation.error_kind == "timeout"
        assert len(server.requests) == 1
        assert opa.in_flight == 0
    finally:
        server.release.set()
        await opa.close()


@pytest_twisted.ensureDeferred
async def test_refused_connections_are_retried_then_reported():
    opa = client(f"http://127.0.0.1:{free_port()}", retries=2)
    try:
        evaluation = await opa.evaluate("tgw/allow", {})
        assert evaluation.error_kind == "unavailable" and "attempts: 3" in evaluation.reason
    finally:
        await opa.close()


@pytest_twisted.ensureDeferred
async def test_gateway_errors_are_retried_but_not_forever(opa_servers):
    """502/503/504 are retried up to ``retries`` times; the last answer is returned."""
    server = opa_servers.start(POLICY)
    server.fail_statuses = [503, 502, 504]
    opa = client(server.url, retries=2)
    try:
        evaluation = await opa.evaluate("tgw/allow", {"who": "web"})
        assert evaluation.error_kind == "http_status" and "HTTP 504" in evaluation.reason
        assert len(server.requests) == 3
    finally:
        await opa.close()
