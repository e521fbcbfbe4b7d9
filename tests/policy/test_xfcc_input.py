"""Client-sent XFCC values are forwarded only if they parse as Envoy's grammar
(``gwcore.policy.xfcc_input``), so the gateway's appended element always stays a
separate, last element for a quote-aware parser."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.xfcc import rfc2253_subject, xfcc_element
from gwcore.policy.xfcc_input import forwardable_xfcc, well_formed_xfcc

GOOD = [
    'By=spiffe://td/svc/a;Hash=ab12;Subject="CN=x\\",y";URI=spiffe://td/svc/web',
    "By=a,by=b;URI=c",
    "By=a , URI=b",
    "Cert=%2D%2D%2D;Chain=%2D;DNS=a.example;DNS=b.example",
]
BAD = [
    'By=spiffe://x;URI=spiffe://td/svc/admin;Subject="',  # unbalanced quote
    'Subject="a\\"',  # the closing quote is escaped
    "By=a;",  # empty pair
    "By=a,",  # empty element
    "X=1",  # not an XFCC key
    'By=a"b',  # a quote inside an unquoted value
    "By",  # no value
]


@pytest.mark.parametrize("value", GOOD)
def test_well_formed_values_are_forwarded(value: str) -> None:
    """Envoy-shaped values (quoted values with escapes, several elements, any key
    case) are forwarded as sent."""
    assert well_formed_xfcc(value)
    assert forwardable_xfcc([value, "  "]) == [value]


@pytest.mark.parametrize("value", BAD)
def test_malformed_values_drop_everything_the_client_sent(value: str) -> None:
    """One malformed value drops all of the client's XFCC, the good ones too."""
    assert not well_formed_xfcc(value)
    assert forwardable_xfcc([GOOD[0], value]) == []


_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@given(
    by=_text,
    common_name=st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30
    ),
    uri=_text,
    dns=st.lists(_text, max_size=3),
)
def test_every_element_the_gateway_builds_is_well_formed(by, common_name, uri, dns) -> None:
    """What ``xfcc_element`` builds parses, alone and after another well-formed element
    (what the next gateway on the path would forward), for any printable By/URI/DNS
    and any subject as the gateway prints it (RFC 2253: ``"`` and ``\\`` escaped, so
    Envoy's unescaped quoting of it stays well-formed)."""
    subject = rfc2253_subject(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    element = xfcc_element(by, "00ff", subject, uri, dns)
    if well_formed_xfcc(element):
        assert well_formed_xfcc(f"{GOOD[0]},{element}")
    else:
        # Only a value Envoy writes bare (By/URI/DNS) may carry a separator; Subject
        # is always inside quotes.
        assert any(c in v for v in (by, uri, *dns) for c in ',;"')
