"""A small OPA-REST-compatible server for tests: real Rego through regopy, on 127.0.0.1.

It answers ``POST /v1/data/<path>`` as OPA does (``{"result": ...}``, ``{}`` when
undefined, 500 with ``code``/``message`` on an evaluation error) and can be told to
misbehave: answer with a status, stall, or drop connections. It counts requests and
the most that were in flight at once. Threads (``ThreadingHTTPServer``) so a
stalled request does not block others; the regopy interpreter is not thread-safe
(input is interpreter state), so evaluation holds a lock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from regopy import Interpreter, LogLevel


class OpaServer:
    """``policy`` is Rego source; ``url`` is the base URL to configure the engine with."""

    def __init__(self, policy: str) -> None:
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.fail_statuses: list[int] = []  # answered (then removed) before evaluating
        self.stall = threading.Event()  # set: requests wait until released
        self.release = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self.set_policy(policy)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = server.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def set_policy(self, policy: str) -> None:
        interpreter = Interpreter()
        interpreter.log_level = LogLevel.NONE
        interpreter.add_module("policy.rego", policy)
        with self._lock:
            self._interpreter = interpreter

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append({"path": path, "body": body})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            status = self.fail_statuses.pop(0) if self.fail_statuses else 200
        try:
            if self.stall.is_set():
                self.release.wait(10)  # bounded: a test that forgets to release still ends
            if status != 200:
                return status, {"code": "internal_error", "message": f"told to answer {status}"}
            if not path.startswith("/v1/data/"):
                return 404, {"code": "resource_not_found", "message": path}
            query = "data." + path[len("/v1/data/") :].strip("/").replace("/", ".")
            with self._lock:
                self._interpreter.set_input(body.get("input"))
                # Bound to a variable: rego-cpp 1.5.2 treats a bare reference whose value
                # is false as an unsatisfied query (undefined), unlike OPA.
                output = self._interpreter.query(f"x := {query}")
            if not output.ok():
                return 500, {"code": "internal_error", "message": "evaluation failed"}
            if not output.results or "x" not in output.results[0].bindings:
                return 200, {}
            return 200, {"result": output.results[0].bindings["x"]}
        finally:
            with self._lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class OpaServers:
    """Starts servers for one test and closes them all (use from a fixture)."""

    def __init__(self) -> None:
        self._made: list[OpaServer] = []

    def start(self, policy: str) -> OpaServer:
        server = OpaServer(policy)
        self._made.append(server)
        return server

    def close(self) -> None:
        for server in self._made:
            server.close()


@pytest.fixture(name="opa_servers")
def opa_servers_fixture() -> Iterator[OpaServers]:
    """``opa_servers``: import ``opa_servers_fixture`` into a test module to use it."""
    servers = OpaServers()
    yield servers
    servers.close()
