"""py-libp2p 0.8.1 Kademlia workarounds (see compat.py for the rest; notes/libp2p-0.8.1.md).

libp2p's find_providers / get_value swallow every per-peer failure (a reset reads as "no
record"), return local provider records without asking the network once any are cached,
and count duplicates toward `count` (bug 7), so under load a lookup silently comes back
short. These one-peer requests raise instead; node/discovery.py retries and walks.
Its server side serves 12 inbound requests and resets the rest: FairDhtInbound.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from node.errors import DhtRequestFailed as DhtRequestFailed

MAX_KAD_RESPONSE = 256 * 1024   # an ad is <= 16 KiB; 20 providers and 20 peers fit easily
MAX_KAD_PEERS = 32              # provider or closer-peer entries read from one answer
MAX_KAD_ADDRS = 8               # addresses kept per peer entry


def _permanent(exc: BaseException) -> bool:
    """A dial that failed or a peer without /ipfs/kad/1.0.0: asking again will not help."""
    from libp2p.network.exceptions import SwarmException
    from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError

    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (SwarmException, ProtocolNotSupportedError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def kad_request(dht: Any, peer_id: Any, message: Any, *, timeout: float) -> Any:
    """One Kademlia request on a fresh stream, answer capped at MAX_KAD_RESPONSE bytes."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.common import PROTOCOL_ID
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.kad_dht.utils import maybe_consume_signed_record

    host, who = dht.host, str(peer_id)[:16]
    response = Message()
    connected, opened = peer_id in host.get_network().connections, False
    with trio.move_on_after(max(timeout, 0.0)) as scope:
        try:
            stream = await host.new_stream(peer_id, [TProtocol(PROTOCOL_ID)])
        except Exception as exc:
            raise DhtRequestFailed(f"no DHT stream to {who}: {exc}",
                                   retryable=not _permanent(exc)) from exc
        opened = True
        try:
            response = await _kad_exchange(host, stream, message)
        except Exception as exc:
            raise DhtRequestFailed(f"DHT request to {who} failed: {exc!r}",
                                   retryable=True) from exc
        finally:
            await _close_quietly(stream)
    if scope.cancelled_caught:  # a dial that timed out is not retried: the peer is gone
        raise DhtRequestFailed(f"no DHT answer from {who} within {timeout:.1f} s",
                               retryable=opened or connected)
    if response.type != message.type:
        raise DhtRequestFailed(f"{who} answered a DHT request of another type",
                               retryable=False)
    # a signed peer record is only an address-book update; an older one is not an error
    maybe_consume_signed_record(response, host, peer_id)
    return response


async def _close_quietly(stream: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.close()
        except Exception:
            pass


async def _kad_exchange(host: Any, stream: Any, message: Any) -> Any:
    """One request and its answer on an open DHT stream (libp2p serves many per stream)."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer import peerstore
    from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

    message.senderRecord = peerstore.env_to_send_in_RPC(host)[0]
    await stream.write(encode_varint_prefixed(message.SerializeToString()))
    response = Message()
    response.ParseFromString(await read_varint_prefixed_bytes_limited(stream, MAX_KAD_RESPONSE))
    return response


def _closer_peers(dht: Any, response: Any) -> list[Any]:
    """Closer peers of an answer, their addresses kept for 10 min so we can dial them."""
    from libp2p.peer.id import ID
    from multiaddr import Multiaddr

    out = []
    for entry in list(response.closerPeers)[:MAX_KAD_PEERS]:
        try:
            peer = ID(entry.id)
            addrs = [Multiaddr(a) for a in list(entry.addrs)[:MAX_KAD_ADDRS]]
        except Exception:
            continue
        if peer == dht.local_peer_id:
            continue
        if addrs:
            dht.host.get_peerstore().add_addrs(peer, addrs, 600)
        out.append(peer)
    return out


async def kad_get_providers(dht: Any, peer_id: Any, key: str, *,
                            timeout: float) -> tuple[list[Any], list[Any]]:
    """GET_PROVIDERS to one peer: (its provider records for the CID `key`, closer peers)."""
    from libp2p.kad_dht.kad_dht import _encode_key
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.kad_dht.utils import maybe_consume_signed_record
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    message = Message()
    message.type = Message.MessageType.GET_PROVIDERS
    message.key = _encode_key(key)
    response = await kad_request(dht, peer_id, message, timeout=timeout)
    providers = []
    for entry in list(response.providerPeers)[:MAX_KAD_PEERS]:
        try:
            # kept even when its signed record is older than ours (libp2p drops it then)
            maybe_consume_signed_record(entry, dht.host)
            addrs = []
            for raw in list(entry.addrs)[:MAX_KAD_ADDRS]:
                try:
                    addrs.append(Multiaddr(raw))
                except Exception:
                    pass
            providers.append(PeerInfo(ID(entry.id), addrs))
        except Exception:
            continue
    return providers, _closer_peers(dht, response)


async def kad_get_value(dht: Any, peer_id: Any, key: str, *, timeout: float) -> bytes | None:
    """GET_VALUE to one peer: the value it holds under `key`, or None if it has none."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Message

    message = Message()
    message.type = Message.MessageType.GET_VALUE
    message.key = key.encode("utf-8")
    response = await kad_request(dht, peer_id, message, timeout=timeout)
    if response.HasField("record") and response.record.value:
        return bytes(response.record.value)
    return None


async def kad_get_values(dht: Any, peer_id: Any, keys: Sequence[str], *,
                         timeout: float) -> dict[str, bytes | None]:
    """GET_VALUE of each of `keys` to one peer, one after another on ONE stream (a stream
    is much cheaper than a dial, and several requests on one stream cheaper than several
    streams): {key: its value, or None if it has none} for the keys it answered before an
    error or `timeout` ended the batch; a peer it cannot reach answers none. Never raises
    for the peer's faults: whatever it did not answer is simply absent."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.common import PROTOCOL_ID
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.kad_dht.utils import maybe_consume_signed_record

    host, who, log = dht.host, str(peer_id)[:16], logging.getLogger(__name__)
    got: dict[str, bytes | None] = {}
    with trio.move_on_after(max(timeout, 0.0)):
        try:
            stream = await host.new_stream(peer_id, [TProtocol(PROTOCOL_ID)])
        except Exception as exc:
            log.debug("no DHT stream to %s for %d values: %s", who, len(keys), exc)
            return got
        try:
            for key in keys:
                message = Message()
                message.type = Message.MessageType.GET_VALUE
                message.key = key.encode("utf-8")
                response = await _kad_exchange(host, stream, message)
                if response.type != message.type:
                    log.debug("%s answered GET_VALUE with another type", who)
                    break
                maybe_consume_signed_record(response, host, peer_id)
                got[key] = (bytes(response.record.value) if response.HasField("record")
                            and response.record.value else None)
        except Exception as exc:
            log.debug("GET_VALUE batch to %s ended after %d of %d: %r", who, len(got),
                      len(keys), exc)
        finally:
            await _close_quietly(stream)
    return got


def kad_client_without_walks(dht: Any) -> None:
    """libp2p's DHT starts with a routing-table refresh (a FIND_NODE walk for its own id,
    then one per non-empty bucket: a dial and several requests to every server it meets),
    in client mode too, and again every 10 min. A requester's lookups walk from its
    bootstrap peers themselves (kad_seed_peers), so that walk is pure cost, and a burst of
    fresh requesters ran a burst of walks against the providers: it is switched off."""

    async def no_walk() -> None:
        return None

    dht.refresh_routing_table = no_walk


def kad_connected(dht: Any, peer_id: Any) -> bool:
    """Whether a request to `peer_id` goes over an open connection (no dial)."""
    return peer_id in dht.host.get_network().connections


def kad_seed_peers(dht: Any, key: str, count: int = 20) -> list[Any]:
    """Where a provider lookup for the CID `key` starts: the routing table's closest peers,
    and the connected ones when the table is nearly empty (as libp2p's own lookup does)."""
    from libp2p.kad_dht.kad_dht import _encode_key

    target = _encode_key(key)
    peers = list(dht.routing_table.find_local_closest_peers(target, count))
    if len(peers) < 5:
        peers += [p for p in dht.host.get_connected_peers() if p not in peers]
    return [p for p in kad_by_distance(dht, key, peers) if p != dht.local_peer_id][:count]


def kad_by_distance(dht: Any, key: str, peers: Sequence[Any]) -> list[Any]:
    """Peers sorted by XOR distance to the CID `key`, closest first."""
    from libp2p.kad_dht.kad_dht import _encode_key
    from libp2p.kad_dht.utils import sort_peer_ids_by_distance

    return list(sort_peer_ids_by_distance(_encode_key(key), list(dict.fromkeys(peers))))


def kad_local_providers(dht: Any, key: str) -> list[Any]:
    """Provider records this node holds itself (a server's own, and those sent to it)."""
    from libp2p.kad_dht.kad_dht import _encode_key

    return list(dht.provider_store.get_providers(_encode_key(key)))


class FairDhtInbound:
    """libp2p's DHT server serves 12 inbound streams at once and resets the 13th at once
    (kad_dht.py handle_stream, `_inbound_limiter`), so a burst of lookups fails even on an
    idle machine, and 12 silent streams of one peer lock everyone out (a stream is served
    until its peer closes it). Here: more slots, a short FIFO wait for one instead of an
    instant reset, a cap per peer, a bound on waiters and on each stream's lifetime."""

    def __init__(self, dht: Any, *, slots: int = 32, per_peer: int = 8, wait_s: float = 3.0,
                 max_waiting: int = 256, stream_s: float = 30.0) -> None:
        self.dht = dht
        self.slots = trio.CapacityLimiter(slots)
        self.per_peer, self.wait_s, self.stream_s = per_peer, wait_s, stream_s
        self.max_waiting = max_waiting
        self.waiting = 0
        self.open: dict[str, int] = {}
        self.refused = 0

    async def handle(self, stream: Any) -> None:
        try:
            peer = str(stream.muxed_conn.peer_id)
        except Exception:
            peer = "?"
        if self.open.get(peer, 0) >= self.per_peer or self.waiting >= self.max_waiting:
            await self._refuse(stream)
            return
        self.open[peer] = self.open.get(peer, 0) + 1
        try:
            await self._serve(stream)
        finally:
            self.open[peer] -= 1
            if not self.open[peer]:
                del self.open[peer]

    async def _serve(self, stream: Any) -> None:
        got = False
        self.waiting += 1
        try:
            with trio.move_on_after(self.wait_s):
                await self.slots.acquire()
                got = True
        finally:
            self.waiting -= 1
        if not got:
            await self._refuse(stream)
            return
        try:
            with trio.move_on_after(self.stream_s) as scope:
                await self.dht._do_handle_stream(stream)
            if scope.cancelled_caught:
                await self._refuse(stream)
        except Exception:
            logging.getLogger(__name__).debug("DHT stream handler failed", exc_info=True)
            await self._refuse(stream)
        finally:
            self.slots.release()

    async def _refuse(self, stream: Any) -> None:
        self.refused += 1
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            try:
                await stream.reset()
            except Exception:
                pass


def fair_dht_inbound(dht: Any, **limits: Any) -> FairDhtInbound:
    """Serve a server-mode DHT's inbound streams through FairDhtInbound (see there), and
    keep peers that identified without the DHT protocol out of its routing table (bug 9:
    libp2p adds every peer that opens a DHT stream, requesters in client mode included)."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.common import PROTOCOL_ID

    fair = FairDhtInbound(dht, **limits)
    dht.host.set_stream_handler(TProtocol(PROTOCOL_ID), fair.handle)
    add_peer = dht.add_peer

    async def add_server_peer(peer_id: Any, *, skip_server_mode_check: bool = False) -> bool:
        return bool(await add_peer(peer_id))

    dht.add_peer = add_server_peer
    return fair
