"""Reconnect backoff: exponential, full jitter, capped, resettable."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aiobus.backoff import Backoff


def test_schedule_at_the_top_of_the_jitter_range() -> None:
    backoff = Backoff(0.01, 2.0, 20.0, rng=lambda: 1.0)
    delays = [backoff.next_delay() for _ in range(14)]
    expected = [min(20.0, 0.01 * 2**n) for n in range(14)]
    assert delays == expected
    assert delays[-1] == 20.0  # capped from 0.01 * 2**11 = 20.48 on


def test_reset_starts_over() -> None:
    backoff = Backoff(0.01, 2.0, 20.0, rng=lambda: 1.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.01


def test_huge_attempt_counts_do_not_overflow() -> None:
    backoff = Backoff(0.01, 2.0, 20.0)
    backoff.attempt = 10_000
    assert 0 <= backoff.next_delay() <= 20.0


@given(
    initial=st.floats(0.001, 1.0),
    factor=st.floats(1.0, 4.0),
    cap=st.floats(0.01, 60.0),
    attempts=st.integers(1, 60),
)
def test_every_delay_is_within_full_jitter_bounds(
    initial: float, factor: float, cap: float, attempts: int
) -> None:
    backoff = Backoff(initial, factor, cap)
    for n in range(attempts):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(cap, initial * factor**n) * (1 + 1e-9)
