"""The HTTP/2 flood counters (``gwcore.net.h2_abuse``), frame by frame."""

from __future__ import annotations

from gwcore.net.h2_abuse import MAX_OUTBOUND_CONTROL_FRAMES, FrameBudget, ResetBudget


def test_acknowledgements_owed_to_a_client_that_does_not_read_are_bounded() -> None:
    """PING/SETTINGS ACKs while the client's socket is blocked count up to Envoy's
    ``max_outbound_control_frames`` (1000); one more is abuse; a read resets the count,
    and a reading client is never stopped by it."""
    budget = FrameBudget()
    for _ in range(5 * MAX_OUTBOUND_CONTROL_FRAMES):
        assert budget.control_ack(client_blocked=False) is None
    for _ in range(MAX_OUTBOUND_CONTROL_FRAMES):
        assert budget.control_ack(client_blocked=True) is None
    budget.client_reads()
    for _ in range(MAX_OUTBOUND_CONTROL_FRAMES):
        assert budget.control_ack(client_blocked=True) is None
    assert budget.control_ack(client_blocked=True) is not None


def test_one_empty_data_frame_is_fine_two_in_a_row_are_not() -> None:
    """Envoy's ``max_consecutive_inbound_frames_with_empty_payload`` is 1."""
    budget = FrameBudget()
    assert budget.data_frame(empty=True) is None
    assert budget.data_frame(empty=False) is None
    assert budget.data_frame(empty=True) is None
    budget.payload_frame()
    assert budget.data_frame(empty=True) is None
    assert budget.data_frame(empty=True) is not None


def test_priority_and_window_update_bounds_follow_envoys_formulas() -> None:
    """PRIORITY: ``5 + 2 * 100 * (1 + streams)``; WINDOW_UPDATE: ``5 + 2 * (streams +
    10 * DATA frames sent)``."""
    budget = FrameBudget()
    assert all(budget.priority(streams=0) is None for _ in range(205))
    assert budget.priority(streams=0) is not None
    budget = FrameBudget()
    assert all(budget.window_update(streams=1, data_frames_sent=2) is None for _ in range(47))
    assert budget.window_update(streams=1, data_frames_sent=2) is not None


def test_rapid_reset_needs_both_the_stream_count_and_the_share() -> None:
    """Resets count only once the connection opened ``min_streams`` streams and more
    than half of them were reset early."""
    budget = ResetBudget(min_streams=10)
    for _ in range(9):
        budget.stream_opened()
        assert not budget.premature_reset()
    budget.stream_opened()
    assert budget.premature_reset()
    honest = ResetBudget(min_streams=10)
    for i in range(100):
        honest.stream_opened()
        if i % 3 == 0:
            assert not honest.premature_reset()
