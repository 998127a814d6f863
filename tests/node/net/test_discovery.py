"""Ad keys, the ad validator, retry with backoff (pure), and the DHT server under a burst."""

from __future__ import annotations

import hashlib
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from node.net import compat_kad
from node.net.compat_kad import DhtRequestFailed
from node.net.discovery import (
    Backoff,
    RemoteAdError,
    _make_validator,
    ad_key,
    open_ad,
    open_discovery,
    rendezvous_key,
    retry,
)
from node.net.host import libp2p_host, open_host
from protocol import CapacityAd, Expired, Identity, sign
from tests.factories import cpu_device, plain_ad

NOW_MS = 1_800_000_000_000


def make_ad(identity: Identity, *, seq: int = 1, expires: int = NOW_MS + 120_000) -> CapacityAd:
    return plain_ad(peer_id=identity.peer_id, addrs=("/ip4/127.0.0.1/tcp/4001",),
                    devices=(cpu_device(model="test", memory_mb=1024),), cpus=2,
                    memory_mb=1024, seq=seq, expires=expires)


def test_ad_keys_fit_the_dht_limit_and_rendezvous_is_a_cid() -> None:
    for _ in range(20):
        key = ad_key(Identity.generate().peer_id)
        assert key.startswith("/offload/") and len(key.encode()) <= 50
    from libp2p.kad_dht.kad_dht import _encode_key

    mh = _encode_key(rendezvous_key("cpu"))  # parsed as a CID, not raw UTF-8
    assert mh == bytes([0x12, 0x20]) + hashlib.sha256(b"offload/providers/cpu/v1").digest()
    assert rendezvous_key("cpu") != rendezvous_key("gpu")


def test_open_ad_accepts_a_fresh_ad_under_its_own_key() -> None:
    me = Identity.generate()
    signed = sign(make_ad(me), me)
    assert open_ad(ad_key(me.peer_id), signed.raw, now_ms=NOW_MS).message.peer_id == me.peer_id


def test_open_ad_refuses_a_foreign_key_and_an_expired_ad() -> None:
    me, other = Identity.generate(), Identity.generate()
    signed = sign(make_ad(me), me)
    with pytest.raises(RemoteAdError, match="stored under a foreign key"):
        open_ad(ad_key(other.peer_id), signed.raw, now_ms=NOW_MS)
    with pytest.raises(Expired, match="expired"):
        open_ad(ad_key(me.peer_id), signed.raw, now_ms=NOW_MS + 121_000)


def test_registered_validator_rejects_bad_values_and_selects_the_highest_seq() -> None:
    me = Identity.generate()
    validator = _make_validator(lambda: NOW_MS / 1000)
    key = ad_key(me.peer_id)
    old, new = sign(make_ad(me, seq=5), me).raw, sign(make_ad(me, seq=9), me).raw
    validator.validate(key, new)
    with pytest.raises(ValueError, match="invalid offload ad"):
        validator.validate(key, b"\x93garbage")
    forged = bytearray(new)
    forged[-10] ^= 1
    with pytest.raises(ValueError, match="invalid offload ad"):
        validator.validate(key, bytes(forged))
    assert validator.select(key, [old, new]) == 1
    assert validator.select(key, [new, old]) == 0
    assert validator.select(key, [b"junk", old]) == 1


# --- retry with backoff (pure: injected clock, sleep and randomness) ---------------------

class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def flaky(fails: int, *, retryable: bool = True, cost_s: float = 0.0,
          t: FakeTime | None = None) -> tuple[Callable[[float], Awaitable[str]], list[float]]:
    """An op that fails `fails` times, then answers; it records the time it was given."""
    given: list[float] = []

    async def op(left: float) -> str:
        given.append(left)
        if t is not None:
            t.now += cost_s
        if len(given) <= fails:
            raise DhtRequestFailed(f"reset #{len(given)}", retryable=retryable)
        return "ok"

    return op, given


async def test_retry_recovers_from_resets_with_growing_jittered_waits() -> None:
    t = FakeTime()
    op, given = flaky(4)
    policy = Backoff(base_s=0.1, factor=2.0, cap_s=0.5, attempts=6)
    assert await retry(op, policy=policy, deadline=t.now + 30, rng=random.Random(1),
                       what="x", clock=t.clock, sleep=t.sleep) == "ok"
    assert len(given) == 5 and len(t.sleeps) == 4
    ceilings = [0.1, 0.2, 0.4, 0.5]  # capped
    for wait, ceiling in zip(t.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    # the op is told how much time is left, so its own timeout never passes the deadline
    assert given[0] == 30 and given == sorted(given, reverse=True)


async def test_retry_waits_differ_between_requesters() -> None:
    waits = []
    for seed in (1, 2):
        t = FakeTime()
        op, _ = flaky(3)
        await retry(op, policy=Backoff(), deadline=t.now + 30, rng=random.Random(seed),
                    what="x", clock=t.clock, sleep=t.sleep)
        waits.append(t.sleeps)
    assert waits[0] != waits[1]


async def test_retry_gives_up_at_the_attempt_bound_with_the_last_error() -> None:
    t = FakeTime()
    op, given = flaky(99)
    with pytest.raises(DhtRequestFailed, match="reset #3"):
        await retry(op, policy=Backoff(attempts=3), deadline=t.now + 30,
                    rng=random.Random(1), what="x", clock=t.clock, sleep=t.sleep)
    assert len(given) == 3 and len(t.sleeps) == 2


async def test_retry_never_sleeps_past_the_deadline() -> None:
    t = FakeTime()
    op, given = flaky(99, cost_s=0.3, t=t)
    start = t.now
    with pytest.raises(DhtRequestFailed, match="reset"):
        await retry(op, policy=Backoff(base_s=0.2, cap_s=1.0, attempts=50), deadline=start + 2,
                    rng=random.Random(1), what="x", clock=t.clock, sleep=t.sleep)
    assert t.now <= start + 2 + 0.3  # the last attempt may take its own time, no more
    assert 2 <= len(given) < 50


async def test_retry_does_not_repeat_a_permanent_failure_or_start_past_the_deadline() -> None:
    t = FakeTime()
    op, given = flaky(99, retryable=False)
    with pytest.raises(DhtRequestFailed, match="reset #1"):
        await retry(op, policy=Backoff(), deadline=t.now + 30, rng=random.Random(1),
                    what="x", clock=t.clock, sleep=t.sleep)
    assert len(given) == 1 and not t.sleeps
    op, given = flaky(0)
    with pytest.raises(DhtRequestFailed, match="no time left before the deadline"):
        await retry(op, policy=Backoff(), deadline=t.now - 1, rng=random.Random(1),
                    what="x", clock=t.clock, sleep=t.sleep)
    assert given == []


# --- the DHT server under a burst (real libp2p hosts on loopback, one process) -----------

async def _hold_silent_streams(host: Any, server: Any, n: int) -> list[Any]:
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.common import PROTOCOL_ID

    return [await libp2p_host(host).new_stream(server, [TProtocol(PROTOCOL_ID)]) for _ in range(n)]


async def test_silent_dht_streams_neither_lock_out_others_nor_hold_slots_forever() -> None:
    """libp2p serves 12 DHT streams at once and resets the rest: 12 silent streams of one
    peer kept every other peer's lookups out. Now a peer holds at most `per_peer` slots,
    others wait briefly for a slot, and a stream's slot returns after `stream_s`."""
    from libp2p.peer.id import ID

    me = Identity.generate()
    signed = sign(make_ad(me, expires=int(time.time() * 1000) + 120_000), me)
    async with open_host(me, ["/ip4/127.0.0.1/tcp/0"]) as server_host, \
            open_discovery(server_host, server=True, clock=time.time) as server:
        fair = compat_kad.fair_dht_inbound(server.dht, slots=16, per_peer=8, wait_s=3.0,
                                       stream_s=1.5)
        await server.dht.put_value(ad_key(me.peer_id), signed.raw)
        server_id = ID.from_base58(me.peer_id)
        async with open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as a, \
                open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as b, \
                open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as c, \
                open_discovery(c, server=False, clock=time.time) as client:
            for h in (a, b, c):
                await h.connect(server_host.addrs()[0])
            held = (await _hold_silent_streams(a, server_id, 8)
                    + await _hold_silent_streams(b, server_id, 8))
            await trio.sleep(0.3)
            assert fair.refused == 0 and sum(fair.open.values()) == 16  # all slots taken
            # a ninth stream of one peer is refused at once, not queued
            from libp2p.host.exceptions import StreamFailure

            with pytest.raises(StreamFailure), trio.fail_after(2):
                await _hold_silent_streams(a, server_id, 1)
            assert fair.refused == 1
            # another peer's request waits for a slot and is answered once the silent
            # streams' time is up
            with trio.fail_after(10):
                value = await compat_kad.kad_get_value(client.dht, server_id,
                                                   ad_key(me.peer_id), timeout=8)
            assert value == signed.raw
            with trio.fail_after(3):  # every silent stream lost its slot
                while fair.open:
                    await trio.sleep(0.05)
            for stream in held:  # ... and was ended by the server
                with trio.fail_after(2):
                    try:
                        assert await stream.read(1) == b""
                    except Exception:
                        pass


async def test_search_names_providers_it_could_not_reach_apart_from_gone_ones() -> None:
    """A provider whose DHT requests all reset is "unreachable" (the answer is incomplete);
    one whose address refuses connections is "gone"; the good provider's ad is returned."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.common import PROTOCOL_ID
    from libp2p.kad_dht.kad_dht import _encode_key
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    me, hostile, dead = Identity.generate(), Identity.generate(), Identity.generate()
    signed = sign(make_ad(me, expires=int(time.time() * 1000) + 120_000), me)
    resets = 0

    async def reset_all(stream: Any) -> None:
        nonlocal resets
        resets += 1
        await stream.reset()

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        dead_addr = f"/ip4/127.0.0.1/tcp/{closed.getsockname()[1]}"
    async with open_host(me, ["/ip4/127.0.0.1/tcp/0"]) as server_host, \
            open_discovery(server_host, server=True, clock=time.time) as server, \
            open_host(hostile, ["/ip4/127.0.0.1/tcp/0"]) as bad:
        libp2p_host(bad).set_stream_handler(TProtocol(PROTOCOL_ID), reset_all)
        await server.advertise(signed, ["cpu"])
        key = _encode_key(rendezvous_key("cpu"))
        for who, addr in ((hostile, bad.addrs()[0].rpartition("/p2p/")[0]), (dead, dead_addr)):
            server.dht.provider_store.add_provider(
                key, PeerInfo(ID.from_base58(who.peer_id), [Multiaddr(addr)]))
        async with open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as c, \
                open_discovery(c, server=False, clock=time.time) as client:
            assert await client.bootstrap([server_host.addrs()[0]])
            with trio.fail_after(20):
                found = await client.search("cpu", timeout=8)
    assert [a.message.peer_id for a in found.ads] == [me.peer_id]
    assert found.found == 3
    assert found.unreachable == (hostile.peer_id,)
    assert found.gone == 1 and found.invalid == 0
    shortfall = found.shortfall()
    assert shortfall is not None and shortfall.startswith(
        "1 of 3 providers found in the DHT could not be reached (their ads could not be "
        "fetched)")
    assert Backoff().attempts <= resets <= 2 * Backoff().attempts, resets  # bounded retries
