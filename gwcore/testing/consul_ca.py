"""The Consul double's CA helpers: an intermediate signing CA under a root.

Consul's built-in CA (and Vault or ACM PCA providers) may sign leaves with an
intermediate: ``/v1/agent/connect/ca/roots`` then lists it in the root's
``IntermediateCerts`` and ``/v1/agent/connect/ca/leaf`` returns ``CertPEM`` as the leaf
followed by the intermediate (reference §5).
"""

from __future__ import annotations

import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gwcore.contract import pki


def intermediate_ca(
    root_cert: x509.Certificate, root_key: Any, trust_domain: str, valid_for: float = 3 * 86400
) -> tuple[x509.Certificate, Any]:
    """A CA certificate signed by ``root_cert`` (path length 0), and its key."""
    key = pki.new_key()
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(seconds=valid_for), root_cert.not_valid_after_utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    root_ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    name = f"Consul CA Intermediate {x509.random_serial_number() % 10**6}"
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    return cert, key
