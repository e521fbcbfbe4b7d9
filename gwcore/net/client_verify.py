"""The client's certificate chain, verified by OpenSSL; Python hears only of failures.

pyOpenSSL's ``set_verify`` callback runs for every certificate of the chain on every
handshake, and wraps each in an ``X509`` object first, to call a Python function that,
for a chain OpenSSL accepts, has nothing to do: OpenSSL already decided, and the leaf a
verified client presented is read once the handshake is over
(``get_peer_certificate``). What the gateway needs from the callback is what a
*failure* leaves behind only there: the first ``X509_V_ERR_*`` code (the metric's
reason) and, when the leaf itself failed, the leaf (the access log names the
certificate that was refused).

So the callback is registered through the cffi binding pyOpenSSL itself uses, as
:mod:`gwcore.net.peer_verify` does for the upstream side and with the same internals
(``Context._context``, ``Connection._reverse_mapping``, ``X509._from_raw_x509_ptr``):
a check OpenSSL passed returns at once, with no Python object made; a failed one
calls ``on_failure(conn, cert, errnum, depth, 0)`` with pyOpenSSL objects (``cert``
is ``None`` for an error with no current certificate), exactly as
``set_verify``'s callback would be called, and what it returns decides, as there (a
true value overrides the error).
Anything raised fails the verification (OpenSSL never sees a Python exception); should
a pyOpenSSL release change those internals, every client verification fails closed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

VerifyCallback = Callable[[SSL.Connection, crypto.X509 | None, int, int, int], bool]


class ClientVerifier:
    """One verify callback (for every context of a site) that calls ``on_failure``
    for each certificate OpenSSL refused (see the module docstring)."""

    def __init__(self, on_failure: VerifyCallback) -> None:
        self._on_failure = on_failure
        self._callback = _ffi.callback("int (*)(int, X509_STORE_CTX *)", self._verify)

    def install(self, ctx: SSL.Context, mode: int) -> None:
        """Verify peers on ``ctx`` with ``mode`` (``SSL.VERIFY_*`` flags) through this
        callback; ``ctx`` keeps the callback alive as long as it lives."""
        _lib.SSL_CTX_set_verify(ctx._context, mode, self._callback)
        ctx._tgw_client_verifier = self  # type: ignore[attr-defined]

    def _verify(self, ok: int, store_ctx: Any) -> int:
        if ok:
            return 1  # OpenSSL accepted this certificate: nothing to hear
        try:
            ssl = _lib.X509_STORE_CTX_get_ex_data(
                store_ctx, _lib.SSL_get_ex_data_X509_STORE_CTX_idx()
            )
            conn = SSL.Connection._reverse_mapping[ssl]  # how pyOpenSSL's callbacks find it
            raw = _lib.X509_STORE_CTX_get_current_cert(store_ctx)
            cert = None  # some errors (a policy check's) leave no current certificate
            if raw != _ffi.NULL:
                _lib.X509_up_ref(raw)  # the X509 wrapper frees its reference
                cert = crypto.X509._from_raw_x509_ptr(raw)
            errnum = int(_lib.X509_STORE_CTX_get_error(store_ctx))
            depth = int(_lib.X509_STORE_CTX_get_error_depth(store_ctx))
            if not self._on_failure(conn, cert, errnum, depth, 0):
                return 0
            _lib.X509_STORE_CTX_set_error(store_ctx, _lib.X509_V_OK)  # as set_verify's
            return 1
        except BaseException:  # never let an exception cross into OpenSSL; fail closed
            return 0
