"""A bounded memory of seen message ids inside a time window; clock injected by the caller."""

from __future__ import annotations

from collections import OrderedDict

from protocol.errors import Replayed


class ReplayGuard:
    """Refuses an id seen within `window_ms`; forgets the oldest beyond `capacity`."""

    def __init__(self, *, window_ms: int, capacity: int = 100_000) -> None:
        self._window_ms = window_ms
        self._capacity = capacity
        self._seen: OrderedDict[str, int] = OrderedDict()

    def check_and_remember(self, message_id: str, *, now_ms: int) -> None:
        self._expire(now_ms)
        if message_id in self._seen:
            raise Replayed(f"message {message_id[:16]} was already received")
        self._seen[message_id] = now_ms
        while len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def _expire(self, now_ms: int) -> None:
        while self._seen:
            oldest_id, seen_at = next(iter(self._seen.items()))
            if now_ms - seen_at <= self._window_ms:
                break
            del self._seen[oldest_id]

    def __len__(self) -> int:
        return len(self._seen)
