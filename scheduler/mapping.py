"""A distributed map as a sans-I/O state machine: which item each worker runs next.

Items start out split across workers in proportion to expected throughput. A worker that
runs dry takes, in this order: an item to retry, the tail of the longest remaining queue,
or a second copy of a straggler (an item running more than `straggler_factor` times its
expected time elsewhere). The first result of an item wins; the caller cancels the copy.
A failed item is retried up to `max_attempts` times in all, never on a worker that is gone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import deque
from collections.abc import Mapping

from scheduler.decide import allocate


class ItemState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclasses.dataclass(slots=True)
class _Item:
    state: ItemState = ItemState.WAITING
    attempts: int = 0
    running: dict[str, float] = dataclasses.field(default_factory=dict)
    """Worker -> start time of each copy in flight."""
    winner: str | None = None


class MapScheduler:
    """Decides, never waits: the caller runs items and reports what happened."""

    def __init__(self, n_items: int, rates: Mapping[str, float], *, max_attempts: int = 3,
                 straggler_factor: float = 2.0, min_straggler_s: float = 1.0,
                 learn: float = 0.3) -> None:
        if n_items < 0 or not rates or max_attempts < 1:
            raise ValueError("MapScheduler needs n_items >= 0, a worker, max_attempts >= 1")
        if any(r <= 0.0 for r in rates.values()):
            raise ValueError("every worker's rate (items per second) must be > 0")
        self.max_attempts = max_attempts
        self.straggler_factor = straggler_factor
        self.min_straggler_s = min_straggler_s
        self._learn = learn
        self._items = [_Item() for _ in range(n_items)]
        self._per_item_s = {w: 1.0 / r for w, r in rates.items()}
        self._queues: dict[str, deque[int]] = {}
        first = 0
        for worker, n in zip(rates, allocate(n_items, list(rates.values())), strict=True):
            self._queues[worker] = deque(range(first, first + n))
            first += n
        self._retry: deque[int] = deque()
        self._gone: set[str] = set()
        self.duplicates = 0
        self.retries = 0

    @property
    def workers(self) -> list[str]:
        return [w for w in self._queues if w not in self._gone]

    def state(self, item: int) -> ItemState:
        return self._items[item].state

    def winner(self, item: int) -> str | None:
        return self._items[item].winner

    def attempts(self, item: int) -> int:
        return self._items[item].attempts

    @property
    def finished(self) -> bool:
        return all(i.state in (ItemState.DONE, ItemState.FAILED) for i in self._items)

    def planned(self, worker: str) -> list[int]:
        """Items still queued for `worker` (its initial share, minus what was taken)."""
        return list(self._queues.get(worker, ()))

    def next_for(self, worker: str, now: float) -> int | None:
        """The item `worker` should start now, or None if it has nothing to do yet."""
        if worker in self._gone or worker not in self._queues:
            return None
        item = self._pop_waiting(self._retry, worker)
        if item is None:
            item = self._pop_waiting(self._queues[worker], worker)
        if item is None:
            item = self._steal(worker)
        if item is None:
            item = self._straggler(worker, now)
            if item is not None:
                self.duplicates += 1
        if item is not None:
            it = self._items[item]
            it.state = ItemState.RUNNING
            it.running[worker] = now
        return item

    def wake_after(self, now: float) -> float | None:
        """Seconds until some running item becomes a straggler (None if none can)."""
        soonest: float | None = None
        for it in self._items:
            if it.state is not ItemState.RUNNING or len(it.running) != 1:
                continue
            (worker, started), = it.running.items()
            due = started + self._limit(worker) - now
            soonest = due if soonest is None else min(soonest, due)
        return None if soonest is None else max(0.0, soonest)

    def done(self, worker: str, item: int, now: float) -> tuple[bool, list[str]]:
        """`worker` finished `item`: (whether its result is the one kept, workers whose
        copies of the item the caller should now cancel)."""
        it = self._items[item]
        started = it.running.pop(worker, None)
        if started is not None:
            old = self._per_item_s.get(worker, now - started)
            self._per_item_s[worker] = (1 - self._learn) * old + self._learn * (now - started)
        if it.state is ItemState.DONE:
            return False, []
        it.state = ItemState.DONE
        it.winner = worker
        others = list(it.running)
        it.running.clear()
        return True, others

    def failed(self, worker: str, item: int, now: float, *, worker_gone: bool) -> None:
        """A copy of `item` failed on `worker`; a gone worker gets no more items."""
        it = self._items[item]
        it.running.pop(worker, None)
        if worker_gone:
            self.drop(worker)
        if it.state is not ItemState.RUNNING or it.running:
            return  # already done, or another copy is still running
        it.attempts += 1
        if it.attempts >= self.max_attempts or not self.workers:
            it.state = ItemState.FAILED
            return
        it.state = ItemState.WAITING
        self.retries += 1
        self._retry.append(item)

    def cancelled(self, worker: str, item: int) -> None:
        """The caller stopped `worker`'s copy of an item another worker finished."""
        self._items[item].running.pop(worker, None)

    def drop(self, worker: str) -> None:
        """`worker` is gone: its queued items go to the others (retry first)."""
        if worker in self._gone:
            return
        self._gone.add(worker)
        queue = self._queues.get(worker, deque())
        self._retry.extend(queue)
        queue.clear()
        if not self.workers:
            for it in self._items:
                if it.state is ItemState.WAITING:
                    it.state = ItemState.FAILED

    def _pop_waiting(self, queue: deque[int], worker: str) -> int | None:
        while queue:
            item = queue.popleft()
            if self._items[item].state is ItemState.WAITING:
                return item
        return None

    def _steal(self, worker: str) -> int | None:
        """The last waiting item of the queue with the most expected work left."""
        def left(w: str) -> float:
            return len(self._queues[w]) * self._per_item_s.get(w, 1.0)
        victims = sorted((w for w in self.workers if w != worker and self._queues[w]),
                         key=left, reverse=True)
        for victim in victims:
            if left(victim) <= self._per_item_s.get(worker, 1.0):
                continue  # the victim reaches its last item before this worker would finish it
            queue = self._queues[victim]
            while queue:
                item = queue.pop()
                if self._items[item].state is ItemState.WAITING:
                    return item
        return None

    def _limit(self, worker: str) -> float:
        return max(self.min_straggler_s,
                   self.straggler_factor * self._per_item_s.get(worker, 1.0))

    def _straggler(self, worker: str, now: float) -> int | None:
        late = [(now - started - self._limit(w), i)
                for i, it in enumerate(self._items)
                if it.state is ItemState.RUNNING and len(it.running) == 1
                and worker not in it.running
                for w, started in it.running.items()]
        late = [(over, i) for over, i in late if over >= 0.0]
        return max(late)[1] if late else None
