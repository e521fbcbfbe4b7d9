"""The harness's own guarantees: an upstream handler that raised fails the test."""

from __future__ import annotations

import socket

import pytest

from tests import harness
from tests.harness import Upstream


def test_a_raising_upstream_handler_fails_the_test() -> None:
    """The check the autouse fixture in tests/conftest.py runs after every test names
    the handler's exception and fails; with no error it passes silently."""

    def broken(sock: socket.socket, up: Upstream) -> None:
        raise ValueError("handler bug")

    up = Upstream(broken)
    try:
        harness.raise_handler_errors([up])  # nothing yet
        with socket.create_connection(("127.0.0.1", up.port), timeout=10):
            assert up.done.wait(10)
        with pytest.raises(pytest.fail.Exception, match="ValueError\\('handler bug'\\)"):
            harness.raise_handler_errors([up])
    finally:
        up.close()
        up.errors.clear()  # proven above; this test itself must not fail at teardown
    assert up in harness.CREATED  # what the fixture checks after each test
