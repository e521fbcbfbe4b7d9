"""What the HTTP/1.1 codec alone costs per proxied request: the floor under L7 mode.

An L7 exchange through tgw parses the client's request, writes it to the service,
parses the service's response and writes it to the client: two h11 connections
(``SERVER`` towards the client, ``CLIENT`` towards the service), four messages. This
runs exactly that sequence in a loop, with no sockets, no TLS and no policy, on the
same request and response as the ``l7`` scenario of ``bench.cost`` (wrk's GET, nginx's
1 KiB answer with its usual headers), and prints the CPU time per exchange.

Whatever the rest of the gateway does, an L7 request cannot cost less CPU than this
plus an L4 keep-alive request (``bench.cost --scenario keepalive``): comparing the sum
with a peer's CPU per request says what is reachable with the codec.

    .venv/bin/python -m bench.codec_floor -n 20000

With ``--with-llhttp`` (and ``httptools`` installed, which tgw does not depend on)
the same messages are parsed by llhttp and the heads joined back, for comparison:
a parser only, without the state machine h11 keeps (framing, keep-alive, 100-continue),
so it is a lower bound for a codec built on it, not an equal.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import h11

REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 10:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Sun, 06 Dec 2026 09:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6932f6d0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)


def h11_exchange() -> Callable[[], None]:
    """One proxied request through two kept-alive h11 connections."""
    down, up = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)

    def once() -> None:
        down.receive_data(REQUEST)
        request = down.next_event()
        assert isinstance(request, h11.Request)
        assert isinstance(down.next_event(), h11.EndOfMessage)
        up.send(h11.Request(method=request.method, target=request.target, headers=request.headers))
        up.send(h11.EndOfMessage())
        up.receive_data(RESPONSE)
        response = up.next_event()
        assert isinstance(response, h11.Response)
        data = up.next_event()
        assert isinstance(data, h11.Data)
        assert isinstance(up.next_event(), h11.EndOfMessage)
        down.send(h11.Response(status_code=response.status_code, headers=response.headers))
        down.send(h11.Data(data=data.data))
        down.send(h11.EndOfMessage())
        down.start_next_cycle()
        up.start_next_cycle()

    return once


def llhttp_exchange() -> Callable[[], None]:
    """The same messages parsed by llhttp (``httptools``) and the heads joined back."""
    import httptools  # optional, for comparison only

    class Message:
        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []
            self.body: list[bytes] = []
            self.complete = False

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            self.complete = True

    def head(first: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
        return b"".join([first, *(n + b": " + v + b"\r\n" for n, v in headers), b"\r\n"])

    def once() -> None:
        request = Message()
        httptools.HttpRequestParser(request).feed_data(REQUEST)
        head(b"GET " + request.url + b" HTTP/1.1\r\n", request.headers)
        response = Message()
        httptools.HttpResponseParser(response).feed_data(RESPONSE)
        assert request.complete and response.complete
        head(b"HTTP/1.1 200 OK\r\n", response.headers) + b"".join(response.body)

    return once


def per_call(once: Callable[[], None], count: int) -> float:
    """CPU seconds per call of ``once``, after a warm-up of a tenth of ``count``."""
    for _ in range(max(1, count // 10)):
        once()
    start = time.process_time()
    for _ in range(count):
        once()
    return (time.process_time() - start) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.codec_floor", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-n", "--count", type=int, default=20000)
    parser.add_argument("--with-llhttp", action="store_true", help="also llhttp (httptools)")
    args = parser.parse_args(argv)
    print(f"h11: {per_call(h11_exchange(), args.count) * 1e6:.1f} µs CPU per proxied request")
    if args.with_llhttp:
        figure = per_call(llhttp_exchange(), args.count) * 1e6
        print(f"llhttp (parse + join, no state machine): {figure:.1f} µs CPU per proxied request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
