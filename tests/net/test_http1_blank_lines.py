"""Empty lines before a request line are skipped (RFC 9112 §2.2: a server SHOULD ignore
at least one), bounded, and a malformed body before any response is answered ``400``.

The HTTP/1.1 codec runs in memory with real request bytes (h11 parses them) and h11 as
the client reading what the codec wrote; the link and exchanges are the recording
doubles of :mod:`tests.net.test_http1_server`.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gwcore.contract.http_flow import Headers, HttpResponse
from gwcore.net.http1_blank_lines import MAX_BLANK_LINES
from tests.net.test_http1_server import Starter, codec, responses

GET = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


def test_an_empty_line_before_the_first_request_line_is_skipped() -> None:
    """``CRLF`` (and a bare ``LF``) before the first request: served as if absent, no
    bad request counted, the connection stays open."""
    for blank in (b"\r\n", b"\n", b"\r\n\n"):
        starter = Starter()
        server, link = codec(starter)
        server.data_received(blank + GET % 1)
        assert [e.request.path for e in starter.exchanges] == ["/1"], blank
        starter.exchanges[0].answer(200, b"one")
        assert responses(bytes(link.out)) == [(200, b"one")]
        assert link.bad == [] and link.closed is None


def test_a_crlf_after_a_post_body_before_the_next_request_is_skipped() -> None:
    """A kept-alive client that ends its ``POST`` body with an extra ``CRLF`` (in the same
    read as the next request): the body is exactly its ``Content-Length``, the next
    request is served on the same connection."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab\r\n" + GET % 2
    )
    first = starter.exchanges[0]
    first.request_producer.resumeProducing()
    assert first.body == b"ab" and first.ended
    first.answer(200, b"one")
    assert [e.request.path for e in starter.exchanges] == ["/p", "/2"]
    starter.exchanges[1].answer(200, b"two")
    assert responses(bytes(link.out)) == [(200, b"one"), (200, b"two")]
    assert link.bad == [] and link.closed is None


def test_a_crlf_split_across_reads_is_skipped() -> None:
    """The ``CR`` of an empty line at the end of one read, its ``LF`` at the start of the
    next (a trickling client): still one empty line, skipped."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"\r")
    assert link.bad == [] and link.closed is None
    server.data_received(b"\n" + GET % 1)
    starter.exchanges[0].answer(200, b"one")
    assert responses(bytes(link.out)) == [(200, b"one")] and link.bad == []


def test_more_empty_lines_than_the_bound_are_a_bad_request_line() -> None:
    """At most ``MAX_BLANK_LINES`` are skipped before one request line; one more is
    answered ``400`` (reason ``bad_request_line``) and nothing starts. Exactly the bound
    is still served, and the count starts again for the next request."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"\r\n" * MAX_BLANK_LINES + GET % 1)
    starter.exchanges[0].answer(200, b"one")
    server.data_received(b"\r\n" * MAX_BLANK_LINES + GET % 2)
    starter.exchanges[1].answer(200, b"two")
    assert link.bad == [] and link.closed is None
    server.data_received(b"\r\n" * (MAX_BLANK_LINES + 1) + GET % 3)
    assert len(starter.exchanges) == 2
    assert link.bad == ["bad_request_line"] and link.closed == "bad_request"
    assert responses(bytes(link.out)) == [(200, b"one"), (200, b"two"), (400, b"Bad Request\n")]


def test_a_lone_cr_not_followed_by_lf_is_still_a_bad_request_line() -> None:
    """A ``CR`` kept aside for the next read that does not start with ``LF`` is what it
    was: an invalid request line, ``400``."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"\r")
    server.data_received(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert starter.exchanges == []
    assert link.bad == ["bad_request_line"] and link.closed == "bad_request"
    assert responses(bytes(link.out)) == [(400, b"Bad Request\n")]


def test_a_malformed_chunk_before_any_response_is_answered_400() -> None:
    """A chunked body whose next chunk size is not hex, while the request's exchange has
    not answered: the client gets ``400`` with ``Connection: close`` (not a bare close),
    the reason ``bad_chunk`` is counted, the exchange is told the client is gone (so its
    upstream request is cancelled), and the bytes after the bad chunk start nothing."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nZZ\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    exchange = starter.exchanges[0]
    exchange.request_producer.resumeProducing()
    assert exchange.body == b"hello" and not exchange.ended
    assert exchange.gone is not None and exchange.gone.startswith("bad request")
    assert link.bad == ["bad_chunk"] and link.closed == "bad_request"
    assert responses(bytes(link.out)) == [(400, b"Bad Request\n")]
    assert b"connection: close" in bytes(link.out).lower()
    exchange.answer(200, b"late")  # the exchange's own answer, if any, is dropped
    assert responses(bytes(link.out)) == [(400, b"Bad Request\n")]
    assert [e.request.path for e in starter.exchanges] == ["/x"]


def test_a_malformed_chunk_after_the_response_head_closes_without_a_second_head() -> None:
    """The response to the request already started (its head went out): a bad chunk
    then cannot be answered; the connection closes after what was written."""
    starter = Starter()
    server, link = codec(starter)
    server.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    exchange = starter.exchanges[0]
    exchange.writer.write_head(HttpResponse(200, Headers([("content-length", "4")])))
    head = bytes(link.out)
    exchange.request_producer.resumeProducing()
    server.data_received(b"5\r\nhello\r\nZZ\r\n")
    assert link.bad == ["bad_chunk"] and link.closed == "bad_request"
    assert bytes(link.out) == head


@settings(max_examples=200, deadline=None)
@given(
    blanks=st.lists(st.sampled_from([b"\r\n", b"\n"]), max_size=MAX_BLANK_LINES),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=8),
    after_body=st.booleans(),
)
def test_up_to_the_bound_empty_lines_in_any_reads_are_skipped(
    blanks: list[bytes], cuts: list[int], after_body: bool
) -> None:
    """Property: up to ``MAX_BLANK_LINES`` empty lines (``CRLF`` or ``LF``) before a
    request line, after a body or not, the bytes cut into reads anywhere (a ``CRLF``
    split between two reads included): the request is served exactly as without them,
    nothing is counted as bad and the connection stays open."""
    starter = Starter()
    server, link = codec(starter)
    if after_body:
        server.data_received(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        starter.exchanges[0].request_producer.resumeProducing()
        starter.exchanges[0].answer(200, b"p")
    stream = b"".join(blanks) + GET % 1
    at = 0
    for cut in cuts:
        if at >= len(stream):
            break
        server.data_received(stream[at : at + cut])
        at += cut
    if at < len(stream):
        server.data_received(stream[at:])
    assert [e.request.path for e in starter.exchanges][-1] == "/1"
    assert link.bad == [] and link.closed is None
