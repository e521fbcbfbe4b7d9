"""A terminating site behind a PROXY-protocol load balancer (gwcore.net.proxied): real
TLS over real loopback sockets, the header written first as HAProxy would."""

from __future__ import annotations

import json
import socket
import ssl
import sys
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
from twisted.protocols.haproxy._v2parser import V2Parser

from gwcore.policy.config import ConfigError, load_config
from gwcore.policy.proxy_protocol import TLV_SPIFFE_ID, build_v2, parse
from tests.harness import (
    Upstream,
    client_context,
    gateway_entry,
    hello,
    in_thread,
    intentions,
    read_all,
    registration,
    sni_for,
    write_json,
)

# An engine that denies one client address and records the addresses it was asked about.
BY_CLIENT = """
from gwcore.policy.model import Decision, Verdict

SEEN = []


class ByClient:
    name = "by_client"
    policy_version = "1"

    def start(self, changed):
        pass

    def stop(self):
        pass

    def authorize(self, request):
        SEEN.append(request.client_address)
        if request.client_address == "203.0.113.66":
            return Decision(Verdict.DENY, self.name, "blocked client")
        return Decision(Verdict.ABSTAIN, self.name, "no opinion")


def tgw_authorization_engines(site):
    return [ByClient()]
"""


def through(port: int, header: bytes, files: tuple[Path, Path, Path]) -> bytes:
    """Send ``header``, then a TLS handshake for billing, one ping; what comes back."""
    cert, key, root = files
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.sendall(header)
    with client_context(cert, key, root).wrap_socket(
        raw, server_hostname=sni_for("billing")
    ) as sock:
        sock.sendall(b"ping")
        return read_all(sock)


@pytest.fixture
def proxied(gateway, upstreams):
    up = upstreams(hello(b"billing"))
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("*", "allow")))
    addons = gateway.root / "addons"
    addons.mkdir(exist_ok=True)
    (addons / "by_client.py").write_text(textwrap.dedent(BY_CLIENT))
    gateway.plugins = [*gateway.plugins, "by_client"]
    gateway.site_options["proxy_protocol"] = True
    return gateway


@pytest_twisted.ensureDeferred
async def test_v1_and_v2_clients_are_seen_by_the_access_log_and_authorization(proxied):
    """The client named by a v1 or a v2 header is the ``client`` of the access-log record
    and the ``client_address`` an engine decides on: one address allowed, one denied."""
    await proxied.start()
    files = proxied.client_files("web")
    v1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 40001 8443\r\n"
    assert await in_thread(through, proxied.port, v1, files) == b"billing"
    v2 = build_v2(("2001:db8::5", 40002), ("2001:db8::1", 8443))
    assert await in_thread(through, proxied.port, v2, files) == b"billing"
    blocked = b"PROXY TCP4 203.0.113.66 10.0.0.1 40003 8443\r\n"
    with pytest.raises((ssl.SSLError, OSError)):
        answer = await in_thread(through, proxied.port, blocked, files)
        assert answer == b""  # TLS 1.3: the refusal may come as a plain close
        raise OSError("closed without an answer")
    await proxied.wait_for(lambda: len(proxied.access_records()) == 3)
    records = proxied.access_records()
    assert [r["client"] for r in records] == [
        "198.51.100.7:40001",
        "[2001:db8::5]:40002",  # IPv6 bracketed (RFC 3986)
        "203.0.113.66:40003",
    ]
    assert [r["decision"] for r in records] == ["allow", "allow", "deny"]
    engine = next(e for e in proxied.site.engines if e.name == "by_client")
    assert sys.modules[type(engine).__module__].SEEN == [
        "198.51.100.7",
        "2001:db8::5",
        "203.0.113.66",
    ]


@pytest_twisted.ensureDeferred
async def test_a_connection_without_a_header_is_refused_and_counted(proxied):
    """A client that starts TLS directly on a proxy_protocol site is closed before any
    TLS byte is answered, counted as handshake failure ``proxy_protocol``; a v2 LOCAL
    header (a health check) keeps the load balancer's own address."""
    await proxied.start()
    files = proxied.client_files("web")
    with pytest.raises((ssl.SSLError, OSError)):
        await in_thread(through, proxied.port, b"", files)
    await proxied.wait_for(
        lambda: proxied.metric("tgw_tls_handshake_errors_total", reason="proxy_protocol") == 1
    )
    assert await in_thread(through, proxied.port, build_v2(None, None), files) == b"billing"
    await proxied.wait_for(lambda: len(proxied.access_records()) == 2)
    assert proxied.access_records()[-1]["client"].startswith("127.0.0.1:")


def test_proxy_protocol_on_a_mesh_site_is_a_config_problem(tmp_path):
    """A mesh site passes TLS through untouched and reads no PROXY header: the key is
    refused there, naming file and key."""
    path = tmp_path / "tgw.toml"
    path.write_text(
        '[sites.m]\nlisten = "tcp:0"\nname = "mgw"\ntrust_domain = "td.consul"\n'
        'role = "mesh"\nproxy_protocol = true\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert any(
        p.key == "sites.m.proxy_protocol" and "terminating" in p.message
        for p in raised.value.problems
    ), raised.value.problems


def reads_proxy_header(sock: socket.socket, upstream: Upstream) -> None:
    """An upstream that expects a PROXY v2 header first (as HAProxy's accept-proxy
    does), reads it with Twisted's parser and answers what it learnt, as JSON."""
    data = b""
    while len(data) < 16:
        data += sock.recv(16 - len(data))
    length = int.from_bytes(data[14:16], "big")
    while len(data) < 16 + length:
        data += sock.recv(16 + length - len(data))
    info = V2Parser.parse(data)
    ours, _ = parse(data)
    assert ours is not None
    caller = dict(ours.tlvs).get(TLV_SPIFFE_ID, b"").decode()
    sock.sendall(json.dumps([info.source.host, info.source.port, caller]).encode())


@pytest_twisted.ensureDeferred
async def test_upstream_gets_a_proxy_v2_header_with_the_callers_spiffe_id(gateway, upstreams):
    """``upstream_proxy_protocol``: a plain-TCP upstream first receives a PROXY v2 header
    naming the real client (here the one a load balancer's v1 header named) and, in
    TLV 0xE0, the SPIFFE ID the client authenticated with."""
    up = upstreams(reads_proxy_header)
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", up.port)])
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("*", "allow")))
    gateway.site_options["proxy_protocol"] = True
    gateway.site_options["upstream_proxy_protocol"] = True
    await gateway.start()
    files = gateway.client_files("web")
    v1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 40001 8443\r\n"
    answer = json.loads(await in_thread(through, gateway.port, v1, files))
    assert answer[:2] == ["198.51.100.7", 40001]
    assert answer[2].startswith("spiffe://") and answer[2].endswith("/svc/web")
    assert up.errors == []
