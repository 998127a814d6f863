"""Hosts on an in-memory network, for tests: the Host/Stream seam without sockets.

`memory_network()` runs a network whose hosts (`MemoryNetwork.add`) reach each other's
handlers through trio memory streams, framed by the same `FramedStream` as libp2p streams
(same frame caps, send stall and errors), and served by the same `serve_stream` (per-peer
and per-IP stream shares, `refuse`, reset on a handler's error). Peer ids come from real
identities. What it leaves out: connection shares per IP, the DHT and pubsub (open_discovery
and open_gossip need a libp2p host).

    async with memory_network() as net:
        provider, requester = net.add(), net.add()
        provider.handle(wire.JOB_PROTOCOL, handler)
        stream = await requester.open_stream(provider.peer_id, wire.JOB_PROTOCOL)
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio
import trio.testing

from node.errors import PeerGone, sole_error
from node.net.addrs import split_peer_addr
from node.net.host import (
    FramedStream,
    Handler,
    Host,
    Refuser,
    Stream,
    serve_stream,
)
from node.net.limits import Limits, PeerErrors, StreamShares
from protocol.framing import DEFAULT_MAX_FRAME
from protocol.identity import Identity


class _TrioRaw:
    """A trio byte stream as a RawStream; writes are serialised (a provider sends
    heartbeats and live output from two tasks, as libp2p streams allow)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._s = stream
        self._writing = trio.Lock()

    async def read(self, n: int) -> bytes:
        return await self._s.receive_some(n)

    async def write(self, data: bytes) -> None:
        async with self._writing:
            await self._s.send_all(data)

    async def close(self) -> None:
        await self._s.aclose()

    async def reset(self) -> None:
        await self._s.aclose()


@dataclasses.dataclass(slots=True)
class _Served:
    handler: Handler
    max_frame: int
    refuse: Refuser | None


class MemoryHost:
    """A `Host` on a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork, identity: Identity, *, ip: str,
                 limits: Limits) -> None:
        self.network = network
        self.identity = identity
        self.peer_id = identity.peer_id
        self.ip = ip
        self.limits = limits
        self.shares = StreamShares(limits)
        self.peer_errors = PeerErrors()
        self.port = 4000 + len(network.hosts)
        self.served: dict[str, _Served] = {}
        self.known: dict[str, list[str]] = {}
        self.streams_opened: list[tuple[str, str]] = []
        """(peer id, protocol) of every stream this host opened, in order."""

    def addrs(self) -> list[str]:
        return [f"/ip4/{self.ip}/tcp/{self.port}/p2p/{self.peer_id}"]

    def handle(self, protocol: str, handler: Handler, *, max_frame: int = DEFAULT_MAX_FRAME,
               refuse: Refuser | None = None) -> None:
        self.served[protocol] = _Served(handler, max_frame, refuse)

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        if addrs:
            self.known[peer_id] = list(addrs)

    def known_addrs(self, peer_id: str) -> list[str]:
        return list(self.known.get(peer_id, ()))

    async def connect(self, maddr: str, *, timeout: float = 10.0) -> str:
        _, peer = split_peer_addr(maddr)
        if self.network.reachable(peer) is None:
            raise PeerGone(f"could not reach {maddr}: no such host on this memory network")
        await trio.lowlevel.checkpoint()
        return peer

    async def open_stream(self, peer_id: str, protocol: str, *,
                          addrs: Sequence[str] = (), timeout: float = 10.0,
                          max_frame: int = DEFAULT_MAX_FRAME) -> FramedStream:
        self.remember(peer_id, addrs)
        await trio.lowlevel.checkpoint()
        target = self.network.reachable(peer_id)
        if target is None:
            raise PeerGone(f"could not open {protocol} to {peer_id[:16]}: no such host on "
                           "this memory network")
        served = target.served.get(protocol)
        if served is None:
            raise PeerGone(f"could not open {protocol} to {peer_id[:16]}: protocol not "
                           "supported")
        self.streams_opened.append((peer_id, protocol))
        ours, theirs = self.network.stream_pair()
        mine = FramedStream(_TrioRaw(ours), remote_peer=target.peer_id, remote_ip=target.ip,
                            max_frame=max_frame)
        other = FramedStream(_TrioRaw(theirs), remote_peer=self.peer_id, remote_ip=self.ip,
                             max_frame=served.max_frame)
        self.network.nursery.start_soon(target.serve, protocol, other)
        return mine

    async def serve(self, protocol: str, stream: FramedStream) -> None:
        served = self.served[protocol]
        await serve_stream(stream, protocol, served.handler, served.refuse,
                           shares=self.shares, errors=self.peer_errors)

    def connection_kind(self, peer_id: str) -> str:
        return "direct" if self.network.reachable(peer_id) is not None else ""

    async def ping(self, peer_id: str, *, addrs: Sequence[str] = (), count: int = 3,
                   timeout: float = 5.0) -> float:
        self.remember(peer_id, addrs)
        await trio.lowlevel.checkpoint()
        if self.network.reachable(peer_id) is None:
            raise PeerGone(f"could not ping {peer_id[:16]}: no such host on this memory "
                           "network")
        return self.network.rtt_ms


class MemoryNetwork:
    """Hosts that reach each other in memory; handlers run in the network's nursery."""

    def __init__(self, nursery: trio.Nursery, *, lockstep: bool = False,
                 rtt_ms: float = 1.0) -> None:
        self.nursery = nursery
        self.lockstep = lockstep
        """Lockstep streams: a write waits until the other side reads it (stall tests)."""
        self.rtt_ms = rtt_ms
        self.hosts: dict[str, MemoryHost] = {}
        self.down: set[str] = set()

    def add(self, identity: Identity | None = None, *, ip: str = "127.0.0.1",
            limits: Limits | None = None) -> MemoryHost:
        """A new host on this network (a fresh identity unless given)."""
        host = MemoryHost(self, identity or Identity.generate(), ip=ip,
                          limits=limits or Limits())
        self.hosts[host.peer_id] = host
        return host

    def take_down(self, peer_id: str) -> None:
        """The host stops answering: new streams and pings to it fail with PeerGone."""
        self.down.add(peer_id)

    def bring_up(self, peer_id: str) -> None:
        self.down.discard(peer_id)

    def reachable(self, peer_id: str) -> MemoryHost | None:
        return None if peer_id in self.down else self.hosts.get(peer_id)

    def stream_pair(self) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        if self.lockstep:
            return trio.testing.lockstep_stream_pair()
        return trio.testing.memory_stream_pair()


@asynccontextmanager
async def memory_network(*, lockstep: bool = False,
                         rtt_ms: float = 1.0) -> AsyncIterator[MemoryNetwork]:
    """A MemoryNetwork for the life of the block; open streams are cancelled on exit. The
    block's one error is raised as itself, not in an exception group."""
    try:
        async with trio.open_nursery() as nursery:
            yield MemoryNetwork(nursery, lockstep=lockstep, rtt_ms=rtt_ms)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise sole from None


@asynccontextmanager
async def stream_pair(protocol: str = "/test/pair/1.0.0"
                      ) -> AsyncIterator[tuple[MemoryHost, Stream, MemoryHost, Stream]]:
    """Two memory hosts and both ends of one stream between them: (opener, its end,
    acceptor, its end). The acceptor's handler holds its end open for the block."""
    async with memory_network() as net:
        a, b = net.add(), net.add()
        got: list[Stream] = []
        done = trio.Event()

        async def serve(stream: Stream) -> None:
            got.append(stream)
            await done.wait()

        b.handle(protocol, serve)
        opened = await a.open_stream(b.peer_id, protocol)
        while not got:
            await trio.sleep(0)
        try:
            yield a, opened, b, got[0]
        finally:
            done.set()


if TYPE_CHECKING:  # mypy proves both kinds of host and stream fit the seam
    def _fits(m: MemoryHost, s: FramedStream) -> tuple[Host, Stream]:
        return m, s
