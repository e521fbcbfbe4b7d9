"""TLS record bytes the gateway writes itself, outside OpenSSL."""

from __future__ import annotations

UNRECOGNIZED_NAME_ALERT = bytes((21, 3, 3, 0, 2, 2, 112))
"""A plaintext fatal ``unrecognized_name`` alert record (RFC 6066 §3; content type 21,
level 2 fatal, description 112), valid before any handshake keys exist."""
