"""Secrets out of what the gateway shows: the admin ``/config`` copy, logs and errors.

A value is secret when

- its key is a secret by name (:data:`SECRET_KEYS`, or a name ending in one of
  :data:`SECRET_SUFFIXES`): the Consul ACL ``token``, the admin ``admin_token``;
- a plugin declared the key secret for its own section (the ``tgw_secret_keys``
  hook, so an addon's ``api_key`` is covered without the core knowing it);
- it holds key material (a PEM private key block), whatever its key; or
- it contains a known secret value: the contents of a ``token_file`` or
  ``admin_token_file`` read at start (a token pasted into a URL is caught so).

Redaction keeps the key and replaces the value with :data:`REDACTED`, so an operator
still sees that a token is set. Pure functions, no I/O: the caller reads the files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "<redacted>"
SECRET_KEYS = frozenset({"token", "admin_token", "password", "secret", "private_key"})
SECRET_SUFFIXES = ("_token", "_password", "_secret", "_private_key")
MIN_SECRET_LENGTH = 4
"""Shorter known values are not scrubbed from text: replacing every ``a`` hides nothing."""


def is_secret_key(key: str) -> bool:
    return key in SECRET_KEYS or key.endswith(SECRET_SUFFIXES)


def holds_key_material(value: str) -> bool:
    return "-----BEGIN" in value and "PRIVATE KEY" in value


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every known secret value in it replaced by :data:`REDACTED`."""
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: no partial leaks
        if len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(
    value: Any,
    declared: Mapping[str, frozenset[str]] = {},
    secrets: Iterable[str] = (),
    path: str = "",
) -> Any:
    """A copy of a parsed config with every secret value replaced (see the module doc).

    ``declared`` maps a table's dotted path (``sites.main.my_addon``) to the keys its
    plugin declared secret.
    """
    known = tuple(secrets)
    if isinstance(value, Mapping):
        own = declared.get(path, frozenset())
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(item, str | int | float) and (is_secret_key(key) or key in own):
                out[key] = REDACTED
            else:
                out[key] = redact(item, declared, known, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list | tuple):
        return [redact(item, declared, known, path) for item in value]
    if isinstance(value, str):
        return REDACTED if holds_key_material(value) else scrub(value, known)
    return value


def secret_values(value: Any) -> set[str]:
    """The string values a config holds under secret keys (to scrub from text later)."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, str) and (is_secret_key(key) or holds_key_material(item)):
                found.add(item)
            else:
                found |= secret_values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found |= secret_values(item)
    return found


def secret_files(value: Any) -> set[str]:
    """Paths a config names under ``*token_file`` keys (their contents are secrets)."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key.endswith("token_file") and isinstance(item, str) and item:
                found.add(item)
            else:
                found |= secret_files(item)
    elif isinstance(value, list | tuple):
        for item in value:
            found |= secret_files(item)
    return found


def declared_values(raw: Mapping[str, Any], declared: Mapping[str, frozenset[str]]) -> set[str]:
    """The string values of the keys plugins declared secret (``declared`` as in
    :func:`redact`)."""
    found: set[str] = set()
    for path, keys in declared.items():
        table: Any = raw
        for part in path.split("."):
            table = table.get(part) if isinstance(table, Mapping) else None
        if isinstance(table, Mapping):
            found |= {v for k, v in table.items() if k in keys and isinstance(v, str)}
    return found
