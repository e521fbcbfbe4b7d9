"""gwcore.net.h11_trusted: events built trusting fields known valid say on the wire
exactly what the validating constructors say, and nothing else is trusted.

Real h11 on both ends: the "parsed" fields are what h11's own server parser made of
raw request bytes (the provenance the gateway trusts), and each event's bytes are
what an h11 client connection sends for it.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gwcore.net.h11_trusted as trusted
from gwcore.contract.http_flow import Headers
from gwcore.net.h11_trusted import (
    ValidFields,
    known_valid,
    request_event,
    response_event,
    same_provenance,
    valid_field_value,
)
from gwcore.net.http_wire import latin1_fields, text_fields
from gwcore.runtime.l7_rules import request_id, without_hop_by_hop

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
FRAMING = {"host", "content-length", "transfer-encoding"}
# A field value's bytes (RFC 9110 §5.5): visible ASCII, obs-text, spaces and tabs inside.
VALUE_BYTES = [*range(0x21, 0x7F), *range(0x80, 0x100), 0x20, 0x09]

names = st.text(alphabet=TCHAR, min_size=1, max_size=12).filter(lambda n: n.lower() not in FRAMING)
values = st.lists(st.sampled_from(VALUE_BYTES), max_size=40).map(bytes)
field_sets = st.lists(st.tuples(names, values), max_size=12)
XFCC_ELEMENT = 'By=spiffe://gw;Hash=ab12;Cert="-----BEGIN%20CERTIFICATE-----%0AMIIB%2B%3D"'


def parsed_request_fields(fields: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    """``fields`` sent to a real h11 server as a request head; its fields as the
    gateway's HTTP/1.1 codec keeps them (latin-1 text of ``raw_items()``)."""
    head = b"GET / HTTP/1.1\r\nHost: billing\r\n"
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in fields)
    server = h11.Connection(h11.SERVER)
    server.receive_data(head + b"\r\n")
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return text_fields(event.headers.raw_items())


def sent(event: object, client: bool = True) -> bytes:
    if client:
        return h11.Connection(h11.CLIENT).send(event)
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    server.next_event()
    return server.send(event)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field_sets, st.booleans(), st.booleans())
def test_a_trusted_event_is_the_validating_event_byte_for_byte(fields, client_id, chunked):
    """For any header set h11 parsed (obs-text, inner spaces and tabs, any token name),
    minus its hop-by-hop fields, plus the gateway's own (``x-forwarded-proto``, an
    ``x-request-id``, the XFCC element, ``transfer-encoding: chunked``), the request
    and the response built trusting the fields serialise to the same bytes as the ones
    h11's validating constructors build."""
    kept = without_hop_by_hop(parsed_request_fields(fields))
    kept.append(("x-forwarded-proto", "https"))
    if not client_id:
        kept.append(("x-request-id", request_id()))
    kept.append(("x-forwarded-client-cert", XFCC_ELEMENT))
    if chunked:
        kept.append(("transfer-encoding", "chunked"))
    headers = ValidFields.adopt(kept)
    assert known_valid(headers)
    wire = latin1_fields(headers)
    fast = request_event(b"GET", b"/a/b?c=d", list(wire), trusted=True)
    slow = h11.Request(method=b"GET", target=b"/a/b?c=d", headers=list(wire))
    assert sent(fast) == sent(slow)
    assert list(fast.headers) == list(slow.headers)
    fast_response = response_event(200, list(wire), b"OK", trusted=True)
    slow_response = h11.Response(status_code=200, headers=list(wire), reason=b"OK")
    assert sent(fast_response, client=False) == sent(slow_response, client=False)


@pytest.mark.parametrize("bad", ["a\r\nInjected: 1", "a\nb", "a\x00b", " lead", "trail\t"])
def test_a_field_added_to_valid_fields_is_checked_again(bad: str):
    """``add`` or ``set`` on known-valid fields (an addon's value with CR, LF, NUL or
    outer white space) drops the mark: the event is built the validating way and h11
    refuses it; removing a field keeps the mark."""
    for change in ("add", "set"):
        headers = ValidFields([("host", "billing"), ("x-a", "1")])
        headers.remove("x-a")
        assert known_valid(headers)
        getattr(headers, change)("x-evil", bad)
        assert not known_valid(headers)
        with pytest.raises(h11.LocalProtocolError):
            request_event(b"GET", b"/", latin1_fields(headers), known_valid(headers))


def test_only_valid_fields_carry_their_provenance():
    """Plain ``Headers`` (an addon's copy, an HTTP/2 peer's fields) are never known
    valid, and neither are fields taken from them; fields taken from known-valid ones
    are."""
    plain = Headers([("host", "b")])
    assert not known_valid(plain)
    assert not known_valid(same_provenance(plain, [("host", "b")]))
    valid = ValidFields([("host", "b")])
    assert known_valid(same_provenance(valid, [("host", "b"), ("x-forwarded-proto", "https")]))


@pytest.mark.parametrize(
    "value, ok",
    [
        (XFCC_ELEMENT, True),
        ("By=spiffe://gw;DNS=a\r\nInjected: 1", False),
        ("By=x;DNS=a\x00", False),
        ("By=x;Subject=\u20ac", False),  # beyond latin-1: cannot be sent at all
        ("By=x ", False),
    ],
)
def test_a_gateway_value_is_checked_by_h11s_public_constructor(value: str, ok: bool):
    """The XFCC element's one check per connection says what h11 would say of it."""
    assert valid_field_value(value) is ok


@pytest.mark.parametrize("h11_checks", [True, False], ids=["h11-checks", "checked-here"])
@pytest.mark.parametrize(
    "method, target", [(b"GET", b"/a b"), (b"GET", b"/a\x00"), (b"GET", b""), (b"G T", b"/")]
)
def test_an_invalid_target_or_method_is_refused_when_fields_are_trusted(
    monkeypatch, h11_checks: bool, method: bytes, target: bytes
):
    """A target that would be invalid (a normalised path with a space, a NUL) or a
    method that is no token is refused as h11 refuses it, whether the installed h11
    still checks the request line with trusted fields or this module must."""
    monkeypatch.setattr(trusted, "CHECKS_REQUEST_LINE", h11_checks)
    fields = [(b"host", b"billing")]
    with pytest.raises(h11.LocalProtocolError):
        request_event(method, target, fields, trusted=True)
    with pytest.raises(h11.LocalProtocolError):
        h11.Request(method=method, target=target, headers=fields)


def test_the_installed_h11_is_trusted_and_still_checks_framing_and_the_request_line():
    """h11 0.16: its constructors take ``_parsed`` and still check Content-Length and
    Transfer-Encoding, a request's method and its target."""
    assert trusted.detect() == (True, True)
    assert (trusted.TRUSTING, trusted.CHECKS_REQUEST_LINE) == (True, True)
    with pytest.raises(h11.LocalProtocolError):
        request_event(b"GET", b"/", [(b"host", b"b"), (b"content-length", b"x")], trusted=True)


class _NoParsedRequest(h11.Request):
    """An h11 whose constructors know no ``_parsed`` (a later release may drop it)."""

    __slots__ = ()

    def __init__(self, **kwargs):
        if "_parsed" in kwargs:
            raise TypeError("unexpected keyword argument '_parsed'")
        super().__init__(**kwargs)


def test_without_parsed_every_event_is_built_the_validating_way(monkeypatch):
    """Detection finds an h11 without ``_parsed``: nothing is trusted, and a value that
    would need the check (CR LF) is refused even in known-valid fields."""
    monkeypatch.setattr(h11, "Request", _NoParsedRequest)
    assert trusted.detect() == (False, False)
    monkeypatch.setattr(trusted, "TRUSTING", False)
    forged = ValidFields.adopt([("host", "b"), ("x-a", "1\r\nInjected: 1")])
    assert not known_valid(forged)
    with pytest.raises(h11.LocalProtocolError):
        request_event(b"GET", b"/", latin1_fields(forged), trusted=True)
    with pytest.raises(h11.LocalProtocolError):
        response_event(200, latin1_fields(forged), b"OK", trusted=True)
    ok = request_event(b"GET", b"/", [(b"host", b"b")], trusted=True)
    assert (ok.method, ok.target, list(ok.headers)) == (b"GET", b"/", [(b"host", b"b")])


def test_an_h11_that_stops_checking_framing_with_parsed_is_not_trusted(monkeypatch):
    """If ``_parsed`` ever skipped the Content-Length check too, detection says so and
    nothing is trusted."""
    real = h11.Request

    class Lax(real):
        __slots__ = ()

        def __init__(self, **kwargs):
            headers = kwargs.get("headers", [])
            if kwargs.get("_parsed"):
                kwargs["headers"] = [(k, v) for k, v in headers if k != b"content-length"]
            super().__init__(**kwargs)

    monkeypatch.setattr(h11, "Request", Lax)
    assert trusted.detect()[0] is False
