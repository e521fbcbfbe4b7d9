"""Certificates and files of one benchmark run: a mesh CA, the gateway's and the client's
leaves, the upstream's server certificate, and the catalog the gateway reads.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.topology import DC, HTTP, ORIGINATE, PLAIN, TRUST_DOMAIN, UPSTREAM_NAME, sni
from gwcore.contract import pki
from gwcore.policy.model import ServiceName

# --- material -----------------------------------------------------------------------


@dataclass
class Material:
    dir: Path
    ca: Path
    upstream_ca: Path
    web: tuple[Path, Path, Path]  # cert chain, key, combined
    leaves: dict[str, tuple[Path, Path, Path]]
    upstream: tuple[Path, Path]

    @classmethod
    def create(cls, directory: Path) -> Material:
        directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = pki.new_ca(TRUST_DOMAIN)
        up_cert, up_key = pki.new_ca("upstream.bench.test", common_name="bench upstream CA")

        def write(name: str, leaf: Any) -> tuple[Path, Path, Path]:
            chain, key = pki.leaf_pem(leaf)
            paths = (directory / f"{name}.pem", directory / f"{name}-key.pem")
            paths[0].write_bytes(chain)
            paths[1].write_bytes(key)
            combined = directory / f"{name}-combined.pem"
            combined.write_bytes(chain + key)
            return (*paths, combined)

        ca = directory / "ca.pem"
        ca.write_bytes(pki.certificate_pem(ca_cert))
        upstream_ca = directory / "upstream-ca.pem"
        upstream_ca.write_bytes(pki.certificate_pem(up_cert))

        # HAProxy (the sidecar) checks the SNI it sends against the server's DNS SANs,
        # so the bench's leaves carry it beside the SPIFFE URI that tgw reads.
        def leaf(service: str) -> Any:
            return pki.service_leaf(
                ca_cert, ca_key, ServiceName(service), DC, TRUST_DOMAIN, dns_names=[sni(service)]
            )

        up_leaf = pki.issue_leaf(
            up_cert, up_key, "", dns_names=[UPSTREAM_NAME], common_name=UPSTREAM_NAME
        )
        upstream = write("upstream", up_leaf)
        return cls(
            directory,
            ca,
            upstream_ca,
            write("web", leaf("web")),
            {s: write(s, leaf(s)) for s in (PLAIN, ORIGINATE, HTTP)},
            upstream[:2],
        )

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(self.ca)
        ctx.load_cert_chain(self.web[0], self.web[1])
        return ctx
