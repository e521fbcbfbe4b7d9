"""Credentials in URL-valued settings: refused, and never echoed.

A URL setting is shown by the admin ``/config``, printed by check-config and written
into log lines (every retry warning, every OPA error that becomes a denial reason,
the access log's ``reason``). A password in its user-info (``http://bob:PW@host``)
or a token in its query string (``?token=...``) would travel with it. The built-in
plugins authenticate with dedicated settings (Consul's ``token``/``token_file``), so
such a URL is a configuration problem naming the key; the message never holds the
value. Pure functions, no I/O.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

CREDENTIAL_PARAM_WORDS = (
    "token",
    "passw",
    "pwd",
    "secret",
    "key",
    "auth",
    "credential",
    "signature",
    "session",
)
"""A query parameter whose lower-cased name contains one of these holds a credential."""


def credential_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in CREDENTIAL_PARAM_WORDS)


def url_credentials(url: str, *, query: bool = True) -> str | None:
    """Why ``url`` must be refused because it carries credentials, or ``None``.

    User-info (anything before an ``@`` in the authority) is always refused; so is a
    query parameter named like a credential, and with ``query=False`` any query
    string or fragment at all (a URL that is only a base address). The reason never
    contains ``url`` or any part of it.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return None  # not a URL at all: the caller's own check refuses it
    if "@" in parts.netloc or ("://" not in url and "@" in url.split("/", 1)[0]):
        return "must not hold credentials (user:password@host)"
    if not query:
        if parts.query or parts.fragment or "?" in url or "#" in url:
            return "must not have a query string or fragment (it would be shown and logged)"
        return None
    names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
    names += [name for name, _ in parse_qsl(parts.fragment, keep_blank_values=True)]
    if any(credential_param(name) for name in names):
        return "must not hold credentials in its query string (such as ?token=)"
    return None
