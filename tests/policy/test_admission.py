"""gwcore.policy.admission: the process and site connection limits and the handshake limit."""

from __future__ import annotations

import pytest

from gwcore.policy.admission import ADMISSION_REASONS, Admission


def test_limits_are_checked_process_then_handshakes_then_site() -> None:
    """Each limit refuses with its own reason, in the documented order, taking nothing."""
    full = Admission(max_connections=2, max_handshakes=1, connections=2, handshakes=1)
    assert full.admit(site_active=5, site_limit=5) == "process_overflow"
    busy = Admission(max_connections=10, max_handshakes=1, connections=1, handshakes=1)
    assert busy.admit(site_active=5, site_limit=5) == "handshake_overflow"
    site_full = Admission(max_connections=10, max_handshakes=5)
    assert site_full.admit(site_active=5, site_limit=5) == "overflow"
    assert (site_full.connections, site_full.handshakes) == (0, 0)
    assert {"process_overflow", "handshake_overflow", "overflow"} == ADMISSION_REASONS


def test_a_handshake_slot_is_held_until_the_handshake_finishes_or_the_connection_closes() -> None:
    """Two handshake slots: a third connection waits for one to finish; connections stay."""
    a = Admission(max_connections=0, max_handshakes=2)
    assert a.admit(0, 0) is None and a.admit(1, 0) is None
    assert a.admit(2, 0) == "handshake_overflow"
    a.handshake_finished()
    assert a.admit(2, 0) is None
    assert (a.connections, a.handshakes) == (3, 2)
    a.closed(handshaking=True)
    a.closed(handshaking=False)
    assert (a.connections, a.handshakes) == (1, 1)


@pytest.mark.parametrize("n", [1, 7])
def test_zero_means_no_limit(n: int) -> None:
    """max_* of 0 never refuses, however many are open."""
    a = Admission(connections=10**6, handshakes=10**6)
    assert a.admit(10**6, 0) is None
    for _ in range(n):
        a.closed(handshaking=True)
    assert (a.connections, a.handshakes) == (10**6 + 1 - n, 10**6 + 1 - n)
