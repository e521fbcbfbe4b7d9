"""Request methods are case-sensitive (RFC 9110 §9.1).

``delete`` is not ``DELETE`` to HTTP, so an intention's ``Methods: [DELETE]`` does not
match it; yet many services upper-case the method before dispatching, and would run a
DELETE the policy never saw. A method that equals a standard one but for case is
therefore refused (reason ``bad_method``) rather than forwarded; any other token
(an extension method) is passed on as sent.
"""

from __future__ import annotations

STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
"""RFC 9110 §9.3 and PATCH (RFC 5789)."""

BAD_METHOD = "bad_method"


def miscased_method(method: str) -> bool:
    """True if ``method`` is a standard method spelled in another case."""
    return method not in STANDARD_METHODS and method.upper() in STANDARD_METHODS
