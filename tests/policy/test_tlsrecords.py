"""gwcore.policy.tlsrecords: counting whole TLS records however the stream is cut."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.tlsrecords import RecordCounter


def record(length: int, kind: int = 23) -> bytes:
    return bytes([kind, 3, 3, length >> 8, length & 0xFF]) + b"\x00" * length


def test_whole_records_in_one_chunk_are_counted() -> None:
    """Three records in one read count three, including an empty one."""
    counter = RecordCounter()
    counter.feed(record(100) + record(0) + record(16384 + 256))
    assert counter.complete == 3


def test_a_record_is_counted_only_when_its_last_byte_arrives() -> None:
    """Byte by byte, the count moves exactly at each record's last byte."""
    counter = RecordCounter()
    stream = record(3) + record(1)
    seen = []
    for i in range(len(stream)):
        counter.feed(stream[i : i + 1])
        seen.append(counter.complete)
    assert seen == [0] * 7 + [1] + [1] * 5 + [2]


def test_the_caller_resets_what_it_consumed() -> None:
    """``complete`` counts since the caller last set it to zero."""
    counter = RecordCounter()
    counter.feed(record(10) + record(10)[:7])
    assert counter.complete == 1
    counter.complete = 0
    counter.feed(record(10)[7:])
    assert counter.complete == 1


@given(
    lengths=st.lists(st.integers(0, 600), max_size=12),
    cuts=st.lists(st.integers(0, 8000), max_size=12),
)
def test_any_split_counts_the_records_that_ended(lengths: list[int], cuts: list[int]) -> None:
    """Fed in arbitrary pieces, the running count always equals the number of records
    whose end has been fed (the property the data path relies on)."""
    stream = b"".join(record(n) for n in lengths)
    ends = list(itertools.accumulate(5 + n for n in lengths))
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    counter = RecordCounter()
    start = 0
    for point in points:
        counter.feed(stream[start:point])
        start = point
        assert counter.complete == sum(1 for e in ends if e <= point)
