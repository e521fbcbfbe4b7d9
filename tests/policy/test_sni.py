"""Tests for gwcore.policy.sni: SNI normalisation and Consul's service SNI forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.model import ServiceName
from gwcore.policy.sni import ParsedSNI, normalize_sni, parse_service_sni, service_sni

TD = "7f42f496-8e3b-4c6d-a1b2-0123456789ab.consul"
NAME_253 = "a" * 61 + "." + ".".join(["b" * 63] * 3)
NAME_254 = "a" + NAME_253
assert len(NAME_253) == 253


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, None, id="missing"),
        pytest.param(
            b"billing.default.dc1.internal.td", "billing.default.dc1.internal.td", id="bytes"
        ),
        pytest.param(
            "Billing.Default.DC1.internal.TD", "billing.default.dc1.internal.td", id="case"
        ),
        pytest.param("billing.example.com.", "billing.example.com", id="one-trailing-dot"),
        pytest.param("billing.example.com..", None, id="two-trailing-dots"),
        pytest.param("my_svc.default.dc1", "my_svc.default.dc1", id="underscore"),
        pytest.param("a-b.c", "a-b.c", id="dash"),
        pytest.param("", None, id="empty"),
        pytest.param(".", None, id="only-dot"),
        pytest.param(b"", None, id="empty-bytes"),
        pytest.param("a..b", None, id="empty-label"),
        pytest.param(".a.b", None, id="leading-dot"),
        pytest.param("a" * 63 + ".b", "a" * 63 + ".b", id="label-63"),
        pytest.param("a" * 64 + ".b", None, id="label-64"),
        pytest.param(NAME_253, NAME_253, id="len-253"),
        pytest.param(NAME_254, None, id="len-254"),
        pytest.param("bïlling.example", None, id="non-ascii-str"),
        pytest.param("bïlling.example".encode(), None, id="non-ascii-bytes"),
        pytest.param(b"\xff\xfe", None, id="invalid-bytes"),
        pytest.param("a b.example", None, id="space"),
        pytest.param("a*.example", None, id="star"),
        pytest.param("a/b.example", None, id="slash"),
        pytest.param("a\x00.example", None, id="nul"),
        pytest.param("a:443", None, id="port"),
        pytest.param("1.2.3.4", "1.2.3.4", id="digits"),
    ],
)
def test_normalize_sni(raw: bytes | str | None, expected: str | None) -> None:
    """Names are lower-cased, lose one trailing dot, and anything malformed is None."""
    assert normalize_sni(raw) == expected


def test_normalize_sni_length_counts_without_trailing_dot() -> None:
    """A 253-character name with a trailing dot is still valid (254 on the wire)."""
    assert normalize_sni(NAME_253 + ".") == NAME_253


@pytest.mark.parametrize(
    ("service", "dc", "subset", "expected"),
    [
        pytest.param(
            ServiceName("s2"), "dc1", None, f"s2.default.dc1.internal.{TD}", id="default-partition"
        ),
        pytest.param(
            ServiceName("s2"), "dc1", "v1", f"v1.s2.default.dc1.internal.{TD}", id="subset"
        ),
        pytest.param(
            ServiceName("s2", "team"), "dc2", None, f"s2.team.dc2.internal.{TD}", id="namespace"
        ),
        pytest.param(
            ServiceName("s2", "ns", "ap1"),
            "dc1",
            None,
            f"s2.ns.ap1.dc1.internal-v1.{TD}",
            id="partition",
        ),
        pytest.param(
            ServiceName("s2", "ns", "ap1"),
            "dc1",
            "v2",
            f"v2.s2.ns.ap1.dc1.internal-v1.{TD}",
            id="partition-subset",
        ),
        pytest.param(
            ServiceName("Billing"), "DC1", None, f"billing.default.dc1.internal.{TD}", id="lowered"
        ),
    ],
)
def test_service_sni_forms(
    service: ServiceName, dc: str, subset: str | None, expected: str
) -> None:
    """service_sni produces Consul's ServiceSNI forms, lower-cased."""
    assert service_sni(service, dc, TD, subset) == expected


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        pytest.param(
            f"s2.default.dc1.internal.{TD}",
            ParsedSNI(ServiceName("s2"), "dc1", None),
            id="default-partition",
        ),
        pytest.param(
            f"v1.s2.default.dc1.internal.{TD}",
            ParsedSNI(ServiceName("s2"), "dc1", "v1"),
            id="subset",
        ),
        pytest.param(
            f"s2.ns.ap1.dc3.internal-v1.{TD}",
            ParsedSNI(ServiceName("s2", "ns", "ap1"), "dc3", None),
            id="partition",
        ),
        pytest.param(
            f"v1.s2.ns.ap1.dc3.internal-v1.{TD}",
            ParsedSNI(ServiceName("s2", "ns", "ap1"), "dc3", "v1"),
            id="partition-subset",
        ),
        pytest.param("s2.default.dc1.internal.other.consul", None, id="other-trust-domain"),
        pytest.param(f"s2.default.dc1.internal.x{TD}", None, id="trust-domain-suffix-only"),
        pytest.param(f"default.dc1.internal.{TD}", None, id="too-few-labels"),
        pytest.param(f"a.v1.s2.default.dc1.internal.{TD}", None, id="too-many-labels"),
        pytest.param(f"s2.ns.dc1.internal-v1.{TD}", None, id="v1-too-few"),
        pytest.param(f"s2.default.dc1.external.{TD}", None, id="peered-form-not-service"),
        pytest.param(f"s2.default.default.dc1.internal-v1.{TD}", None, id="v1-default-partition"),
        pytest.param(f"s2..dc1.internal.{TD}", None, id="empty-label"),
        pytest.param(TD, None, id="bare-trust-domain"),
        pytest.param(f"internal.{TD}", None, id="only-kind"),
    ],
)
def test_parse_service_sni(sni: str, expected: ParsedSNI | None) -> None:
    """Only canonical service SNIs in the given trust domain parse."""
    assert parse_service_sni(sni, TD) == expected


def test_parse_service_sni_trust_domain_is_case_insensitive() -> None:
    """A trust domain configured in upper case still matches the normalised name."""
    parsed = parse_service_sni(f"s2.default.dc1.internal.{TD}", TD.upper())
    assert parsed == ParsedSNI(ServiceName("s2"), "dc1", None)


label = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,20}\Z")
trust_domain = st.lists(label, min_size=1, max_size=3).map(".".join)


@given(
    name=label,
    namespace=label,
    partition=label,
    dc=label,
    td=trust_domain,
    subset=st.none() | label,
)
def test_service_sni_round_trips(
    name: str, namespace: str, partition: str, dc: str, td: str, subset: str | None
) -> None:
    """parse_service_sni inverts service_sni for any dot-free lower-case parts."""
    service = ServiceName(name, namespace, partition)
    sni = service_sni(service, dc, td, subset)
    assert normalize_sni(sni) == sni
    assert parse_service_sni(sni, td) == ParsedSNI(service, dc, subset)


@given(st.text(alphabet="abcXYZ019-_.", max_size=40) | st.text(max_size=20))
def test_parse_service_sni_only_accepts_canonical_names(tail: str) -> None:
    """Whatever parses rebuilds to exactly the same name: no second spelling of a route."""
    sni = normalize_sni(tail + ".internal." + TD)
    if sni is None:
        return
    parsed = parse_service_sni(sni, TD)
    if parsed is not None:
        assert service_sni(parsed.service, parsed.datacenter, TD, parsed.subset) == sni


@given(st.binary(max_size=80) | st.text(max_size=80))
def test_normalize_sni_is_idempotent(raw: bytes | str) -> None:
    """Normalising twice gives the same result as once, and results are always valid."""
    once = normalize_sni(raw)
    assert normalize_sni(once) == once
    if once is not None:
        assert once == once.lower()
        assert not once.endswith(".")
        assert 0 < len(once) <= 253


@given(st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}\Z"))
def test_normalize_sni_ignores_case_and_one_trailing_dot(name: str) -> None:
    """Every spelling a client might use of one name normalises to the same key."""
    assert normalize_sni(name.upper() + ".") == normalize_sni(name) == name


control_char = st.sampled_from([chr(c) for c in (*range(0x20), 0x7F)])


@given(name=st.from_regex(r"\A[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}\Z"), data=st.data())
def test_normalize_sni_refuses_any_control_character(name: str, data: st.DataObject) -> None:
    """A control character anywhere in a name, including a trailing newline (which a
    ``$``-anchored pattern let through), makes the name unusable, as str or bytes."""
    assert normalize_sni(name) == name
    control = data.draw(st.just("\n") | control_char)  # "$" let exactly this one through
    at = data.draw(st.just(len(name)) | st.integers(0, len(name)))  # the end first
    hostile = name[:at] + control + name[at:]
    assert normalize_sni(hostile) is None
    assert normalize_sni(hostile.encode("ascii")) is None


def test_normalize_sni_refuses_a_trailing_newline() -> None:
    """The example from issue 16: "<sni>\\n" is not a second spelling of "<sni>"."""
    sni = service_sni(ServiceName("billing"), "dc1", "example.consul")
    assert normalize_sni(sni + "\n") is None
    assert normalize_sni((sni + ".\n").encode()) is None
