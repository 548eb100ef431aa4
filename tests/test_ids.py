"""Our ULID encoder agrees with the reference implementation (python-ulid)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from opstwin.kit.ids import ulid


@given(st.integers(min_value=0, max_value=(1 << 48) - 1), st.binary(min_size=10, max_size=10))
def test_matches_the_reference_ulid(millis: int, randomness: bytes) -> None:
    expected = ULID.from_bytes(millis.to_bytes(6, "big") + randomness)
    assert ulid(millis, randomness) == str(expected)
    assert ULID.from_str(ulid(millis, randomness)).milliseconds == millis


def test_batch_ids_are_monotonic_ulids_of_the_clock_time() -> None:
    from datetime import UTC, datetime

    from opstwin.kit.clock import ManualClock
    from opstwin.kit.ids import UlidSource

    clock = ManualClock(datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC))
    ids = UlidSource(clock).batch("evt", 5000)
    assert len(set(ids)) == 5000
    assert ids == sorted(ids)
    parsed = [ULID.from_str(i.removeprefix("evt_")) for i in ids]
    assert {p.datetime for p in parsed} == {clock.now()}
    assert [int(p) - int(parsed[0]) for p in parsed] == list(range(5000))
