"""The Consul HTTP client and blocking-query loop, against the Consul double on 127.0.0.1
(and the pure pieces, back-off and token bucket, on a fake clock)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gwcore.net.consul import (
    BlockingWatch,
    ConsulClient,
    ConsulError,
    ConsulSettings,
    acquire_client,
    backoff_delay,
    release_client,
)
from gwcore.net.consul_blocking import _TokenBucket
from gwcore.testing import MeshCA
from gwcore.testing.consul import ConsulDouble, Recorder, server_certificate
from tests.harness import TimersOnClock, sleep


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(Deferred.fromCoroutine(coro))


@pytest.fixture
def consul() -> Any:
    double = ConsulDouble(reactor, jitter=False, acl_token="secret")
    _block(double.start())
    yield double
    _block(double.stop())


def settings(double: ConsulDouble, **kw: Any) -> ConsulSettings:
    values = {
        "address": double.address,
        "token": "secret",
        "wait": 1.0,
        "timeout": 2.0,
        "retry_min": 0.05,
        "retry_max": 0.2,
        "rate": 100.0,
        **kw,
    }
    return ConsulSettings(**values)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    waited = 0.0
    while not predicate():
        assert waited < timeout, "condition not reached in time"
        await sleep(0.02)
        waited += 0.02


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    """Delay n is uniform in [d/2, d] with d = min(max, min * 2**(n-1))."""
    rng = random.Random(1)
    for n, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 60.0), (40, 60.0)]:
        delays = [backoff_delay(n, 0.5, 60.0, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_token_bucket_allows_a_burst_of_two_then_the_rate():
    """The loop's rate limit: two queries at once, then one per 1/rate seconds."""
    clock = Clock()
    bucket = _TokenBucket(clock, rate=2.0, burst=2)
    assert bucket.delay() == 0 and bucket.delay() == 0
    assert bucket.delay() == pytest.approx(0.5)
    clock.advance(10)
    assert bucket.delay() == 0


@pytest_twisted.ensureDeferred
async def test_watch_blocks_with_index_and_wait_and_sends_the_token(consul):
    """After the first read the watch sends index and wait, the double holds it, and a
    write wakes it with a new X-Consul-Index; every request carries X-Consul-Token."""
    client = ConsulClient(reactor, settings(consul))
    seen = Recorder()
    watch = BlockingWatch(client, "catalog-services", "/v1/catalog/services", seen, Recorder())
    watch.start()
    try:
        await until(lambda: len(seen.items) == 1 and consul.blocked == 1)
        first = seen.items[0].index
        consul.register({"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "a"}})
        await until(lambda: len(seen.items) == 2)
        assert seen.items[1].index > first and "a" in seen.items[1].json()
        queries = [r for r in consul.requests if r.path == "/v1/catalog/services"]
        assert "index" not in queries[0].args
        assert queries[1].args["index"] == [str(first)] and queries[1].args["wait"] == ["1000ms"]
        assert {r.token for r in queries} == {"secret"}
    finally:
        watch.stop()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_index_going_backwards_resets_the_watch(consul):
    """A restart with a lower index: the watch resets to 0, reads afresh, and follows."""
    client = ConsulClient(reactor, settings(consul))
    seen, errors = Recorder(), Recorder()
    watch = BlockingWatch(client, "ca-roots", "/v1/agent/connect/ca/roots", seen, errors)
    watch.start()
    try:
        await until(lambda: len(seen.items) == 1 and consul.blocked == 1)
        before = watch.index
        consul.restart(index=3)
        await until(lambda: watch.resets == 1, timeout=5)
        await until(lambda: 1 <= watch.index <= 3)
        assert watch.index < before
        consul.rotate_root("second")
        await until(lambda: len(seen.items[-1].json()["Roots"]) == 2)
        assert [r for r in consul.requests if r.args.get("index") == ["0"]] == []
    finally:
        watch.stop()
        await client.close()


@pytest_twisted.ensureDeferred
async def test_errors_back_off_then_recover_and_stop_cancels(consul):
    """500s are reported and retried with growing delays (rule 6: failure n waits
    backoff_delay(n), jittered within [d/2, d] for d = 0.05 s doubling to the 0.2 s
    cap, and not a moment less, on a fake clock); the watch recovers by itself;
    stop() cancels the blocking query in flight. (The Consul double answers 500 as a
    failing agent would.)"""
    clock = Clock()
    client = ConsulClient(reactor, settings(consul))  # retry_min 0.05 s, retry_max 0.2 s
    client.reactor = TimersOnClock(reactor, clock)
    seen, errors = Recorder(), Recorder()
    consul.fail(500, prefix="/v1/catalog/services", count=4)
    watch = BlockingWatch(
        client,
        "catalog-services",
        "/v1/catalog/services",
        seen,
        errors,
        rng=random.Random(7),
    )
    same_draws = random.Random(7)
    watch.start()
    waits = []
    try:
        for failure, ceiling in enumerate([0.05, 0.1, 0.2, 0.2], start=1):
            await until(lambda failure=failure: len(errors.items) == failure)
            assert watch.queries == failure
            wait = backoff_delay(failure, 0.05, 0.2, same_draws)
            assert ceiling / 2 <= wait <= ceiling
            clock.advance(wait - 1e-6)
            assert watch.queries == failure, f"retry {failure} came before {wait:.4f}s"
            clock.advance(2e-6)
            assert watch.queries == failure + 1, f"retry {failure} not sent after {wait:.4f}s"
            waits.append(wait)
        assert waits[:3] == sorted(waits[:3]) and waits[2] > waits[0]  # grew, then capped
        await until(lambda: len(seen.items) == 1 and consul.blocked == 1)
        assert [e.kind for e in errors.items] == ["http_500"] * 4
        assert watch.failures == 0
    finally:
        watch.stop()
    await until(lambda: consul.blocked == 0)
    await client.close()


@pytest_twisted.ensureDeferred
async def test_forbidden_and_missing_token(consul, tmp_path: Path):
    """A wrong token gets 403 (acl_denied); a token file is re-read when it changes."""
    token_file = tmp_path / "token"
    token_file.write_text("wrong\n")
    client = ConsulClient(reactor, settings(consul, token="", token_file=str(token_file)))
    with pytest.raises(ConsulError) as denied:
        await client.get("catalog-services", "/v1/catalog/services")
    assert denied.value.kind == "acl_denied" and denied.value.status == 403
    token_file.write_text("secret\n")
    response = await client.get("catalog-services", "/v1/catalog/services")
    assert response.status == 200 and response.index >= 1
    await client.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_and_hanging_agent_fail_within_the_timeout(consul):
    """A closed port is 'unreachable'; an agent that never answers is a 'timeout'."""
    client = ConsulClient(reactor, settings(consul, timeout=0.3))
    consul.hang("/v1/catalog/services")
    with pytest.raises(ConsulError) as hung:
        await client.get("catalog-services", "/v1/catalog/services")
    assert hung.value.kind == "timeout"
    await client.close()
    client = ConsulClient(reactor, settings(consul, timeout=2.0))
    await consul.down()
    with pytest.raises(ConsulError) as down:
        await client.get("catalog-services", "/v1/catalog/services")
    assert down.value.kind == "unreachable"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_https_with_a_configured_ca(tmp_path: Path):
    """Over https the agent is verified against ca_file; another CA is refused."""
    ca = MeshCA()
    cert, key = server_certificate(ca.cert, ca.key)
    double = ConsulDouble(reactor, tls=(cert, key), jitter=False)
    await double.start()
    try:
        good = ca.write_root(tmp_path / "ca.pem")
        client = ConsulClient(reactor, settings(double, token="", ca_file=str(good)))
        assert double.address.startswith("https://")
        assert (await client.get("ca-roots", "/v1/agent/connect/ca/roots")).status == 200
        await client.close()
        other = MeshCA().write_root(tmp_path / "other.pem")
        client = ConsulClient(reactor, settings(double, token="", ca_file=str(other)))
        with pytest.raises(ConsulError) as refused:
            await client.get("ca-roots", "/v1/agent/connect/ca/roots")
        assert refused.value.kind == "unreachable"
        await client.close()
    finally:
        await double.stop()


@pytest_twisted.ensureDeferred
async def test_requests_share_a_bounded_pool(consul):
    """100 concurrent requests through one client use at most max_connections sockets,
    and plugins naming the same agent share the client."""
    s = settings(consul, max_connections=8)
    client = acquire_client(reactor, s)
    assert acquire_client(reactor, s) is client
    from twisted.internet.defer import gatherResults

    results = await gatherResults(
        [client.get("catalog-services", "/v1/catalog/services") for _ in range(100)]
    )
    assert len(results) == 100
    assert consul.accepted <= 8
    assert release_client(client) is None
    await release_client(client)
