"""Write the seed corpus (``fuzz/corpus/<target>/``): run once, commit the output.

Seeds are real, valid inputs (a ClientHello from OpenSSL, certificates from
:mod:`gwcore.pki`, the example catalog and config); libFuzzer mutates from there.
``make fuzz`` never writes into these directories (new inputs go to ``var/fuzz``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL

from fuzz.targets import TRUST_DOMAIN
from gwcore.contract import pki
from gwcore.policy.http2_rules import PREFACE
from gwcore.policy.model import ServiceName

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
L7_TARGETS = ("xfcc_input", "l7_permission", "http2_headers")


def _client_hello(sni: bytes | None, alpn: list[bytes], tls12: bool) -> bytes:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if tls12:
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    if alpn:
        ctx.set_alpn_protos(alpn)
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    if sni:
        conn.set_tlsext_host_name(sni)
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


def seeds() -> dict[str, list[bytes]]:
    sni = f"billing.default.dc1.internal.{TRUST_DOMAIN}".encode()
    hellos = [
        _client_hello(sni, [b"h2", b"http/1.1"], False),
        _client_hello(sni, [], True),
        _client_hello(None, [], False),
    ]
    ca, key = pki.new_ca(TRUST_DOMAIN)
    leaf = pki.service_leaf(ca, key, ServiceName("web"), "dc1", TRUST_DOMAIN)
    two = pki.issue_leaf(
        ca,
        key,
        f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/a",
        extra_uris=["spiffe://x/ns/default/dc/dc1/svc/b"],
    )
    dns = pki.issue_leaf(
        ca, key, "spiffe://other.consul/ns/default/dc/dc1/svc/a", dns_names=["a.example"]
    )
    certs = [
        c.public_bytes(Encoding.DER)
        for c in (ca, leaf.certificate, two.certificate, dns.certificate)
    ]
    consul = [p.read_bytes() for p in sorted((REPO / "etc/catalog").glob("*.json"))]
    consul.append(
        json.dumps(
            [
                {
                    "Node": {"Node": "n1", "Address": "127.0.0.1", "Datacenter": "dc1"},
                    "Service": {
                        "ID": "billing-1",
                        "Service": "billing",
                        "Address": "127.0.0.2",
                        "Port": 8080,
                        "Weights": {"Passing": 1, "Warning": 1},
                    },
                    "Checks": [{"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}],
                }
            ]
        ).encode()
    )
    consul.append(
        json.dumps(
            {
                "ActiveRootID": "a",
                "TrustDomain": TRUST_DOMAIN,
                "Roots": [{"ID": "a", "RootCert": pki.certificate_pem(ca).decode()}],
            }
        ).encode()
    )
    consul.append(
        json.dumps(
            {
                "billing": [
                    {
                        "SourceName": "web",
                        "SourceNS": "default",
                        "DestinationName": "billing",
                        "DestinationNS": "default",
                        "Action": "allow",
                        "Precedence": 9,
                        "SourceType": "consul",
                    }
                ]
            }
        ).encode()
    )
    return {
        "clienthello": [bytes([7]) + h for h in hellos],
        "spiffe_id": [
            f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/web".encode(),
            f"spiffe://{TRUST_DOMAIN}/ap/part/ns/default/dc/dc1/svc/web".encode(),
            f"spiffe://{TRUST_DOMAIN}/gateway/mesh/dc/dc2".encode(),
        ],
        "certificate_san": certs,
        "consul_json": consul,
        "config_toml": [(REPO / "etc/tgw.toml").read_bytes()],
        "config_check": [(REPO / "etc/tgw.toml").read_bytes()],
    }


def l7_seeds() -> dict[str, list[bytes]]:
    """Seeds of the L7 targets: real XFCC values, Consul permissions, HTTP/2 heads."""
    td = TRUST_DOMAIN
    element = (
        f"By=spiffe://{td}/ns/default/dc/dc1/svc/gw;Hash=4d1f0c;"
        f'Subject="CN=web,O=Acme\\, Inc.";URI=spiffe://{td}/ns/default/dc/dc1/svc/web'
    )
    allow_api = {"Action": "allow", "HTTP": {"PathPrefix": "/api", "Methods": ["GET", "post"]}}
    permissions = [
        {"Action": "deny", "HTTP": {"PathExact": "/admin"}},
        {"Action": "allow", "HTTP": {"PathRegex": "/v[0-9]+/.*", "Methods": ["GET"]}},
        {
            "Action": "allow",
            "HTTP": {
                "Header": [
                    {"Name": "x-env", "Exact": "prod"},
                    {"Name": "X-Debug", "Present": True, "Invert": True},
                    {"Name": "host", "Suffix": ".internal"},
                    {"Name": ":method", "Regex": "GET|HEAD"},
                    {"Name": "user-agent", "Prefix": "curl/"},
                ]
            },
        },
    ]
    bad = [
        {"Action": "allow", "HTTP": {"PathExact": "admin"}},
        {"Action": "allow", "HTTP": {"PathRegex": "("}},
        {"Action": "maybe", "HTTP": {"Methods": ["GET", "GET", "BREW"]}},
        {"Action": "allow", "HTTP": {}},
        {"Action": "allow", "JWT": {"Providers": [{"Name": "okta"}]}, "HTTP": {"PathPrefix": "/"}},
        {"Action": "allow", "HTTP": {"Header": [{"Name": "x", "Exact": "a", "Prefix": "b"}]}},
    ]
    request = b"GET\n/v2/items?limit=1\nbilling.internal\nx-env:prod\nuser-agent:curl/8\nx-env:dev"
    grpc = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/pkg.Service/Method"),
        (b":authority", b"billing"),
        (b"content-type", b"application/grpc+proto"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"1S"),
    ]
    h1ish = [
        (b"GET", b"/index.html?x=1"),
        (b"Host", b"billing"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"X-Hop", b"1"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers, deflate"),
        (b"Upgrade", b"websocket"),
        (b"cookie", b"a=1"),
        (b"Cookie", b"b=2"),
    ]
    h2_bad = [
        (b":method", b"CONNECT"),
        (b":authority", b"billing:443"),
        (b"x-a", b"1"),
        (b":path", b"/late"),
        (b"host", b"other"),
    ]
    block = lambda fields: b"\n".join(n + b"\t" + v for n, v in fields)  # noqa: E731
    return {
        "xfcc_input": [
            element.encode(),
            (element + "," + element + "\n" + "by=x;HASH=y;dns=a.example;DNS=b").encode(),
            b'By=x;Subject="unbalanced,URI=spiffe://forged',
            b'Subject="a,b\\"c";URI=spiffe://x\n\n  ',
            b"",
        ],
        "l7_permission": [
            json.dumps(allow_api).encode() + b"\x00" + request,
            json.dumps(permissions).encode() + b"\x00" + request,
            json.dumps(permissions).encode() + b"\x00DELETE\n/admin\n\nx-debug:1",
            json.dumps(bad).encode() + b"\x00POST\n/\nb",
        ],
        "http2_headers": [block(grpc), block(h1ish), block(h2_bad), PREFACE + b"\x00\x00"],
    }


def main() -> int:
    """Write the seeds of the targets named on the command line (all when none)."""
    every = {**seeds(), **l7_seeds()}
    wanted = set(sys.argv[1:]) or set(every)
    for target, items in every.items():
        if target not in wanted:
            continue
        folder = ROOT / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for item in items:
            name = hashlib.sha1(item).hexdigest()
            (folder / (name[:16] if target in L7_TARGETS else name)).write_bytes(item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
