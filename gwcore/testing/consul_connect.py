"""The Connect side of the Consul double: CA roots, leaf certificates, intention precedence,
and the agent's own TLS server certificate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from gwcore.contract import pki
from gwcore.policy.model import ServiceName
from gwcore.testing.consul_ca import intermediate_ca


def precedence(src_ns: str, src: str, dst_ns: str, dst: str) -> int:
    """Consul's intention precedence table (reference §6)."""
    if dst_ns == "*":
        value = 3
    elif dst == "*":
        value = 6
    else:
        value = 9
    if src_ns == "*":
        value -= 2
    elif src == "*":
        value -= 1
    return value


@dataclass
class _Root:
    cert: x509.Certificate
    key: Any
    name: str
    serial: int
    create_index: int
    modify_index: int
    intermediate: tuple[x509.Certificate, Any] | None = None  # signs leaves when set

    @property
    def id(self) -> str:
        return pki.fingerprint_hex(self.cert)

    @property
    def signer(self) -> tuple[x509.Certificate, Any]:
        return self.intermediate or (self.cert, self.key)


@dataclass
class _Leaf:
    leaf: Any
    root_id: str
    create_index: int
    issued_at: float


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@implementer(IOpenSSLServerConnectionCreator)
class _ServerContext:
    """A server TLS context from cryptography objects (Twisted's CertificateOptions
    still wants deprecated pyOpenSSL ones)."""

    def __init__(self, cert: x509.Certificate, key: Any) -> None:
        from OpenSSL import SSL

        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)
        self._context.use_certificate(cert)
        self._context.use_privatekey(key)

    def serverConnectionForTLS(self, tls_protocol: Any) -> Any:
        from OpenSSL import SSL

        return SSL.Connection(self._context, None)


def server_certificate(ca_cert: x509.Certificate, ca_key: Any) -> tuple[x509.Certificate, Any]:
    """A TLS server certificate for the double on 127.0.0.1 (IP SAN), signed by a test CA."""
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes

    key = pki.new_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "consul")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


class _ConnectCA:
    """The Connect CA and intentions endpoints of the double: roots, leaves, intention match.\n
    A part of :class:`~gwcore.testing.consul.ConsulDouble`; uses its state and ``_bump``."""

    def rotate_root(self, name: str = "Consul CA Primary Cert") -> _Root:
        """Add a new root and make it active; the old ones stay listed (as Consul does)."""
        cert, key = pki.new_ca(self.trust_domain, common_name=name)
        index = self._bump("roots")
        root = _Root(cert, key, name, cert.serial_number, index, index)
        if self.intermediate:
            root.intermediate = intermediate_ca(cert, key, self.trust_domain)
        self.roots.append(root)
        self.active_root_id = root.id
        return root

    def remove_root(self, root_id: str) -> None:
        self.roots = [r for r in self.roots if r.id != root_id]
        self._bump("roots")

    @property
    def active_root(self) -> _Root:
        return next(r for r in self.roots if r.id == self.active_root_id)

    def client_leaf(
        self,
        service: str,
        root: _Root | None = None,
        datacenter: str = "dc1",
        namespace: str = "default",
    ) -> Any:
        """A leaf for a *client* service signed by ``root`` (default the active one)."""
        root = root or self.active_root
        name = ServiceName(service, namespace)
        return pki.service_leaf(*root.signer, name, datacenter, self.trust_domain)

    def _roots_body(self) -> dict[str, Any]:
        return {
            "ActiveRootID": self.active_root_id,
            "TrustDomain": self.trust_domain,
            "Roots": [
                {
                    "ID": r.id,
                    "Name": r.name,
                    "SerialNumber": r.serial,
                    "SigningKeyID": r.id,
                    "ExternalTrustDomain": self.trust_domain,
                    "NotBefore": _rfc3339(r.cert.not_valid_before_utc.timestamp()),
                    "NotAfter": _rfc3339(r.cert.not_valid_after_utc.timestamp()),
                    "RootCert": pki.certificate_pem(r.cert).decode(),
                    "IntermediateCerts": (
                        [pki.certificate_pem(r.intermediate[0]).decode()]
                        if r.intermediate
                        else None
                    ),
                    "Active": r.id == self.active_root_id,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": r.create_index,
                    "ModifyIndex": r.modify_index,
                }
                for r in self.roots
            ],
        }

    def _leaf_for(self, service: str, ns: str = "default", partition: str = "default") -> _Leaf:
        key = (
            service if (ns, partition) == ("default", "default") else f"{partition}/{ns}/{service}"
        )
        cached = self.leaves.get(key)
        now = time.time()
        if (
            cached is None
            or cached.root_id != self.active_root_id
            or now >= cached.issued_at + 0.7 * self.leaf_ttl
        ):
            root = self.active_root
            leaf = pki.service_leaf(
                *root.signer,
                ServiceName(service, ns, partition),
                self.datacenter,
                self.trust_domain,
                valid_for=self.leaf_ttl,
            )
            cached = self.leaves[key] = _Leaf(leaf, root.id, self.indexes.next(), now)
        return cached

    def _leaf_body(self, service: str, ns: str = "default", ap: str = "default") -> dict[str, Any]:
        issued = self._leaf_for(service, ns, ap)
        cert = issued.leaf.certificate
        chain, key = pki.leaf_pem(issued.leaf)
        serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 7) // 8, "big")
        enterprise = {"Namespace": ns, "Partition": ap} if (ns, ap) != ("default",) * 2 else {}
        return {
            "SerialNumber": ":".join(f"{b:02x}" for b in serial),  # connect.HexString
            "CertPEM": chain.decode(),
            "PrivateKeyPEM": key.decode(),
            "Service": service,
            "ServiceURI": pki.uri_sans(cert)[0],
            "ValidAfter": _rfc3339(cert.not_valid_before_utc.timestamp()),
            "ValidBefore": _rfc3339(cert.not_valid_after_utc.timestamp()),
            **enterprise,
            "CreateIndex": issued.create_index,
            "ModifyIndex": issued.create_index,
        }

    def _match(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        found = []
        for (kind, _), entry in self.config.items():
            dest = entry["Name"]
            dst_ns = entry.get("Namespace") or "default"
            dst_ap = entry.get("Partition") or "default"
            if kind != "service-intentions" or dest not in (name, "*"):
                continue
            if dst_ns not in (namespace, "*"):
                continue
            for src in entry.get("Sources") or []:
                # normalize(): a source without a namespace/partition has the destination's.
                src_ns = src.get("Namespace") or dst_ns
                item: dict[str, Any] = {
                    "ID": "",
                    "Description": src.get("Description", ""),
                    "SourcePeer": src.get("Peer", ""),
                    "SourceSamenessGroup": src.get("SamenessGroup", ""),
                    "SourcePartition": src.get("Partition") or dst_ap,
                    "SourceNS": src_ns,
                    "SourceName": src["Name"],
                    "DestinationPartition": dst_ap,
                    "DestinationNS": dst_ns,
                    "DestinationName": dest,
                    "SourceType": "consul",
                    "Action": src.get("Action", ""),
                    "Precedence": precedence(src_ns, src["Name"], dst_ns, dest),
                    "Meta": {},
                    "CreateIndex": entry["CreateIndex"],
                    "ModifyIndex": entry["ModifyIndex"],
                }
                if src.get("Permissions"):
                    item["Permissions"] = src["Permissions"]
                found.append(item)
        found.sort(key=lambda i: (-i["Precedence"], i["SourceName"], i["DestinationName"]))
        return found
