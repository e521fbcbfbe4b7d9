"""The floor under an L4 TLS relay written in Python: the interpreter's cost with nothing else.

A terminating gateway's keep-alive request is, at the least, per direction: a wake-up
from ``epoll``, a read, the TLS record through OpenSSL, and a write. This is a relay
that does only that, in a plain ``epoll`` loop with no Twisted, no policy, no metrics,
no access log, no flow control and no timers; the TLS calls are made on OpenSSL through
pyOpenSSL's cffi binding directly (the cheapest way Python has to reach them). It
serves the benchmark's mesh leaf with client verification, like the gateways, and
forwards to the nginx upstream. Two ways to move the records:

- ``bio`` (what tgw does): the relay reads the socket, writes the ciphertext into
  OpenSSL's memory BIO, reads plaintext out (and the reverse);
- ``socket``: OpenSSL reads and writes the socket itself (``SSL_set_fd``): fewer
  Python calls per record, but without read-ahead (pyOpenSSL's binding does not offer
  it) a record costs two ``recv`` and a read that finds nothing one more.

It is not a gateway (a bulk transfer that fills a socket buffer waits blocking, an
error closes both sides): it is a lower bound for what any Python gateway built on
these calls can spend per request. ``bench.cost --gateway floor-bio`` or
``floor-socket`` measures it next to tgw, nginx and HAProxy on the same fixed load
(keep-alive scenario):

    .venv/bin/python -m bench.cost --measure cpu --scenario keepalive --gateway floor-bio
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from bench.peers import Gateway
from bench.topology import HOST, PLAIN, free_port, wait_port

if TYPE_CHECKING:
    from bench.material import Material
    from bench.peers import Upstream
    from bench.processes import Processes

READ_SIZE = 256 * 1024
RECORD = 16 * 1024
_WANT_READ = lib.SSL_ERROR_WANT_READ


def _context(leaf: Path, key: Path, ca: Path) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate_chain_file(str(leaf))
    ctx.use_privatekey_file(str(key))
    ctx.load_verify_locations(str(ca))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1]))
    return ctx


class Relay:
    """One client connection and its upstream connection, registered on one epoll."""

    def __init__(self, loop: Loop, client: socket.socket, tls: SSL.Connection, mode: str) -> None:
        self.loop = loop
        self.client = client
        self.tls = tls
        self.ssl = tls._ssl  # type: ignore[attr-defined]
        self.buf = ffi.new("char[]", READ_SIZE)
        self.upstream = socket.create_connection((HOST, loop.upstream_port))
        for sock in (client, self.upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        if mode == "bio":
            self.into = tls._into_ssl  # type: ignore[attr-defined]
            self.out_of = tls._from_ssl  # type: ignore[attr-defined]
            on_client, on_upstream = self.client_bio, self.upstream_bio
        else:
            on_client, on_upstream = self.client_socket, self.upstream_socket
        loop.add(client, on_client)
        loop.add(self.upstream, on_upstream)

    # --- memory BIO ------------------------------------------------------------------

    def client_bio(self) -> None:
        data = self.client.recv(READ_SIZE)
        if not data:
            return self.close("client")
        lib.BIO_write(self.into, data, len(data))
        plain = []
        while True:
            got = lib.SSL_read(self.ssl, self.buf, READ_SIZE)
            if got <= 0:
                break
            plain.append(ffi.unpack(self.buf, got))
        if lib.SSL_get_error(self.ssl, got) != _WANT_READ:
            return self.close(f"SSL_read: error {lib.SSL_get_error(self.ssl, got)}")
        if plain:
            self.upstream.sendall(b"".join(plain))
        return None

    def upstream_bio(self) -> None:
        data = self.upstream.recv(READ_SIZE)
        if not data:
            return self.close("upstream")
        out = []
        for start in range(0, len(data), RECORD):
            piece = data[start : start + RECORD]
            lib.SSL_write(self.ssl, piece, len(piece))
            got = lib.BIO_read(self.out_of, self.buf, READ_SIZE)
            out.append(ffi.unpack(self.buf, got))
        self.loop.sent += len(data)
        self._send_client(out)
        return None

    def _send_client(self, out: list[bytes]) -> None:
        try:
            sent = self.client.sendmsg(out)
        except BlockingIOError:
            sent = 0
        rest = b"".join(out)[sent:]
        if rest:  # a full socket buffer: wait for it (a floor, not a gateway)
            self.client.setblocking(True)
            self.client.sendall(rest)
            self.client.setblocking(False)

    # --- OpenSSL on the socket -------------------------------------------------------

    def client_socket(self) -> None:
        while True:
            got = lib.SSL_read(self.ssl, self.buf, READ_SIZE)
            if got <= 0:
                break
            self.upstream.sendall(ffi.buffer(self.buf, got))
        if lib.SSL_get_error(self.ssl, got) != _WANT_READ:
            self.close()

    def upstream_socket(self) -> None:
        data = self.upstream.recv(READ_SIZE)
        if not data:
            return self.close("upstream")
        self.loop.sent += len(data)
        done = 0
        with ffi.from_buffer(data) as buf:  # a retried write passes the same bytes
            while done < len(data):
                got = lib.SSL_write(self.ssl, buf + done, len(data) - done)
                if got > 0:
                    done += got
                elif lib.SSL_get_error(self.ssl, got) == lib.SSL_ERROR_WANT_WRITE:
                    # A full socket buffer: wait for it (a floor, not a gateway).
                    select.select([], [self.client], [], 10)
                else:
                    return self.close(f"SSL_write: error {lib.SSL_get_error(self.ssl, got)}")
        return None

    def close(self, why: str = "") -> None:
        if why:
            print(f"closing a relay: {why}", file=sys.stderr, flush=True)
        for sock in (self.client, self.upstream):
            if sock.fileno() >= 0:
                self.loop.remove(sock)
                sock.close()


class Loop:
    """An ``epoll`` loop: one handler per descriptor, called when it is readable."""

    def __init__(self, upstream_port: int, counter: Path | None = None) -> None:
        self.upstream_port = upstream_port
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[], object]] = {}
        self.sent = 0  # plaintext bytes sent to clients, for bench.gateways' check
        self.counter = counter

    def add(self, sock: socket.socket, handler: Callable[[], object]) -> None:
        self.handlers[sock.fileno()] = handler
        self.epoll.register(sock.fileno(), select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def run(self) -> None:
        handlers = self.handlers
        written = 0
        while True:
            # Woken at least every 0.1 s to write the byte count (when it moved).
            for fd, _ in self.epoll.poll(0.1):
                handler = handlers.get(fd)
                if handler is not None:
                    try:
                        handler()
                    except OSError as e:  # a reset: the relay's close is its handler's owner's
                        owner = getattr(handler, "__self__", None)
                        if isinstance(owner, Relay):
                            owner.close(str(e))
            if self.counter is not None and self.sent != written:
                written = self.sent
                self.counter.write_text(str(written))


def serve(args: argparse.Namespace) -> None:
    ctx = _context(args.leaf, args.key, args.ca)
    loop = Loop(args.upstream, args.counter)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, args.port))
    listener.listen(512)

    def accept() -> None:
        client, _ = listener.accept()
        client.setblocking(True)  # the handshake waits (OpenSSL on the descriptor too)
        try:
            if args.mode == "socket":
                tls = SSL.Connection(ctx, client)
                tls.set_accept_state()
                tls.do_handshake()
            else:
                tls = _bio_handshake(ctx, client)
        except (OSError, SSL.Error):
            client.close()
            return
        Relay(loop, client, tls, args.mode)

    loop.handlers[listener.fileno()] = accept
    loop.epoll.register(listener.fileno(), select.EPOLLIN)
    loop.run()


def _bio_handshake(ctx: SSL.Context, client: socket.socket) -> SSL.Connection:
    """The handshake through memory BIOs, on a blocking socket."""
    tls = SSL.Connection(ctx, None)
    tls.set_accept_state()
    while True:
        try:
            tls.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        while True:
            try:
                client.sendall(tls.bio_read(READ_SIZE))
            except SSL.WantReadError:
                break
        if done:
            return tls
        data = client.recv(READ_SIZE)
        if not data:
            raise OSError("client closed during the handshake")
        tls.bio_write(data)


def start_floor(
    procs: Processes, m: Material, up: Upstream, mode: str, prefix: tuple[str, ...] = ()
) -> Gateway:
    """The floor relay as a benchmark gateway (plain-upstream SNI only), started under
    ``prefix`` (``bench.cost``: valgrind) like :func:`bench.peers.start_tgw`."""
    port = free_port()
    counter = m.dir / f"floor-{mode}.sent"
    leaf, key, _ = m.leaves[PLAIN]
    argv = [sys.executable, "-m", "bench.relay_floor", "--mode", mode, "--port", str(port)]
    argv += ["--upstream", str(up.plain), "--leaf", str(leaf), "--key", str(key), "--ca", str(m.ca)]
    argv += ["--counter", str(counter)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = procs.start(f"floor-{mode}", [*prefix, *argv], env=env)
    wait_port(port, timeout=600 if prefix else 20, proc=proc)
    info = {"counter": str(counter), "scenarios": ["keepalive_1k", "bulk_1m"]}
    return Gateway(f"floor-{mode}", "floor", proc, port, port, info=info)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay_floor", description=__doc__)
    parser.add_argument("--mode", choices=("bio", "socket"), default="bio")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True, help="the plain upstream's port")
    parser.add_argument("--leaf", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--counter", type=Path, help="write the bytes sent to clients here")
    serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
