"""Our seam over libp2p: the Host and Stream node code types against, and their libp2p form.

`Host` and `Stream` are Protocols: provider, requester, API and CLI code sees only them.
`Libp2pHost` (built by `open_host`) and `FramedStream` implement them over py-libp2p;
`node.net.memory` implements them over trio memory streams for tests. Only modules of
node/net/ reach the libp2p host underneath, through `libp2p_host`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol

import trio

from node.errors import PeerGone, PeerTimeout, UserError
from node.net import compat
from node.net.addrs import split_peer_addr
from node.net.compat import remote_ip
from node.net.limits import ConnectionShares, Limits, PeerErrors, StreamShares
from node.net.nat import NatServices, RelayLimits
from protocol import wire
from protocol.framing import DEFAULT_MAX_FRAME, FrameDecoder
from protocol.identity import Identity

log = logging.getLogger(__name__)
READ_SIZE = 256 * 1024
SEND_STALL_S = 30.0
DIRECT_FIRST_S = 3.0
"""A peer with both direct and circuit addresses gets this long to answer directly."""
MAX_CIRCUITS_TRIED = 4


class Stream(Protocol):
    """One exchange with one peer, in length-prefixed protocol frames."""

    remote_peer: str
    remote_ip: str
    """The IP the peer's connection comes from ("" when unknown)."""

    async def send(self, frame: wire.Frame, *, stall_s: float = SEND_STALL_S) -> None:
        """Write one frame; PeerTimeout if the peer takes none of it for `stall_s`,
        PeerGone if the stream is gone."""
        ...

    async def receive(self) -> wire.Frame:
        """The next frame; PeerGone if the stream ends first. Decoding errors propagate."""
        ...

    async def receive_within(self, seconds: float, what: str) -> wire.Frame:
        """The next frame within `seconds`; PeerTimeout naming `what` otherwise."""
        ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


Handler = Callable[[Stream], Awaitable[None]]
Refuser = Callable[[Stream, str], Awaitable[None]]


class Host(Protocol):
    """A running node on the network, with our identity."""

    peer_id: str
    identity: Identity
    peer_errors: PeerErrors
    """What peers did wrong, counted by kind (metrics)."""

    def addrs(self) -> list[str]:
        """Our listen addresses, each ending in /p2p/<peer id>."""
        ...

    def handle(self, protocol: str, handler: Handler, *, max_frame: int = DEFAULT_MAX_FRAME,
               refuse: Refuser | None = None) -> None:
        """Serve `protocol`: each peer (and IP) gets its share of open streams, over which
        `refuse` answers (or the stream is reset); nothing a handler raises escapes."""
        ...

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Keep `addrs` as where `peer_id` can be dialled."""
        ...

    def known_addrs(self, peer_id: str) -> list[str]:
        """The addresses known for `peer_id` ([] when none)."""
        ...

    async def connect(self, maddr: str, *, timeout: float = 10.0) -> str:
        """Dial a full multiaddr; returns the peer id. PeerTimeout / PeerGone on failure."""
        ...

    async def open_stream(self, peer_id: str, protocol: str, *,
                          addrs: Sequence[str] = (), timeout: float = 10.0,
                          max_frame: int = DEFAULT_MAX_FRAME) -> Stream:
        """A new stream of `protocol` to the peer; PeerTimeout / PeerGone on failure."""
        ...

    async def ping(self, peer_id: str, *, addrs: Sequence[str] = (), count: int = 3,
                   timeout: float = 5.0) -> float:
        """The lowest of `count` round trips to the peer, in milliseconds."""
        ...

    def connection_kind(self, peer_id: str) -> str:
        """"direct", "relayed" (through a circuit relay) or "" when not connected."""
        ...


class RawStream(Protocol):
    """What FramedStream needs of a byte stream (a libp2p stream, or a memory one)."""

    async def read(self, n: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


class FramedStream:
    """A `Stream` over a byte stream: frames out, frames in with a size cap."""

    def __init__(self, raw: RawStream, *, remote_peer: str, remote_ip: str = "",
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._raw = raw
        self._decoder = FrameDecoder(max_size=max_frame)
        self.remote_peer = remote_peer
        self.remote_ip = remote_ip

    @classmethod
    def over_libp2p(cls, raw: Any, *, max_frame: int = DEFAULT_MAX_FRAME) -> FramedStream:
        """Wrap a py-libp2p stream (its peer and IP from its muxed connection)."""
        return cls(raw, remote_peer=str(raw.muxed_conn.peer_id),
                   remote_ip=remote_ip(raw.muxed_conn), max_frame=max_frame)

    async def send(self, frame: wire.Frame, *, stall_s: float = SEND_STALL_S) -> None:
        """Write one frame; PeerTimeout if the peer takes none of it for `stall_s` (a peer
        that stops reading must not hold a slot or a task)."""
        with trio.move_on_after(stall_s) as scope:
            try:
                await self._raw.write(wire.encode(frame))
            except Exception as exc:
                raise PeerGone(f"peer {self.remote_peer[:16]} closed the stream: "
                               f"{exc!r}") from exc
        if scope.cancelled_caught:
            raise PeerTimeout(f"peer {self.remote_peer[:16]} read nothing for "
                              f"{stall_s:.0f} s")

    async def receive(self) -> wire.Frame:
        """The next frame; PeerGone if the stream ends first. Decoding errors propagate."""
        while True:
            body = self._decoder.next_frame()
            if body is not None:
                return wire.decode(body, max_size=self._decoder.max_size)
            try:
                data = await self._raw.read(READ_SIZE)
            except Exception as exc:
                raise PeerGone(f"peer {self.remote_peer[:16]} closed the stream") from exc
            if not data:
                raise PeerGone(f"peer {self.remote_peer[:16]} closed the stream")
            self._decoder.feed(data)

    async def receive_within(self, seconds: float, what: str) -> wire.Frame:
        with trio.move_on_after(seconds) as scope:
            return await self.receive()
        assert scope.cancelled_caught
        raise PeerTimeout(f"no {what} from {self.remote_peer[:16]} within {seconds:.0f} s")

    async def close(self) -> None:
        await compat.quietly(self._raw.close, "closing a stream")

    async def reset(self) -> None:
        await compat.quietly(self._raw.reset, "resetting a stream")


async def serve_stream(stream: Stream, protocol: str, handler: Handler,
                       refuse: Refuser | None, *, shares: StreamShares,
                       errors: PeerErrors) -> None:
    """One inbound stream, as every Host serves it: its share, then the handler; a
    refused stream hears `refuse` and is closed, a failed handler's stream is reset."""
    peer, ip = stream.remote_peer, stream.remote_ip
    why = shares.try_open(protocol, peer, ip)
    if why is not None:
        errors.count("limit")
        log.debug("refusing a %s stream from %s (%s): %s", protocol, peer[:16], ip, why)
        try:
            if refuse is not None:
                with trio.move_on_after(2):
                    await refuse(stream, why)
        except Exception as exc:
            errors.failed(protocol, peer, exc)
        await stream.close()  # a reset could overtake the answer
        return
    try:
        await handler(stream)
    except Exception as exc:
        errors.failed(f"handler for {protocol}", peer, exc)
        await stream.reset()
    else:
        await stream.close()
    finally:
        shares.close(protocol, peer, ip)


def libp2p_host(host: Host) -> Any:
    """The py-libp2p host under `host`, for node/net/ modules that drive libp2p services
    (the DHT, pubsub); TypeError for a host that is not a libp2p one."""
    if not isinstance(host, Libp2pHost):
        raise TypeError(f"this needs a libp2p host (from open_host), not a "
                        f"{type(host).__name__}")
    return host._raw


class Libp2pHost:
    """A running libp2p host with our identity (a `Host`)."""

    def __init__(self, raw: Any, identity: Identity, *, limits: Limits | None = None,
                 relay_service: bool = False, relay_limits: RelayLimits | None = None) -> None:
        self._raw = raw
        self.identity = identity
        self.peer_id = identity.peer_id
        self.limits = limits or Limits()
        self.shares = StreamShares(self.limits)
        self.connections = ConnectionShares(self.limits)
        self.peer_errors = PeerErrors()
        self.nat = NatServices(raw, relay_service=relay_service, shares=self.shares,
                               errors=self.peer_errors, relay_limits=relay_limits)

    def listen_addrs(self) -> list[str]:
        """The addresses we listen on, as the transport bound them (no /p2p/ suffix)."""
        return [str(a) for a in self._raw.get_transport_addrs()]

    def connection_kind(self, peer_id: str) -> str:
        return self.nat.connection_kind(peer_id)

    def addrs(self) -> list[str]:
        return [str(a) for a in self._raw.get_addrs()]

    def handle(self, protocol: str, handler: Handler, *, max_frame: int = DEFAULT_MAX_FRAME,
               refuse: Refuser | None = None) -> None:
        """Serve `protocol` (see Host.handle)."""
        async def _on_stream(raw_stream: Any) -> None:
            try:
                stream = FramedStream.over_libp2p(raw_stream, max_frame=max_frame)
            except Exception as exc:
                self.peer_errors.failed(protocol, "?", exc)
                await compat.quietly(raw_stream.reset, "resetting a stream")
                return
            await serve_stream(stream, protocol, handler, refuse, shares=self.shares,
                               errors=self.peer_errors)

        from libp2p.custom_types import TProtocol

        self._raw.set_stream_handler(TProtocol(protocol), _on_stream)

    def remember(self, peer_id: str, addrs: Sequence[str]) -> None:
        from libp2p.peer.id import ID
        from multiaddr import Multiaddr

        good = []
        for a in addrs:
            try:
                good.append(Multiaddr(_bare(a)))
            except Exception:
                log.debug("dropping unparsable addr %r", a)
        if good:
            self._raw.get_peerstore().add_addrs(ID.from_base58(peer_id), good, 3600)

    def known_addrs(self, peer_id: str) -> list[str]:
        from libp2p.peer.id import ID

        try:
            return [str(a) for a in self._raw.get_peerstore().addrs(ID.from_base58(peer_id))]
        except Exception:
            return []

    async def connect(self, maddr: str, *, timeout: float = 10.0) -> str:
        """Dial a full multiaddr; returns the peer id. PeerTimeout / PeerGone on failure."""
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from multiaddr import Multiaddr

        split_peer_addr(maddr)
        if "/p2p-circuit" in maddr:
            await self.nat.dial_circuit(maddr, timeout=timeout)
            return maddr.rpartition("/p2p/")[2]
        try:
            info = info_from_p2p_addr(Multiaddr(maddr))
        except Exception as exc:
            raise UserError(f"address {maddr!r} is not a valid multiaddr: {exc}") from exc
        compat.forget_failed_dial(self._raw, info.peer_id)
        with trio.move_on_after(timeout) as scope:
            try:
                await self._raw.connect(info)
            except Exception as exc:
                raise PeerGone(f"could not reach {maddr}: {exc}") from exc
        if scope.cancelled_caught:
            raise PeerTimeout(f"could not reach {maddr} within {timeout:.0f} s")
        return str(info.peer_id)

    async def open_stream(self, peer_id: str, protocol: str, *,
                          addrs: Sequence[str] = (), timeout: float = 10.0,
                          max_frame: int = DEFAULT_MAX_FRAME) -> FramedStream:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        self.remember(peer_id, addrs)
        pid = ID.from_base58(peer_id)
        compat.forget_failed_dial(self._raw, pid)
        deadline = trio.current_time() + timeout
        await self._reach(peer_id, addrs, timeout=timeout)
        with trio.move_on_at(deadline) as scope:
            try:
                raw_stream = await self._raw.new_stream(pid, [TProtocol(protocol)])
            except Exception as exc:
                raise PeerGone(f"could not open {protocol} to {peer_id[:16]}: {exc}") from exc
        if scope.cancelled_caught:
            raise PeerTimeout(f"could not open {protocol} to {peer_id[:16]} in {timeout:.0f} s")
        return FramedStream.over_libp2p(raw_stream, max_frame=max_frame)

    async def _reach(self, peer_id: str, addrs: Sequence[str], *, timeout: float) -> None:
        """Connect through a relay when the peer is known only by circuit addresses (NAT
        trap 2: the swarm drops them); a direct address, when there is one, goes first."""
        if self.nat.connection_kind(peer_id):
            return
        known = [*addrs, *self.known_addrs(peer_id)]
        circuits = list(dict.fromkeys(_with_peer(a, peer_id) for a in known
                                      if "/p2p-circuit" in a))
        if not circuits:
            return
        direct = [a for a in known if "/p2p-circuit" not in a]
        if direct:
            from libp2p.peer.id import ID

            with trio.move_on_after(min(DIRECT_FIRST_S, timeout)):
                try:
                    await self._raw.connect(_peer_info(ID.from_base58(peer_id), direct))
                    return
                except Exception:
                    log.debug("no direct connection to %s", peer_id[:16], exc_info=True)
        last: Exception | None = None
        deadline = trio.current_time() + timeout
        for maddr in circuits[:MAX_CIRCUITS_TRIED]:
            try:
                await self.nat.dial_circuit(
                    maddr, timeout=max(deadline - trio.current_time(), 0.0))
                return
            except (PeerGone, PeerTimeout) as exc:
                last = exc
        if last is not None:
            raise last

    async def ping(self, peer_id: str, *, addrs: Sequence[str] = (), count: int = 3,
                   timeout: float = 5.0) -> float:
        """The lowest of `count` libp2p ping round trips to the peer, in milliseconds."""
        from libp2p.host.ping import PingService
        from libp2p.peer.id import ID

        self.remember(peer_id, addrs)
        await self._reach(peer_id, addrs, timeout=timeout)
        best = float("inf")
        with trio.move_on_after(timeout) as scope:
            try:
                last = trio.current_time()
                async for _ in PingService(self._raw).ping_iter(ID.from_base58(peer_id),
                                                                ping_amt=count):
                    now = trio.current_time()
                    best = min(best, (now - last) * 1000.0)
                    last = now
            except Exception as exc:
                raise PeerGone(f"could not ping {peer_id[:16]}: {exc!r}") from exc
        if scope.cancelled_caught:
            raise PeerTimeout(f"no ping answer from {peer_id[:16]} within {timeout:.0f} s")
        return best


def _with_peer(addr: str, peer_id: str) -> str:
    return addr if addr.endswith(f"/p2p/{peer_id}") else f"{addr}/p2p/{peer_id}"


def _peer_info(pid: Any, addrs: Sequence[str]) -> Any:
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    return PeerInfo(pid, [Multiaddr(_bare(a)) for a in addrs])


def _bare(addr: str) -> str:
    """`addr` without its trailing /p2p/<peer id>, as the peerstore keeps addresses."""
    return addr.rpartition("/p2p/")[0] if "/p2p/" in addr else addr


@asynccontextmanager
async def open_host(identity: Identity, listen: Sequence[str], *,
                    limits: Limits | None = None, relay_service: bool = False,
                    relay_limits: RelayLimits | None = None) -> AsyncIterator[Libp2pHost]:
    """Start a host listening on `listen`; it is closed, listener and connections
    included, on exit. Connections from an IP above its share are closed at once.
    Every host accepts relayed connections, answers AutoNAT and punches holes;
    `relay_service` also relays for others (circuit relay v2 hop)."""
    raw = compat.new_host(identity.seed)
    host = Libp2pHost(raw, identity, limits=limits, relay_service=relay_service,
                      relay_limits=relay_limits)
    # unbounded: each item is a connection already open, closed as soon as it is taken
    send, receive = trio.open_memory_channel[Any](math.inf)
    compat.watch_connections(raw, on_connected=partial(_admit, host, send),
                             on_disconnected=partial(_release, host))
    async with compat.running_host(raw, listen), host.nat.running(), \
            trio.open_nursery() as nursery:
        nursery.start_soon(_close_excess, host, receive)
        try:
            yield host
        finally:
            nursery.cancel_scope.cancel()


def _admit(host: Libp2pHost, excess: trio.MemorySendChannel[Any], conn: Any) -> None:
    host.nat.on_connected(conn)
    ip = remote_ip(conn.muxed_conn)
    if host.connections.admit(ip):
        conn._offload_admitted_ip = ip
        return
    host.peer_errors.count("limit")
    log.debug("closing a connection from %s: more than %d from that IP", ip,
              host.limits.connections_per_ip)
    excess.send_nowait(conn)


def _release(host: Libp2pHost, conn: Any) -> None:
    ip = getattr(conn, "_offload_admitted_ip", None)
    if ip is not None:
        conn._offload_admitted_ip = None
        host.connections.release(ip)


async def _close_excess(host: Libp2pHost, receive: trio.MemoryReceiveChannel[Any]) -> None:
    async with trio.open_nursery() as nursery:
        async for conn in receive:
            nursery.start_soon(compat.drop_connection, conn)
