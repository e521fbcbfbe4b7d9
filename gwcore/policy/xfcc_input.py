"""Which client-sent ``x-forwarded-client-cert`` values may be forwarded (sans-IO).

Under APPEND_FORWARD the gateway appends its own element after what the client sent
(``gwcore.policy.xfcc``). A client value that is not well-formed XFCC (an unbalanced
``"``, a stray separator) would make a quote-aware parser read the gateway's element
as part of the client's: the caller's identity would be swallowed or forged. So a
client's XFCC is forwarded only if it parses as Envoy's grammar
(``config/http/conn_man/headers``, ``x-forwarded-client-cert``)::

    header  = element *( "," element )
    element = pair *( ";" pair )
    pair    = key "=" value
    key     = By | Hash | Cert | Chain | Subject | URI | DNS   (any case)
    value   = quoted-string (``\\"`` and ``\\\\`` escaped) | chars other than , ; "

otherwise all of it is dropped. Matching uses RE2 (linear time: the value is the
attacker's).
"""

from __future__ import annotations

from collections.abc import Sequence

import re2

_PAIR = r'(?i:By|Hash|Cert|Chain|Subject|URI|DNS)=(?:"(?:[^"\\]|\\.)*"|[^,;"]*)'
_ELEMENT = rf"{_PAIR}(?:;{_PAIR})*"
_XFCC = re2.compile(rf"\s*{_ELEMENT}(?:\s*,\s*{_ELEMENT})*\s*")


def well_formed_xfcc(value: str) -> bool:
    """True if ``value`` is a list of XFCC elements in Envoy's grammar."""
    return _XFCC.fullmatch(value) is not None


def forwardable_xfcc(values: Sequence[str]) -> list[str]:
    """The client's XFCC values to forward before the gateway's element: all of them
    if each non-empty one is well-formed, none otherwise."""
    sent = [v for v in values if v.strip()]
    if all(well_formed_xfcc(v) for v in sent):
        return sent
    return []
