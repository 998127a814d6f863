"""ReplayGuard: refuses an id seen inside its window, forgets after it, stays bounded."""

from __future__ import annotations

import pytest

from protocol import RemoteProtocolError, Replayed, sha256_hex
from protocol.replay import ReplayGuard

WINDOW = 60_000
T0 = 1_700_000_000_000


def ids(n: int) -> list[str]:
    return [sha256_hex(str(i).encode()) for i in range(n)]


def test_same_id_twice_is_refused() -> None:
    guard = ReplayGuard(window_ms=WINDOW)
    job_id = sha256_hex(b"job")
    guard.check_and_remember(job_id, now_ms=T0)
    guard.check_and_remember(sha256_hex(b"other job"), now_ms=T0)  # canary: a new id passes
    with pytest.raises(Replayed, match=rf"^message {job_id[:16]} was already received$") as info:
        guard.check_and_remember(job_id, now_ms=T0 + 1)
    assert isinstance(info.value, RemoteProtocolError)
    assert len(guard) == 2


def test_the_window_edge() -> None:
    guard = ReplayGuard(window_ms=WINDOW)
    guard.check_and_remember("a", now_ms=T0)
    with pytest.raises(Replayed):
        guard.check_and_remember("a", now_ms=T0 + WINDOW)  # still inside (inclusive)
    guard.check_and_remember("a", now_ms=T0 + WINDOW + 1)  # passed: accepted again
    with pytest.raises(Replayed):
        guard.check_and_remember("a", now_ms=T0 + WINDOW + 2)  # and remembered anew


def test_a_refused_replay_does_not_extend_the_window() -> None:
    guard = ReplayGuard(window_ms=WINDOW)
    guard.check_and_remember("a", now_ms=T0)
    with pytest.raises(Replayed):
        guard.check_and_remember("a", now_ms=T0 + WINDOW - 1)
    guard.check_and_remember("a", now_ms=T0 + WINDOW + 1)


def test_old_entries_are_forgotten_as_time_passes() -> None:
    guard = ReplayGuard(window_ms=WINDOW)
    for i, message_id in enumerate(ids(10)):
        guard.check_and_remember(message_id, now_ms=T0 + i * 1000)
    assert len(guard) == 10
    guard.check_and_remember("late", now_ms=T0 + 5000 + WINDOW)
    assert len(guard) == 6  # the five ids seen at T0+5000..T0+9000 remain, plus "late"
    with pytest.raises(Replayed):
        guard.check_and_remember(ids(10)[5], now_ms=T0 + 5000 + WINDOW)
    guard.check_and_remember(ids(10)[4], now_ms=T0 + 5000 + WINDOW)


@pytest.mark.parametrize("capacity", [1, 3, 100])
def test_capacity_bound_holds(capacity: int) -> None:
    guard = ReplayGuard(window_ms=WINDOW, capacity=capacity)
    every = ids(capacity * 3)
    for message_id in every:
        guard.check_and_remember(message_id, now_ms=T0)
        assert len(guard) <= capacity
    assert len(guard) == capacity
    # the newest ids are still refused; the oldest were evicted to honour the bound
    with pytest.raises(Replayed):
        guard.check_and_remember(every[-1], now_ms=T0)
    guard.check_and_remember(every[0], now_ms=T0)
    assert len(guard) == capacity
