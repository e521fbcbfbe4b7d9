"""gwcore.policy.redact: which config values count as secrets, and how text is scrubbed."""

from __future__ import annotations

import pytest

from gwcore.policy.redact import (
    REDACTED,
    declared_values,
    redact,
    scrub,
    secret_files,
    secret_values,
)

PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"token": "abcd1234"}, {"token": REDACTED}),
        ({"admin_token": "x" * 20, "admin": "tcp:1"}, {"admin_token": REDACTED, "admin": "tcp:1"}),
        ({"acl_token": 5}, {"acl_token": REDACTED}),
        ({"db_password": "pw", "secret": "s"}, {"db_password": REDACTED, "secret": REDACTED}),
        ({"token_file": "/run/tok"}, {"token_file": "/run/tok"}),
        ({"key_file": "leaf.key", "inline": PEM}, {"key_file": "leaf.key", "inline": REDACTED}),
        (
            {"list": [{"token": "t"}, PEM, "plain"]},
            {"list": [{"token": REDACTED}, REDACTED, "plain"]},
        ),
        ({"nested": {"token": {"not": "a string"}}}, {"nested": {"token": {"not": "a string"}}}),
    ],
)
def test_secret_keys_and_key_material_are_redacted(value: dict, expected: dict) -> None:
    assert redact(value) == expected


def test_declared_keys_apply_to_their_own_table_only() -> None:
    raw = {"sites": {"a": {"vault": {"api_key": "k1"}, "other": {"api_key": "k2"}}}}
    shown = redact(raw, {"sites.a.vault": frozenset({"api_key"})})
    assert shown["sites"]["a"]["vault"]["api_key"] == REDACTED
    assert shown["sites"]["a"]["other"]["api_key"] == "k2"


def test_known_values_are_scrubbed_wherever_they_appear_longest_first() -> None:
    assert redact({"url": "http://u:tok-123456@h"}, secrets={"tok-123456"}) == {
        "url": f"http://u:{REDACTED}@h"
    }
    assert scrub("a tok-123456 b tok-1234", {"tok-1234", "tok-123456"}) == (
        f"a {REDACTED} b {REDACTED}"
    )
    assert scrub("abc", {"a"}) == "abc"  # too short to scrub meaningfully


def test_secret_values_and_files_are_collected_from_every_table() -> None:
    raw = {
        "gateway": {"admin_token_file": "a.tok"},
        "sites": {"m": {"c": {"token": "t-1", "token_file": "/b"}}},
    }
    assert secret_values(raw) == {"t-1"}
    assert secret_files(raw) == {"a.tok", "/b"}


def test_declared_values_are_read_from_their_tables() -> None:
    raw = {"sites": {"a": {"vault": {"api_key": "k1", "region": "eu"}}, "b": "not a table"}}
    declared = {
        "sites.a.vault": frozenset({"api_key"}),
        "sites.b.vault": frozenset({"api_key"}),
        "sites.c.x": frozenset({"k"}),
    }
    assert declared_values(raw, declared) == {"k1"}
