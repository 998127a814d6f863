"""NAT services between real libp2p hosts on loopback: relayed streams, reservations that
only the caller can take and that each IP gets a share of, AutoNAT that really dials back,
the reachability verdict."""

from __future__ import annotations

import socket
from typing import Any

import trio

from node.net.host import Libp2pHost, libp2p_host, open_host
from node.net.limits import Limits
from node.net.nat import HOP_PROTOCOL, RelayLimits, circuit_addr
from node.net.reach import verdict
from protocol.identity import Identity

LOOP = ["/ip4/127.0.0.1/tcp/0"]


def test_verdict_needs_more_yes_than_no() -> None:
    assert verdict([]) == "unknown"
    assert verdict([None, None]) == "unknown"
    assert verdict([True]) == "public"
    assert verdict([False, None]) == "private"
    assert verdict([True, False]) == "private"  # one hostile "yes" is not enough
    assert verdict([True, True, False]) == "public"


async def test_relayed_stream_both_ways() -> None:
    async with open_host(Identity.generate(), LOOP, relay_service=True) as relay, \
            open_host(Identity.generate(), LOOP) as home, \
            open_host(Identity.generate(), LOOP) as req:
        await home.connect(relay.addrs()[0])
        assert await home.nat.reserve(relay.peer_id) > 0
        circuit = circuit_addr(relay.addrs()[0], home.peer_id)

        ips: list[str] = []

        async def echo(stream: Any) -> None:
            ips.append(stream.remote_ip)
            frame = await stream.receive()
            await stream.send(frame)

        home.handle("/test/echo/1", echo)
        stream = await req.open_stream(home.peer_id, "/test/echo/1", addrs=[circuit])
        assert req.connection_kind(home.peer_id) == "relayed"
        from protocol import wire

        await stream.send(wire.Running(elapsed_s=1.5))
        assert await stream.receive_within(10, "echo") == wire.Running(elapsed_s=1.5)
        await stream.close()
        # a relayed stream has no IP of its own: the socket is the relay's, and every peer
        # behind that relay would share one IP's caps
        assert ips == [""] and stream.remote_ip == ""
        direct = await relay.open_stream(home.peer_id, "/test/echo/1", addrs=home.addrs())
        await direct.send(wire.Running(elapsed_s=1.5))
        await direct.receive_within(10, "echo")
        assert ips[1] == "127.0.0.1" and direct.remote_ip == "127.0.0.1"  # the canary


async def _raw_reserve(host: Libp2pHost, relay: Libp2pHost, *, name: str | None) -> int:
    """A RESERVE as a hostile peer writes it, optionally naming another peer; the status."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    raw = libp2p_host(host)
    stream = await raw.new_stream(ID.from_base58(relay.peer_id), [TProtocol(HOP_PROTOCOL)])
    msg = HopMessage(type=HopMessage.RESERVE)
    if name is not None:
        msg.peer.CopyFrom(PeerId(id=ID.from_base58(name).to_bytes()))
    await write_delimited_msg(stream, msg)
    with trio.fail_after(10):
        resp = await read_delimited_msg(stream, HopMessage)
    await stream.close()
    return int(resp.status)


def _reserved(relay: Libp2pHost) -> set[str]:
    return {str(p) for p in relay.nat.circuit.resource_manager._reservations}


async def test_a_reservation_is_for_the_caller_only() -> None:
    victim = Identity.generate().peer_id
    async with open_host(Identity.generate(), LOOP, relay_service=True) as relay, \
            open_host(Identity.generate(), LOOP) as attacker:
        await attacker.connect(relay.addrs()[0])
        assert await _raw_reserve(attacker, relay, name=victim) == 100  # OK, but for whom:
        assert _reserved(relay) == {attacker.peer_id}


async def test_canary_unguarded_relay_reserves_in_any_name() -> None:
    """The probe above would see the escape: py-libp2p's own hop handler, unwrapped,
    reserves for the peer the message names."""
    victim = Identity.generate().peer_id
    async with open_host(Identity.generate(), LOOP, relay_service=True) as relay, \
            open_host(Identity.generate(), LOOP) as attacker:
        from libp2p.custom_types import TProtocol
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol

        circuit = relay.nat.circuit
        circuit._handle_reserve = CircuitV2Protocol._handle_reserve.__get__(circuit)
        libp2p_host(relay).set_stream_handler(TProtocol(HOP_PROTOCOL),
                                              circuit._handle_hop_stream)
        await attacker.connect(relay.addrs()[0])
        await _raw_reserve(attacker, relay, name=victim)
        assert victim in _reserved(relay)


async def test_reservations_per_ip_are_capped() -> None:
    limits = Limits(exempt=())  # loopback counts as one IP here
    async with open_host(Identity.generate(), LOOP, relay_service=True, limits=limits) as relay:
        relay.nat.relay_limits = RelayLimits(reservations_per_ip=2)
        statuses = []
        for _ in range(3):
            async with open_host(Identity.generate(), LOOP) as peer:
                await peer.connect(relay.addrs()[0])
                statuses.append(await _raw_reserve(peer, relay, name=None))
        assert statuses[:2] == [100, 100]
        assert statuses[2] != 100  # RESOURCE_LIMIT_EXCEEDED
        assert len(_reserved(relay)) == 2


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


async def test_autonat_dials_back_on_a_fresh_connection() -> None:
    """Trap 4: asked about an address where nothing listens, over a connection that is
    already open, the server must say "not reachable"."""
    async with open_host(Identity.generate(), LOOP) as server, \
            open_host(Identity.generate(), LOOP) as client:
        await client.connect(server.addrs()[0])
        dead = f"/ip4/127.0.0.1/tcp/{_closed_port()}"
        assert await client.nat.ask_autonat(server.peer_id, [dead]) is False
        assert await client.nat.ask_autonat(server.peer_id, client.listen_addrs()) is True


async def test_canary_stock_autonat_says_reachable_without_dialling() -> None:
    async with open_host(Identity.generate(), LOOP) as server, \
            open_host(Identity.generate(), LOOP) as client:
        from libp2p.host.autonat.autonat import AutoNATService

        stock = AutoNATService(libp2p_host(server))  # its own handler, host.connect dial-back
        assert stock is not None
        await client.connect(server.addrs()[0])
        dead = f"/ip4/127.0.0.1/tcp/{_closed_port()}"
        assert await client.nat.ask_autonat(server.peer_id, [dead]) is True


async def test_a_circuit_is_relayed_then_upgraded_to_direct() -> None:
    """Both peers here have direct addresses, so DCUtR's first step (a plain dial) joins
    a direct connection to the relayed one within a few seconds; upgrades are counted."""
    async with open_host(Identity.generate(), LOOP, relay_service=True) as relay, \
            open_host(Identity.generate(), LOOP) as home, \
            open_host(Identity.generate(), LOOP) as req:
        await home.connect(relay.addrs()[0])
        assert await home.nat.reserve(relay.peer_id) > 0
        await req.connect(circuit_addr(relay.addrs()[0], home.peer_id))
        assert req.connection_kind(home.peer_id) == "relayed"
        assert req.connection_kind(Identity.generate().peer_id) == ""
        with trio.fail_after(30):
            while req.connection_kind(home.peer_id) != "direct":
                await trio.sleep(0.2)
        assert req.nat.upgrades >= 1


async def test_reservations_are_renewed_before_they_expire() -> None:
    """A relay granting 6 s: the home renews at half of it, so the relay never lets it lapse
    (without renewal the reservation is gone after 6 s: the probe checks the relay's own
    record at 9 s)."""
    from node.net.discovery import open_discovery
    from node.net.reach import Reachability

    async with open_host(Identity.generate(), LOOP, relay_service=True,
                         relay_limits=RelayLimits(reservation_ttl_s=6)) as relay, \
            open_host(Identity.generate(), LOOP) as home, \
            open_discovery(home, server=False, clock=__import__("time").time) as disc:
        reach = Reachability(home, disc, bootstrap=[relay.addrs()[0]], forced="private")
        async with trio.open_nursery() as nursery:
            await nursery.start(reach.run)
            assert reach.state.relays == [relay.peer_id]
            first = relay.nat.circuit.resource_manager.get_reservation(
                libp2p_host(home).get_id()).expires_at
            await trio.sleep(9)
            held = relay.nat.circuit.resource_manager.get_reservation(
                libp2p_host(home).get_id())
            assert held is not None and not held.is_expired() and held.expires_at > first
            assert reach.state.relays == [relay.peer_id]
            assert home.nat.advertised == [circuit_addr(relay.addrs()[0], home.peer_id)]
            nursery.cancel_scope.cancel()
