"""Slots, a bounded FIFO queue, and a cap on open streams."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.admission import Admission, Busy


async def nothing(position: int) -> None:
    pass


async def test_slots_then_queue_then_busy() -> None:
    adm = Admission(slots=2, queue=1, max_streams=10)
    assert adm.try_reserve() and adm.try_reserve()
    assert not adm.try_reserve()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await adm.wait_for_slot(nothing)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first")
        await trio.testing.wait_all_tasks_blocked()
        assert adm.queued == 1
        with pytest.raises(Busy, match=r"all slots and the queue are full; retry in 5 s"):
            await adm.wait_for_slot(nothing)
        adm.release()
    assert order == ["first"] and adm.in_use == 2 and adm.queued == 0
    adm.release()
    adm.release()
    assert adm.in_use == 0


async def test_fifo_order_and_cancelled_waiters_leave_no_trace() -> None:
    adm = Admission(slots=1, queue=5, max_streams=10)
    assert adm.try_reserve()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await adm.wait_for_slot(nothing)
        order.append(i)
        adm.release()

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await adm.wait_for_slot(nothing)
        assert adm.queued == 3
        adm.release()
    assert order == [0, 1, 2] and adm.in_use == 0 and adm.queued == 0


def test_open_streams_are_capped() -> None:
    adm = Admission(slots=1, queue=1, max_streams=2)
    assert adm.open_stream() and adm.open_stream() and not adm.open_stream()
    adm.close_stream()
    assert adm.open_stream()
