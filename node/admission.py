"""Capacity accounting: a fixed number of slots, a bounded FIFO queue, nothing unbounded."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio


class Busy(Exception):
    """Every slot is taken and the queue is full: come back after `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"all slots and the queue are full; retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class Admission:
    """Slots are handed over in FIFO order; the queue and open streams are both capped."""

    def __init__(self, *, slots: int, queue: int, max_streams: int,
                 retry_after_s: float = 5.0) -> None:
        self.slots = slots
        self.queue_max = queue
        self.max_streams = max_streams
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self.streams = 0
        self._waiters: deque[trio.Event] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def open_stream(self) -> bool:
        if self.streams >= self.max_streams:
            return False
        self.streams += 1
        return True

    def close_stream(self) -> None:
        self.streams -= 1

    def try_reserve(self) -> bool:
        """Take a free slot now (a quote's reservation); False when none is free."""
        if self.in_use < self.slots and not self._waiters:
            self.in_use += 1
            return True
        return False

    def check_queue(self) -> None:
        if len(self._waiters) >= self.queue_max:
            raise Busy(self.retry_after_s)

    async def wait_for_slot(self, on_position: Callable[[int], Awaitable[None]]) -> None:
        """Join the queue (Busy if it is full) and return holding a slot."""
        if self.try_reserve():
            return
        self.check_queue()
        event = trio.Event()
        self._waiters.append(event)
        try:
            await on_position(len(self._waiters))
            await event.wait()
        except BaseException:
            if event in self._waiters:
                self._waiters.remove(event)
            elif event.is_set():
                self.release()  # the slot was handed to us as we were cancelled
            raise

    def release(self) -> None:
        while self._waiters:
            event = self._waiters.popleft()
            event.set()  # the slot passes to the next waiter
            return
        self.in_use -= 1
