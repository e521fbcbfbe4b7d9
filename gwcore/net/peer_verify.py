"""The peer's name checked inside the TLS handshake, as OpenSSL checks a host name.

A client that checks the server's name only after the handshake has already given
the wrong server a finished session and, with mTLS, its client certificate (TLS 1.3
sends it after the server's Finished). So the check runs in OpenSSL's certificate
verification callback, at depth 0, once the chain has verified: a mismatch fails
verification there with ``X509_V_ERR_HOSTNAME_MISMATCH`` (``IP_ADDRESS_MISMATCH`` for
an address), which OpenSSL answers with a ``bad_certificate`` alert, exactly as for
its own ``X509_VERIFY_PARAM_set1_host`` check; the client certificate is never sent.

pyOpenSSL's ``set_verify`` callback cannot set the verification error (a ``False``
from it becomes ``internal_error``), so the callback is registered through the same
cffi binding pyOpenSSL uses, with three of its internals (``Context._context``,
``Connection._reverse_mapping``, ``X509._from_raw_x509_ptr``); should a pyOpenSSL
release change them, this fails closed (no context is built, or every verification
fails; the origination tests say so at once). What to expect comes from the
connection's app data (:class:`PeerCheck`): its ``verification.check(cert)``
(service-identity semantics for DNS and IP names, exact match for a URI such as a
SPIFFE ID) decides; the first chain error and the mismatch text are recorded on it
for the failure's reason.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib


class PeerCheck(Protocol):
    """What a connection's app data provides to the verify callback."""

    verify_error: int | None
    name_mismatch: str | None

    @property
    def verification(self) -> Any:  # has ``check(cert) -> str | None`` and ``expect_san``
        ...


def _peer_app_data(store_ctx: Any) -> Any:
    ssl = _lib.X509_STORE_CTX_get_ex_data(store_ctx, _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
    conn = SSL.Connection._reverse_mapping.get(ssl)  # how pyOpenSSL's own callbacks find it
    return conn.get_app_data() if conn is not None else None


def _current_certificate(store_ctx: Any) -> x509.Certificate:
    raw = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
    _lib.X509_up_ref(raw)  # the X509 wrapper frees its reference
    return crypto.X509._from_raw_x509_ptr(raw).to_cryptography()


def _mismatch_error(expected: str) -> int:
    if "://" not in expected:
        try:
            ipaddress.ip_address(expected)
        except ValueError:
            pass
        else:
            return int(_lib.X509_V_ERR_IP_ADDRESS_MISMATCH)
    return int(_lib.X509_V_ERR_HOSTNAME_MISMATCH)


def _verify(ok: int, store_ctx: Any) -> int:
    try:
        check = _peer_app_data(store_ctx)
        if not ok:
            if getattr(check, "verify_error", 0) is None:
                check.verify_error = int(_lib.X509_STORE_CTX_get_error(store_ctx))
            return 0
        verification = getattr(check, "verification", None)
        expected = getattr(verification, "expect_san", None)
        if expected is None or _lib.X509_STORE_CTX_get_error_depth(store_ctx) != 0:
            return 1  # nothing to expect (chain only), or not the peer's own certificate
        mismatch = verification.check(_current_certificate(store_ctx))
        if mismatch is None:
            return 1
        check.name_mismatch = mismatch
        _lib.X509_STORE_CTX_set_error(store_ctx, _mismatch_error(expected))
        return 0
    except BaseException:  # never let an exception cross into OpenSSL; fail closed
        return 0


# One callback for every context: it is stateless (the connection carries the state),
# and must live as long as any context using it, so it lives as long as the module.
_VERIFY_CALLBACK = _ffi.callback("int (*)(int, X509_STORE_CTX *)", _verify)


def verify_peer_in_handshake(ctx: SSL.Context) -> None:
    """Verify the peer's chain and (per connection, from its app data) its name, in the
    handshake. Replaces any ``set_verify`` callback; the mode is ``VERIFY_PEER``."""
    _lib.SSL_CTX_set_verify(ctx._context, _lib.SSL_VERIFY_PEER, _VERIFY_CALLBACK)
