"""Slots, a bounded FIFO queue, per-peer shares, and a cap on open streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.provider.admission import Admission, Busy, Ticket


async def nothing(position: int) -> None:
    pass


async def test_slots_then_queue_then_busy() -> None:
    adm = Admission(slots=2, queue=1, max_streams=10)
    a, b = adm.admit("p1"), adm.admit("p2")
    assert a.has_slot and b.has_slot and adm.in_use == 2
    queued = adm.admit("p3")
    assert not queued.has_slot and adm.queued == 1 and adm.position(queued) == 1
    with pytest.raises(Busy, match=r"^all slots and the queue are full; retry in 5 s$"):
        adm.admit("p4")
    order: list[str] = []

    async def waiter(t: Ticket) -> None:
        await adm.wait(t, nothing)
        order.append(t.peer)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, queued)
        await trio.testing.wait_all_tasks_blocked()
        adm.release(a)
    assert order == ["p3"] and adm.in_use == 2 and adm.queued == 0 and queued.has_slot
    adm.release(b)
    adm.release(queued)
    assert adm.in_use == 0


async def test_fifo_order_and_cancelled_waiters_leave_no_trace() -> None:
    adm = Admission(slots=1, queue=5, max_streams=10, per_peer=10)
    first = adm.admit("p")
    order: list[int] = []

    async def waiter(i: int, t: Ticket) -> None:
        try:
            await adm.wait(t, nothing)
            order.append(i)
        finally:
            adm.release(t)

    async with trio.open_nursery() as nursery:
        tickets = [adm.admit("p") for _ in range(3)]
        for i, t in enumerate(tickets):
            nursery.start_soon(waiter, i, t)
        await trio.testing.wait_all_tasks_blocked()
        gone = adm.admit("p")
        with trio.CancelScope() as scope:
            scope.cancel()
            await adm.wait(gone, nothing)
        adm.release(gone)  # what the provider's finally does for a cancelled job
        assert adm.queued == 3
        adm.release(first)
    assert order == [0, 1, 2] and adm.in_use == 0 and adm.queued == 0


def test_release_is_idempotent() -> None:
    adm = Admission(slots=1, queue=1, max_streams=10)
    t = adm.admit("p")
    adm.release(t)
    adm.release(t)
    assert adm.in_use == 0 and adm.held_by("p") == 0
    assert adm.admit("p").has_slot


def test_one_peer_cannot_take_every_slot_and_the_queue() -> None:
    adm = Admission(slots=2, queue=8, max_streams=100)
    assert adm.per_peer == 4
    mine = [adm.admit("squatter") for _ in range(4)]
    with pytest.raises(Busy, match=r"^you already have 4 jobs here, the most one requester "
                                   r"may hold; retry in 5 s$"):
        adm.admit("squatter")
    other = adm.admit("someone else")  # still queued behind, not refused
    assert not other.has_slot and adm.queued == 3
    adm.release(mine[0])
    assert adm.admit("squatter") is not None


def test_open_streams_are_capped() -> None:
    adm = Admission(slots=1, queue=1, max_streams=2)
    assert adm.open_stream() and adm.open_stream() and not adm.open_stream()
    adm.close_stream()
    assert adm.open_stream()
