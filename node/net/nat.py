"""Behind NATs: circuit relay v2 (served and dialled), AutoNAT, hole punching (DCUtR).

`NatServices` runs beside one libp2p host: the relay's stop side (every node accepts
relayed connections), its hop side when the node relays for others, an AutoNAT server
whose dial-back is a fresh connection, and DCUtR. It dials `/p2p-circuit` addresses, takes
reservations on relays and sets the addresses the host advertises. The py-libp2p
workarounds it needs are in compat.py (traps of shared/notes/nat.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from node.config import resolve
from node.errors import PeerGone, PeerTimeout
from node.net import compat
from node.net.limits import PeerErrors, StreamShares

log = logging.getLogger(__name__)

HOP_PROTOCOL: Final = "/libp2p/circuit/relay/0.2.0/hop"
AUTONAT_PROTOCOL: Final = "/libp2p/autonat/1.0.0"


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What one relay grants: enough for control traffic and small jobs; bulk data waits
    for a direct connection (a relayed byte costs the relay two copies and two ciphers)."""

    reservations: int = 128
    """Reservations held at once, all peers together."""
    reservations_per_ip: int = 4
    """Reservations held at once by peers behind one IP (identities are free to mint)."""
    circuits_per_reservation: int = 16
    """Open circuits to one reserved peer."""
    circuit_s: int = 30 * 60
    """Longest a circuit stays open."""
    circuit_bytes: int = 256 * 1024 * 1024
    """Most bytes a circuit carries, both ways together."""
    reservation_ttl_s: int = 3600
    """How long a reservation lasts unless renewed."""


DIAL_BACK_S: Final = 5.0
"""An AutoNAT dial-back gives up after this long."""
DCUTR_DIAL_S: Final = 3
"""A hole-punching dial gives up after this long (trap 5: a dead address hangs 10 s)."""


def hole_punching() -> bool:
    """Whether this node answers and starts DCUtR (OFFLOAD_HOLE_PUNCH=off|0|no: neither,
    so relayed connections stay relayed)."""
    return resolve(None, "OFFLOAD_HOLE_PUNCH", None, "on").lower() not in ("off", "0", "no")


class NatServices:
    """The relay, AutoNAT and DCUtR services of one libp2p host."""

    def __init__(self, raw: Any, *, relay_service: bool, shares: StreamShares,
                 errors: PeerErrors, relay_limits: RelayLimits | None = None) -> None:
        from libp2p.host.autonat.autonat import AutoNATService
        from libp2p.relay.circuit_v2 import CircuitV2Protocol, CircuitV2Transport, DCUtRProtocol
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.resources import RelayLimits as Libp2pRelayLimits

        self._raw = raw
        self.relay_service = relay_service
        self.relay_limits = relay_limits or RelayLimits()
        rl = self.relay_limits
        lim = Libp2pRelayLimits(duration=rl.circuit_s, data=rl.circuit_bytes,
                                max_circuit_conns=rl.circuits_per_reservation,
                                max_reservations=rl.reservations,
                                reservation_ttl=rl.reservation_ttl_s)
        self.circuit = CircuitV2Protocol(raw, lim, allow_hop=relay_service)
        # trap 3: STOP only, so dialling through a relay never takes a reservation first
        self.transport = CircuitV2Transport(raw, self.circuit,
                                            RelayConfig(roles=RelayRole.STOP, limits=lim))
        self.dcutr = DCUtRProtocol(raw, dial_timeout=DCUTR_DIAL_S)
        self.autonat = AutoNATService(raw, serve=False, confirmations=1)
        self._shares = shares
        self._errors = errors
        self._reserved_ips: dict[str, str] = {}
        self.advertised: list[str] | None = None
        """When set, exactly the addresses the host advertises (circuit and public)."""
        self.upgrades = 0
        """Relayed connections that a direct one to the same peer has joined."""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[NatServices]:
        from libp2p.tools.anyio_service import background_trio_service

        compat.advertise_exactly(self._raw, lambda: self.advertised)
        compat.fresh_dial_back(self.autonat, self._raw, timeout_s=DIAL_BACK_S)
        async with background_trio_service(self.circuit), AsyncExitStack() as stack:
            if hole_punching():
                await stack.enter_async_context(background_trio_service(self.dcutr))
            await self.circuit.event_started.wait()
            self._guard(AUTONAT_PROTOCOL, self.autonat.handle_stream)
            if self.relay_service:
                compat.reserve_for_caller_only(self.circuit, self._may_reserve)
                self._guard(HOP_PROTOCOL, self.circuit._handle_hop_stream)
            yield self

    def _guard(self, protocol: str, handler: Any) -> None:
        """Serve a libp2p service's protocol within each peer's share of streams."""
        from libp2p.custom_types import TProtocol

        async def guarded(stream: Any) -> None:
            peer, ip = str(stream.muxed_conn.peer_id), compat.remote_ip(stream.muxed_conn)
            why = self._shares.try_open(protocol, peer, ip)
            if why is not None:
                self._errors.count("limit")
                await compat.quietly(stream.reset, "resetting a stream")
                return
            try:
                await handler(stream)
            except Exception as exc:
                self._errors.failed(protocol, peer, exc)
            finally:
                self._shares.close(protocol, peer, ip)

        self._raw.set_stream_handler(TProtocol(protocol), guarded)

    def _may_reserve(self, stream: Any) -> bool:
        """A reservation for the stream's own peer, within its IP's share."""
        peer, ip = str(stream.muxed_conn.peer_id), compat.remote_ip(stream.muxed_conn)
        live = {str(p) for p, r in self.circuit.resource_manager._reservations.items()
                if not r.is_expired()}
        self._reserved_ips = {p: i for p, i in self._reserved_ips.items() if p in live}
        if peer not in live and not self._shares.is_exempt(ip) and sum(
                1 for i in self._reserved_ips.values() if i == ip) \
                >= self.relay_limits.reservations_per_ip:
            self._errors.count("limit")
            return False
        self._reserved_ips[peer] = ip
        return True

    async def dial_circuit(self, maddr: str, *, timeout: float) -> None:
        """Connect through the relay named in `maddr` (trap 2: the swarm drops these)."""
        from multiaddr import Multiaddr

        with trio.move_on_after(timeout) as scope:
            try:
                await self.transport.dial(Multiaddr(maddr))
            except Exception as exc:
                raise PeerGone(f"could not reach {maddr} through its relay: {exc}") from exc
        if scope.cancelled_caught:
            raise PeerTimeout(f"could not reach {maddr} through its relay within "
                              f"{timeout:.0f} s")

    def connection_kind(self, peer_id: str) -> str:
        """"direct", "relayed" or "" (not connected) for the best connection to a peer."""
        kinds = {_kind(c) for c in compat.connections_to(self._raw, peer_id)}
        return "direct" if "direct" in kinds else "relayed" if kinds else ""

    def on_connected(self, conn: Any) -> None:
        """Count an upgrade: a direct connection joining a relayed one to the same peer."""
        try:
            peer = str(conn.muxed_conn.peer_id)
        except Exception:
            return
        if _kind(conn) == "direct" and any(
                _kind(c) == "relayed" for c in compat.connections_to(self._raw, peer)
                if c is not conn):
            self.upgrades += 1

    async def reserve(self, relay_peer: str, *, timeout: float = 10.0) -> float:
        """Take (or renew) a reservation on a relay already connected; its expiry as a
        Unix time, 0.0 when refused."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        pid = ID.from_base58(relay_peer)
        with trio.move_on_after(timeout):
            try:
                stream = await self._raw.new_stream(pid, [TProtocol(HOP_PROTOCOL)])
            except Exception:
                log.debug("no hop stream to %s", relay_peer[:16], exc_info=True)
                return 0.0
            try:
                ok = await self.transport._make_reservation(stream, pid)
            finally:
                await compat.quietly(stream.close, "closing a hop stream")
            return float(self.transport._reservations.get(pid, 0)) if ok else 0.0
        return 0.0

    async def ask_autonat(self, server: str, listen: Sequence[str], *,
                          timeout: float = 5.0) -> bool | None:
        """One AutoNAT verdict from `server` on our listen addresses only (trap 4): True
        when it dialled us back, False when it could not, None when it did not answer."""
        from libp2p.host.autonat.pb.autonat_pb2 import Message
        from libp2p.peer.id import ID
        from multiaddr import Multiaddr

        try:
            status, _ = await self.autonat.query_server(
                ID.from_base58(server), [Multiaddr(a).to_bytes() for a in listen],
                timeout=timeout)
        except Exception:
            log.debug("AutoNAT server %s did not answer", server[:16], exc_info=True)
            return None
        if status == int(Message.OK):
            return True
        if status in (int(Message.E_DIAL_ERROR), int(Message.E_DIAL_REFUSED)):
            return False
        return None


def _kind(conn: Any) -> str:
    if compat.relayed(conn):
        return "relayed"
    try:
        addrs = conn.get_transport_addresses()
    except Exception:
        return "direct"
    return "relayed" if any("/p2p-circuit" in str(a) for a in addrs or ()) else "direct"


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """Our address through a relay: RELAY_ADDR/p2p/RELAY/p2p-circuit/p2p/US."""
    return f"{relay_addr}/p2p-circuit/p2p/{peer_id}"

