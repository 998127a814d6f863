"""Transfer progress becomes a few events a second, in the trio thread, whoever calls."""

from __future__ import annotations

import threading

import trio

from node.requester import events
from node.requester.events import Meter

MIB = 2**20


def _run(calls_from_thread: bool) -> tuple[list[events.Transferred], set[threading.Thread]]:
    got: list[events.Transferred] = []
    threads: set[threading.Thread] = set()

    def emit(ev: events.Event) -> None:
        assert isinstance(ev, events.Transferred)
        got.append(ev)
        threads.add(threading.current_thread())

    async def main() -> None:
        meter = Meter(emit, "j", "p", "up", [("a", 64 * MIB, 0), ("b", 8 * MIB, 2 * MIB)],
                      every_s=0.05)

        def push() -> None:
            for k in range(1, 65):
                meter("a", k * MIB)
            for k in range(3, 9):
                meter("b", k * MIB)

        if calls_from_thread:
            await trio.to_thread.run_sync(push)
        else:
            push()
        await trio.sleep(0.05)  # callbacks handed over from the thread run

    trio.run(main)
    return got, threads


def test_a_fast_transfer_gives_few_events_and_always_its_end() -> None:
    got, _ = _run(calls_from_thread=False)
    a = [e for e in got if e.name == "a"]
    assert 2 <= len(a) <= 5, a  # the first chunk, then none within every_s, then the end
    assert a[0].done == MIB and a[-1].done == a[-1].size == 64 * MIB
    b = [e for e in got if e.name == "b"]
    assert b[-1].done == 8 * MIB and b[-1].offset == 2 * MIB


def test_a_lane_thread_hands_its_events_to_the_trio_thread() -> None:
    got, threads = _run(calls_from_thread=True)
    assert threads == {threading.main_thread()}
    assert {e.name for e in got if e.done == e.size} == {"a", "b"}
