"""Every py-libp2p 0.8.1 workaround lives here (see shared/notes/libp2p-0.8.1.md)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from node.errors import UserError

_patched = False


class _DropNoise(logging.Filter):
    """Bug 10: normal stream closes log 'Failed to read DHT message' by the hundred."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to read DHT message" not in record.getMessage()


def patch_libp2p() -> None:
    """Apply process-wide fixes once: no happy-eyeballs dial delay (bug 1), quiet logs."""
    global _patched
    if _patched:
        return
    import libp2p.network.swarm as swarm

    swarm._HAPPY_EYEBALLS_DELAY = 0.0
    fresh_peer_records()
    dcutr_listen_ports()
    exclusive_tcp_listeners()
    for name in ("libp2p", "libp2p.kad_dht", "libp2p.kad_dht.kad_dht"):
        logging.getLogger(name).addFilter(_DropNoise())
    root = logging.getLogger("libp2p")
    root.setLevel(os.environ.get("OFFLOAD_LIBP2P_LOG", "ERROR").upper())
    # libp2p detaches its logger (propagate=False, no handler), so Python's last-resort
    # handler printed every failed dial to a dead peer, unformatted, on users' stderr.
    # Our own errors say what failed; libp2p's lines join our logs only when debugging.
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        root.propagate = True
    else:
        root.addHandler(logging.NullHandler())
    _patched = True


_RECORD_SENDERS = ("libp2p.peer.peerstore", "libp2p.identity.identify.identify",
                   "libp2p.pubsub.pubsub", "libp2p.pubsub.gossipsub", "libp2p.pubsub.floodsub",
                   "libp2p.kad_dht.provider_store", "libp2p.kad_dht.value_store",
                   "libp2p.kad_dht.peer_routing", "libp2p.kad_dht.kad_dht",
                   "libp2p.relay.circuit_v2.discovery")


def fresh_peer_records() -> None:
    """Every DHT, pubsub and identify message carries our signed peer record, issued once
    per process with a timestamp as `seq`; a peer drops any message whose record is older
    than the last it saw for that peer id ("invalid-signed-record, dropping the stream").
    Several processes of one home share a peer id, so all but the newest were cut off (3
    of 4 parallel `submit`s found no provider). Issue a fresh record for every message:
    the newest always wins, at one signature per message."""
    import importlib

    from libp2p.peer.peerstore import issue_and_cache_local_record

    def _fresh(host: Any) -> tuple[bytes, bool]:
        return issue_and_cache_local_record(host), True

    for name in _RECORD_SENDERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "env_to_send_in_RPC"):
            setattr(module, "env_to_send_in_RPC", _fresh)  # noqa: B010


def new_host(seed: bytes) -> Any:
    """A host with our Ed25519 identity, noise only (bug 6) and yamux only (bugs 3, 4)."""
    patch_libp2p()
    from libp2p import new_host as _new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.custom_types import TProtocol
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519().private_key)
    host = _new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_ID): noise},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        connection_config=quiet_connections(),
    )
    no_auto_connect(host)
    return host


def no_auto_connect(host: Any) -> None:
    """See quiet_connections: the AutoConnector aims between the low and the high watermark
    (150 with ours), and a high watermark of 0 would make the pruner close everything, so
    switch the dialling itself off."""
    async def _never() -> None:
        return None

    host.get_network().auto_connector.maybe_connect = _never


def quiet_connections() -> Any:
    """0.8.1's AutoConnector keeps 50-100 connections by dialling every peer in the
    peerstore every 30 s and at each disconnect: a provider re-dials every requester it
    ever met, and 50 clients cut off at a per-IP cap dial back in a storm. We open the
    connections we need. Several processes of one home share its peer id, each with its
    own connection: allow a few per peer (libp2p's 3 refused the 4th requester)."""
    from libp2p.network.config import ConnectionConfig

    return ConnectionConfig(min_connections=0, low_watermark=0,
                            max_connections_per_peer=MAX_CONNECTIONS_PER_PEER)


MAX_CONNECTIONS_PER_PEER = 8


@asynccontextmanager
async def running_host(host: Any, listen: Sequence[str]) -> AsyncIterator[None]:
    """Run `host`; on exit close it explicitly, shielded, so no listener survives (bug 5)."""
    from multiaddr import Multiaddr

    try:
        async with host.run([Multiaddr(a) for a in listen]):
            failed = listen_failure(host, listen)
            if failed is None:
                try:
                    yield
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(3):
                        await close_connections(host)
                return
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            await host.close()
    raise failed  # outside host.run, whose nursery would wrap it in an ExceptionGroup


async def close_connections(host: Any) -> int:
    """Bug 5 again: leaving `host.run()` stops the swarm's tasks before `host.close()`
    closes its connections, and some sockets then stay open for good (the peer sees an
    idle connection that never ends; 30 hosts left 9 behind). Close them while the swarm
    still runs."""
    n = 0
    for conns in list(host.get_network().connections.values()):
        for conn in list(conns) if isinstance(conns, list | tuple | set) else [conns]:
            try:
                await conn.close()
                n += 1
            except Exception:
                logging.getLogger(__name__).debug("closing a connection failed",
                                                  exc_info=True)
    return n


def _layers(conn: Any) -> Iterator[Any]:
    """A connection and every object under it (muxer -> security -> raw -> socket)."""
    seen: set[int] = set()
    todo = [conn]
    while todo and len(seen) <= 32:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        for name in ("muxed_conn", "secured_conn", "conn", "read_writer", "stream", "_stream"):
            inner = getattr(obj, name, None)
            if inner is not None:
                todo.append(inner)


def _socket_of(conn: Any) -> trio.SocketStream | None:
    """The TCP stream under a swarm connection."""
    return next((o for o in _layers(conn) if isinstance(o, trio.SocketStream)), None)


async def quietly(op: Callable[[], Awaitable[object]], what: str, *,
                  timeout_s: float = 2.0) -> None:
    """Run a closing step (`stream.close`, `reset`, ...) shielded and bounded; a failure
    is logged at debug, since the peer may be gone already."""
    with trio.CancelScope(shield=True), trio.move_on_after(timeout_s):
        try:
            await op()
        except Exception:
            logging.getLogger(__name__).debug("%s failed", what, exc_info=True)


async def drop_connection(conn: Any) -> None:
    """Close a connection for good: `SwarmConn.close()` waits on the muxer and its
    streams, and a cancelled close (a flood closes many) left the socket open. Shut the
    socket down first, so whatever libp2p does next, the descriptor goes."""
    import socket

    sock = _socket_of(conn)
    if sock is not None:
        try:
            sock.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    with trio.move_on_after(2):
        try:
            await conn.close()
        except Exception:
            logging.getLogger(__name__).debug("closing a connection failed", exc_info=True)
    if sock is not None and sock.socket.fileno() != -1:
        sock.socket.close()


def watch_connections(host: Any, *, on_connected: Callable[[Any], None],
                      on_disconnected: Callable[[Any], None]) -> None:
    """Tell us of every connection opened and closed (libp2p's notifee interface)."""
    from libp2p.abc import INotifee

    class _Watcher(INotifee):
        async def opened_stream(self, network: Any, stream: Any) -> None:
            pass

        async def closed_stream(self, network: Any, stream: Any) -> None:
            pass

        async def connected(self, network: Any, conn: Any) -> None:
            on_connected(conn)

        async def disconnected(self, network: Any, conn: Any) -> None:
            on_disconnected(conn)

        async def listen(self, network: Any, multiaddr: Any) -> None:
            pass

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            pass

    host.get_network().register_notifee(_Watcher())


_listen_errors: dict[tuple[str | None, int], str] = {}


def exclusive_tcp_listeners() -> None:
    """py-libp2p binds its TCP listeners with SO_REUSEPORT, so that DCUtR can dial from the
    listen port (a NAT then maps both to one public port); but a second node could then
    bind a port already in use and take part of its connections. Keep SO_REUSEPORT, and
    first check that the port is free with a plain bind (SO_REUSEADDR only): a taken
    port is refused with EADDRINUSE. (Port 0 needs no check: the kernel picks a free one.)"""
    import socket

    import libp2p.transport.tcp.tcp as tcp
    from libp2p.transport.exceptions import OpenConnectionError

    reuseport = tcp._open_reuseport_listeners

    async def _exclusive(host: str | None, port: int) -> list[trio.SocketListener]:
        try:
            if port:
                family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    probe.bind((host or "0.0.0.0", port))
            listeners = list(await reuseport(host, port))
        except (OSError, OpenConnectionError) as exc:
            _listen_errors[(host, port)] = getattr(exc, "strerror", None) or str(exc)
            raise OpenConnectionError(f"Failed to listen on {host}:{port}: {exc}") from exc
        _listen_errors.pop((host, port), None)
        return listeners

    tcp._open_reuseport_listeners = _exclusive


def listen_failure(host: Any, listen: Sequence[str]) -> UserError | None:
    """Swarm.listen drops an address it fails to bind (logged at debug) and the host runs
    listening on nothing: the error to raise instead, naming the address and the reason."""
    from multiaddr import Multiaddr

    bound = set(host.get_network().listeners)
    for addr in listen:
        if str(Multiaddr(addr)) in bound:
            continue
        maddr = Multiaddr(addr)
        try:
            key = (maddr.value_for_protocol("ip4") or maddr.value_for_protocol("ip6"),
                   int(maddr.value_for_protocol("tcp")))
            why = _listen_errors.get(key, "the address is not available on this host")
        except Exception:
            why = "not a TCP address this node can listen on"
        return UserError(f"cannot listen on {addr}: {why}; stop what listens there or pick "
                         "another port (tcp/0 picks a free one)")
    return None


def forget_failed_dial(host: Any, peer_id: Any) -> None:
    """Bug 11: after one failed dial a peer id is refused for 60 s; forget that."""
    cache = getattr(host.get_network(), "_negative_peer_cache", None)
    if cache is not None:
        cache.evict(str(peer_id))


def rendezvous_cid(name: str) -> str:
    """Provider keys must be CIDs (CIDv1, raw codec, sha2-256) to interoperate."""
    from libp2p.bitswap.cid import compute_cid_v1_obj

    return str(compute_cid_v1_obj(name.encode()))


def dedupe_peers(infos: Sequence[Any]) -> list[Any]:
    """Bug 7: find_providers returns duplicates."""
    seen: set[str] = set()
    out = []
    for info in infos:
        key = str(info.peer_id)
        if key not in seen:
            seen.add(key)
            out.append(info)
    return out


async def fresh_get_value(dht: Any, key: str) -> bytes | None:
    """get_value answers from the local store first, and stores what it found there, so a
    long-lived node would never see an updated record: ask the network, and fall back to
    the local copy only if no peer has one (a server holding the only copy)."""
    key_bytes = key.encode("utf-8")
    local = dht.value_store.get(key_bytes)
    if local is not None:
        dht.value_store.remove(key_bytes)
    try:
        value: bytes | None = await dht.get_value(key)
    finally:
        if dht.value_store.get(key_bytes) is None and local is not None:
            dht.value_store.put_record(key_bytes, local)
    if value is None and local is not None:
        return bytes(local.value)
    return value


def announce_existing_peers(pubsub: Any, host: Any) -> int:
    """Pubsub learns of peers only from connections opened after it was built: hand it the
    ones already open (bootstrap peers), or those peers never hear our subscriptions."""
    peers = list(host.get_network().connections)
    for peer_id in peers:
        pubsub.manager.run_task(pubsub._handle_new_peer_with_retry, peer_id)
    return len(peers)


def dcutr_listen_ports() -> None:
    """NAT trap 10 (found here): DCUtR predicts our NAT mapping (WAN IP : listen port) and
    binds its punching dials to the listen port, both from `host.get_addrs()`; with only
    circuit addresses advertised (trap 5) it found no port and offered the peer nothing
    to dial. Read the transport's listen addresses instead."""
    import libp2p.relay.circuit_v2.dcutr as dcutr

    original = dcutr._local_tcp_listen_addrs

    class _Listening:
        def __init__(self, host: Any) -> None:
            self._host = host

        def get_addrs(self) -> list[Any]:
            return list(self._host.get_transport_addrs())

    def _local_tcp_listen_addrs(host: Any) -> list[tuple[int, str, int]]:
        return list(original(_Listening(host)))

    dcutr._local_tcp_listen_addrs = _local_tcp_listen_addrs


def advertise_exactly(host: Any, addrs: Callable[[], list[str] | None]) -> None:
    """NAT trap 1: nothing advertises a circuit address after a reservation, and an
    `addrs_factory` returning one is mangled by `BasicHost.get_addrs()` (the relay's /p2p/
    is stripped). Wrap `get_addrs` on the instance: when `addrs()` gives a list, identify,
    the DHT and our ads carry exactly it (NAT trap 5: no private addresses)."""
    from multiaddr import Multiaddr

    original = host.get_addrs

    def get_addrs() -> list[Any]:
        chosen = addrs()
        if chosen is None:
            return list(original())
        return [Multiaddr(a) for a in chosen]

    host.get_addrs = get_addrs


def fresh_dial_back(autonat: Any, host: Any, *, timeout_s: float) -> None:
    """NAT trap 4: the AutoNAT server dials back with `host.connect()`, which returns the
    connection the request came in on, so a node behind a NAT hears "reachable" with no
    dial at all. Dial back on a new connection (and close it)."""
    from multiaddr import Multiaddr

    async def _try_dial(peer_id: Any, addrs: list[bytes]) -> bytes | None:
        swarm = host.get_network()
        for addr in addrs[:4]:
            with trio.move_on_after(timeout_s):
                try:
                    conn = await swarm.dial_addr(Multiaddr(addr), peer_id)
                except Exception:
                    continue
                await quietly(conn.close, "closing a dial-back")
                return bytes(addr)
        return None

    autonat._try_dial = _try_dial


def reserve_for_caller_only(circuit: Any, may_reserve: Callable[[Any], bool]) -> None:
    """The hop side takes a RESERVE's optional `peer` field as the peer to reserve for,
    so anyone could reserve (and have circuits opened) in another peer's name. Reserve
    for the connection's own peer, and only when `may_reserve(stream)` agrees."""
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
    from libp2p.relay.circuit_v2.utils import write_delimited_msg

    original = circuit._handle_reserve

    async def _handle_reserve(stream: Any, msg: Any) -> None:
        msg.ClearField("peer")
        if not may_reserve(stream):
            await write_delimited_msg(stream, HopMessage(
                type=HopMessage.STATUS,
                status=to_proto_status(StatusCode.RESOURCE_LIMIT_EXCEEDED)))
            return
        await original(stream, msg)

    circuit._handle_reserve = _handle_reserve


def connections_to(host: Any, peer_id: str) -> list[Any]:
    """The swarm's open connections to a peer (a list, whatever the swarm keeps)."""
    from libp2p.peer.id import ID

    try:
        conns = host.get_network().connections.get(ID.from_base58(peer_id))
    except Exception:
        return []
    if not conns:
        return []
    return list(conns) if isinstance(conns, list | tuple | set) else [conns]


def connected_peers(host: Any) -> list[str]:
    return [str(p) for p in list(host.get_network().connections.keys())]


def remote_ip(conn: Any) -> str:
    """The IP a muxed connection comes from ("" when the transport does not say, and for a
    relayed connection, whose socket is the relay's: every peer behind one relay would
    otherwise share one IP's caps; the relay caps its circuits per peer instead)."""
    if relayed(conn):
        return ""
    try:
        addr = conn.get_remote_address()
    except Exception:
        return ""
    return str(addr[0]) if addr else ""


def relayed(conn: Any) -> bool:
    """Whether a connection runs through a circuit relay (its raw connection says so)."""
    from libp2p.connection_types import ConnectionType

    for obj in _layers(conn):
        kind = getattr(obj, "_connection_type", None)
        if kind is not None:
            return bool(kind == ConnectionType.RELAYED)
    return False
