"""The distributed map's scheduler: shares, stealing, stragglers, retries."""

from __future__ import annotations

import pytest

from scheduler.mapping import ItemState, MapScheduler


def test_items_start_out_split_by_rate() -> None:
    m = MapScheduler(8, {"a": 1.0, "b": 3.0})
    assert m.planned("a") == [0, 1]
    assert m.planned("b") == [2, 3, 4, 5, 6, 7]


def test_every_item_runs_once_when_all_goes_well() -> None:
    m = MapScheduler(5, {"a": 1.0, "b": 1.0})
    ran: list[tuple[str, int]] = []
    now = 0.0
    while not m.finished:
        for w in ("a", "b"):
            item = m.next_for(w, now)
            if item is not None:
                ran.append((w, item))
                kept, cancel = m.done(w, item, now + 0.1)
                assert kept and cancel == []
        now += 1.0
    assert sorted(i for _, i in ran) == [0, 1, 2, 3, 4]
    assert m.duplicates == 0 and m.retries == 0


def test_an_idle_worker_steals_from_the_tail_of_the_longest_queue() -> None:
    m = MapScheduler(6, {"a": 1.0, "b": 1.0})
    assert m.next_for("a", 0.0) == 0
    for item in (3, 4, 5):
        assert m.next_for("b", 0.0) == item
        m.done("b", item, 0.5)
    assert m.next_for("b", 1.0) == 2  # a's last queued item


def test_a_straggler_gets_a_second_copy_and_the_first_result_wins() -> None:
    m = MapScheduler(2, {"slow": 1.0, "fast": 1.0}, straggler_factor=2.0, min_straggler_s=1.0)
    assert m.next_for("slow", 0.0) == 0
    assert m.next_for("fast", 0.0) == 1
    m.done("fast", 1, 1.0)
    assert m.next_for("fast", 1.0) is None  # item 0 is not late yet
    assert m.wake_after(1.0) == pytest.approx(1.0)
    assert m.next_for("fast", 2.5) == 0
    assert m.duplicates == 1
    kept, cancel = m.done("fast", 0, 3.0)
    assert kept and cancel == ["slow"]
    assert m.winner(0) == "fast"
    assert m.done("slow", 0, 3.1) == (False, [])
    assert m.finished


def test_a_failed_item_is_retried_elsewhere_and_a_gone_worker_gets_nothing() -> None:
    m = MapScheduler(4, {"a": 1.0, "b": 1.0}, max_attempts=3)
    assert m.next_for("a", 0.0) == 0
    m.failed("a", 0, 0.5, worker_gone=True)
    assert m.workers == ["b"]
    assert m.next_for("a", 1.0) is None
    got = []
    while (item := m.next_for("b", 1.0)) is not None:
        got.append(item)
        m.done("b", item, 1.0)
    assert sorted(got) == [0, 1, 2, 3]
    assert m.retries == 1 and m.finished


def test_an_item_that_keeps_failing_is_given_up_after_max_attempts() -> None:
    m = MapScheduler(1, {"a": 1.0}, max_attempts=2)
    for _ in range(2):
        item = m.next_for("a", 0.0)
        assert item == 0
        m.failed("a", 0, 0.0, worker_gone=False)
    assert m.state(0) is ItemState.FAILED and m.attempts(0) == 2
    assert m.finished and m.next_for("a", 0.0) is None


def test_when_every_worker_is_gone_waiting_items_fail() -> None:
    m = MapScheduler(3, {"a": 1.0})
    m.drop("a")
    assert m.finished
    assert [m.state(i) for i in range(3)] == [ItemState.FAILED] * 3


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        MapScheduler(1, {"a": 0.0})
    with pytest.raises(ValueError, match="worker"):
        MapScheduler(1, {})
