"""``tgw connect``: why a connection to the gateway failed, in the operator's words.

The gateway refuses with a TLS alert (gwcore.net.terminator): ``unrecognized_name``
for an SNI it does not route, ``handshake_failure`` when it has no certificate for
it, certificate alerts when it does not accept the proxy's leaf. OpenSSL reports the
alert's name in its error text; this turns it into a sentence that says where to
look next.
"""

from __future__ import annotations

_ALERTS: tuple[tuple[str, str], ...] = (
    (
        "unrecognized name",
        "the gateway refused the handshake: unknown SNI {sni} (it routes no such service) "
        "— see its access log",
    ),
    (
        "handshake failure",
        "the gateway refused the handshake (handshake_failure: no certificate for SNI {sni}, "
        "or an add-on vetoed it) — see its access log",
    ),
    (
        "certificate required",
        "the gateway refused the handshake: it requires a client certificate — see its access log",
    ),
    (
        "unknown ca",
        "the gateway does not trust this proxy's certificate (unknown_ca: the leaf's CA is "
        "not one of its roots) — see its access log",
    ),
    (
        "bad certificate",
        "the gateway refused this proxy's certificate (bad_certificate: e.g. not a SPIFFE "
        "identity in a trust domain it accepts) — see its access log",
    ),
    (
        "certificate expired",
        "the gateway refused this proxy's certificate: it has expired — see its access log",
    ),
    (
        "certificate unknown",
        "the gateway refused this proxy's certificate (certificate_unknown) — see its access log",
    ),
    (
        "connection was refused",
        "nothing accepts connections at {gateway} — is the gateway running, and is --gateway "
        "(or the site's listen) right?",
    ),
    (
        "timeout",
        "no answer from the gateway at {gateway} in time",
    ),
)


def explain_failure(message: str, *, sni: str, gateway: str) -> str:
    """A sentence for a failed connection (``message`` is the error's text), or the
    message itself when it names no alert or cause we know."""
    lowered = message.lower()
    for needle, sentence in _ALERTS:
        if needle in lowered:
            return f"{sentence.format(sni=sni, gateway=gateway)} ({message})"
    return message
