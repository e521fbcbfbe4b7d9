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
from gwcore.policy.model import ServiceName

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent


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


def main() -> int:
    for target, items in seeds().items():
        folder = ROOT / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for item in items:
            (folder / hashlib.sha1(item).hexdigest()).write_bytes(item)
    return 0


if __name__ == "__main__":
    sys.exit(main())
