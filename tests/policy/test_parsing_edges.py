"""Edges of SNI and SPIFFE parsing found by mutation testing (``make mutate``): each
test here fails when one of the parsers' early checks is removed (docs/testing.md)."""

from __future__ import annotations

import pytest

from gwcore.policy.model import ServiceName
from gwcore.policy.sni import normalize_sni, parse_service_sni, service_sni
from gwcore.policy.spiffe import IdentityError, parse_spiffe_id
from gwcore.testing import TRUST_DOMAIN

# A trust domain of the same length as ours: chopping "the last len(suffix)
# characters" of its SNIs would leave a well-formed service name of ours.
SAME_LENGTH_DOMAIN = "11111111-2222-3333-4444-666666666666.consul"


@pytest.mark.parametrize("raw", ["\u212aafka.example", "bi\u212aling.default.dc1.internal.x"])
def test_non_ascii_text_that_lowercases_to_ascii_is_not_a_server_name(raw: str) -> None:
    """The Kelvin sign (U+212A) lower-cases to ASCII "k": without the ASCII check first,
    a name nobody wrote would pass as an ordinary ASCII one."""
    assert raw.lower().isascii()
    assert normalize_sni(raw) is None


def test_a_service_sni_of_another_trust_domain_of_the_same_length_is_not_ours() -> None:
    """Another trust domain's SNI is not a service of ours, even when its trust domain
    is exactly as long as ours (the suffix is compared, not just cut off)."""
    assert len(SAME_LENGTH_DOMAIN) == len(TRUST_DOMAIN) and SAME_LENGTH_DOMAIN != TRUST_DOMAIN
    theirs = service_sni(ServiceName("billing"), "dc1", SAME_LENGTH_DOMAIN)
    assert parse_service_sni(theirs, TRUST_DOMAIN) is None
    ours = service_sni(ServiceName("billing"), "dc1", TRUST_DOMAIN)
    assert parse_service_sni(ours, TRUST_DOMAIN) is not None


@pytest.mark.parametrize("value", [42, None, b"spiffe://td.consul/ns/default/dc/dc1/svc/web"])
def test_a_uri_san_that_is_not_text_is_a_bad_identity(value: object) -> None:
    """Whatever a certificate library hands over, a non-text URI is refused as
    ``bad_spiffe_id`` naming its type (never a TypeError from deeper down)."""
    with pytest.raises(IdentityError) as refused:
        parse_spiffe_id(value)  # type: ignore[arg-type]
    assert refused.value.reason == "bad_spiffe_id"
    assert refused.value.detail == f"URI SAN is not text: {type(value).__name__}"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("spiffe://td.consul", "has no path"),
        ("spiffe://td.consul/ns//dc/dc1/svc/web", "has an empty path segment"),
        ("spiffe://td.consul/ns/default/dc/dc1/svc/", "has an empty path segment"),
    ],
)
def test_a_missing_path_or_empty_segment_is_named_in_the_refusal(uri: str, why: str) -> None:
    """The refusal says which rule the URI broke (it reaches the one-line log of the
    dropped client), so an operator can tell a truncated URI from a foreign one."""
    with pytest.raises(IdentityError) as refused:
        parse_spiffe_id(uri)
    assert refused.value.reason == "bad_spiffe_id"
    assert refused.value.detail.endswith(why), refused.value.detail
