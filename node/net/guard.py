"""A Stream whose every frame, sent or received, passes one side's exchange table.

The job and settle handlers (provider/) and their callers (requester/) wrap the stream of
an exchange in `guarded`; a frame out of order raises `OutOfOrder` (the peer's) or
`SendOutOfOrder` (ours) from protocol/exchange.py, before anyone acts on it.
"""

from __future__ import annotations

from node.net.host import SEND_STALL_S, Stream
from protocol import wire
from protocol.exchange import Exchange, Role, Table


class GuardedStream:
    """A `Stream`: `inner`, with `exchange` fed every frame; the rest passes through."""

    def __init__(self, inner: Stream, exchange: Exchange) -> None:
        self.inner = inner
        self.exchange = exchange
        self.remote_peer = inner.remote_peer
        self.remote_ip = inner.remote_ip

    async def send(self, frame: wire.Frame, *, stall_s: float = SEND_STALL_S) -> None:
        self.exchange.send(frame)
        await self.inner.send(frame, stall_s=stall_s)

    async def receive(self) -> wire.Frame:
        frame = await self.inner.receive()
        self.exchange.receive(frame)
        return frame

    async def receive_within(self, seconds: float, what: str) -> wire.Frame:
        frame = await self.inner.receive_within(seconds, what)
        self.exchange.receive(frame)
        return frame

    async def close(self) -> None:
        await self.inner.close()

    async def reset(self) -> None:
        await self.inner.reset()


def guarded(stream: Stream, table: Table, role: Role) -> GuardedStream:
    """`stream` as `role` of the exchange `table` sees it, from its start state."""
    return GuardedStream(stream, Exchange(table, role))
