"""Capacity accounting: slots, a bounded FIFO queue, per-peer shares; nothing unbounded.

A job is admitted once, when it is quoted: `admit` hands out a Ticket that holds a slot
or a place in the queue, or raises Busy. Whoever was quoted therefore gets a slot (after
waiting its turn) or was told `busy` before accepting; nothing is decided after that.
Before that, `Capacity.check` refuses a spec asking for more than this machine has
(BeyondCapacity; sent as `too_large`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter, deque
from collections.abc import Awaitable, Callable

import trio

from node.errors import BeyondCapacity as BeyondCapacity
from node.errors import Busy as Busy
from protocol import Resources

RETRY_AFTER_S = 5.0
"""What a provider tells a peer it refuses for now to wait before asking again."""


@dataclasses.dataclass(frozen=True, slots=True)
class Capacity:
    """What one job may ask for here at most: the machine's cpus, memory and GPUs; the
    work dir is a tmpfs, so its disk comes out of memory too."""

    cpus: int
    memory_mb: int
    gpus: int = 0

    @classmethod
    def of_host(cls, *, gpus: int = 0) -> Capacity:
        pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return cls(cpus=os.cpu_count() or 1, memory_mb=int(pages // 2**20), gpus=gpus)

    def check(self, r: Resources) -> None:
        """BeyondCapacity naming the first need this machine cannot hold, else nothing."""
        for what, asked, have, unit in (
                ("cpus", r.cpus, self.cpus, ""), ("memory", r.memory_mb, self.memory_mb, " MB"),
                ("disk", r.disk_mb, self.memory_mb, " MB"), ("GPUs", r.gpus, self.gpus, "")):
            if asked > have:
                raise BeyondCapacity(f"{what}: the job asks for {asked}{unit}, this provider "
                                     f"has {have}{unit}; ask for less or use a bigger one")


class Ticket:
    """One admitted job: it holds a slot, or waits for one in the queue."""

    __slots__ = ("_event", "has_slot", "peer", "released")

    def __init__(self, peer: str, has_slot: bool) -> None:
        self.peer = peer
        self.has_slot = has_slot
        self._event = trio.Event()
        self.released = False


class Admission:
    """Slots are handed over in FIFO order; the queue and each peer's share are capped."""

    def __init__(self, *, slots: int, queue: int, max_streams: int,
                 per_peer: int | None = None,
                 retry_after_s: float = RETRY_AFTER_S) -> None:
        self.slots = slots
        self.queue_max = queue
        self.max_streams = max_streams
        self.per_peer = per_peer if per_peer is not None else slots + max(1, queue // 4)
        """Jobs one peer may hold at once (running or queued)."""
        self.retry_after_s = retry_after_s
        self.in_use = 0
        self.streams = 0
        self._waiters: deque[Ticket] = deque()
        self._by_peer: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def held_by(self, peer: str) -> int:
        return self._by_peer[peer]

    def open_stream(self) -> bool:
        if self.streams >= self.max_streams:
            return False
        self.streams += 1
        return True

    def close_stream(self) -> None:
        self.streams -= 1

    def admit(self, peer: str) -> Ticket:
        """A slot now, else a queue place; Busy (nothing taken) when neither is free or
        `peer` already holds its share."""
        if self._by_peer[peer] >= self.per_peer:
            raise Busy(f"you already have {self._by_peer[peer]} jobs here, the most one "
                       "requester may hold", self.retry_after_s)
        if self.in_use < self.slots and not self._waiters:
            self.in_use += 1
            ticket = Ticket(peer, has_slot=True)
        elif len(self._waiters) < self.queue_max:
            ticket = Ticket(peer, has_slot=False)
            self._waiters.append(ticket)
        else:
            raise Busy("all slots and the queue are full", self.retry_after_s)
        self._by_peer[peer] += 1
        return ticket

    def position(self, ticket: Ticket) -> int:
        """1 for the next in line; 0 once it holds a slot."""
        if ticket.has_slot:
            return 0
        return self._waiters.index(ticket) + 1

    async def wait(self, ticket: Ticket, on_position: Callable[[int], Awaitable[None]]
                   ) -> None:
        """Return once `ticket` holds a slot; `on_position` hears its place first."""
        if ticket.has_slot:
            return
        await on_position(self.position(ticket))
        await ticket._event.wait()

    def release(self, ticket: Ticket) -> None:
        """Give back what the ticket holds (idempotent): its slot passes to the next in
        line, or its queue place is freed."""
        if ticket.released:
            return
        ticket.released = True
        self._by_peer[ticket.peer] -= 1
        if self._by_peer[ticket.peer] <= 0:
            del self._by_peer[ticket.peer]
        if not ticket.has_slot:
            self._waiters.remove(ticket)
            return
        if self._waiters:
            nxt = self._waiters.popleft()
            nxt.has_slot = True
            nxt._event.set()
        else:
            self.in_use -= 1
