"""Sessions against real provider processes: an object built once in a tier-A sandbox
serves many calls, streams generator items as they are made, ends at its idle timeout,
and settles what the signed session result says; a provider killed mid-stream is a
SessionLost within a bounded time."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from node.api.classes import RemoteClass
from node.api.remote import remote
from node.api.values import RemoteFunctionError
from node.errors import SessionLost
from tests.e2e.conftest import Network

PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"


class _Counter:
    def __init__(self, start: int) -> None:
        self.n = start
        self.pid = os.getpid()

    def add(self, k: int) -> int:
        self.n += k
        print("now", self.n)
        return self.n

    def where(self) -> int:
        return self.pid

    def count(self, n: int, pause: float = 0.0) -> Iterator[int]:
        for i in range(n):
            time.sleep(pause)
            yield i

    def fail(self) -> None:
        raise KeyError("nope")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("sessions"))
    priced = network.root / "priced.toml"
    priced.write_text(PRICED)
    try:
        network.start_provider(extra=["--config", str(priced), "--warm", "0"])
        network.offload("ledger", "deposit", "5", home="req", check=True)
        yield network
    finally:
        network.close()


def counter(net: Network, **lease: Any) -> RemoteClass[_Counter]:
    settings: dict[str, Any] = {"home": net.root / "req", "config": os.devnull,
                                "bootstrap": [net.providers[0]["addr"]], "echo": False}
    return remote(cpus=1, max_price=1.0, **settings, **lease)(_Counter)


def ledger(net: Network) -> dict[str, float]:
    res = net.offload("ledger", "balance", "--json", home="req", check=True)
    return {k: float(v) for k, v in json.loads(res.stdout).items()}


def test_state_stays_on_the_provider_items_stream_in_order_and_the_lease_is_paid(
        net: Network) -> None:
    before = ledger(net)
    Counter = counter(net, idle_timeout=60, max_duration=300)
    with Counter.session(10) as c:
        assert c.add(1) == 11 and c.add(2) == 13  # one object, kept between calls
        assert c.where() != os.getpid()
        assert list(c.count(20)) == list(range(20))
        with pytest.raises(RemoteFunctionError) as caught:
            c.fail()
        assert isinstance(caught.value, KeyError)
        assert c.add(0) == 13  # an exception does not end the session
        final_calls = c.session.calls.transcript.calls
    signed = c.session.final
    assert signed is not None
    result = signed.message
    assert result.status == "closed" and result.calls == final_calls == 6
    assert result.transcript == c.session.calls.transcript.head
    assert 0 < result.price_charged <= c.session.quote.max_charge
    after = ledger(net)  # conservation: what left the account is what was charged
    charged = result.price_charged / 1e6
    assert round(before["available"] - after["available"], 6) == round(charged, 6)
    assert round(after["paid"] - before["paid"], 6) == round(charged, 6)
    assert after["escrow"] == before["escrow"] == 0.0


def test_an_async_session_streams_items_as_they_are_made(net: Network) -> None:
    Counter = counter(net, idle_timeout=60, max_duration=300)

    async def go() -> list[float]:
        seen: list[float] = []
        async with Counter.session.aio(0) as c:
            assert await c.add.aio(5) == 5
            start = trio.current_time()
            async for _ in c.count.aio(4, 0.5):
                seen.append(trio.current_time() - start)
        return seen

    seen = trio.run(go)
    assert len(seen) == 4
    assert seen[0] < seen[-1] - 1.0  # the first item came before the generator finished


def test_a_session_left_idle_ends_on_the_provider_and_the_next_call_says_so(
        net: Network) -> None:
    Counter = counter(net, idle_timeout=2, max_duration=300)
    with Counter.session(1) as c:
        assert c.add(1) == 2
        time.sleep(5)
        with pytest.raises(SessionLost):
            c.add(1)
    final = c.session.final or c.session.checkpoint
    assert final is not None and final.message.status in ("idle", "open")


def test_a_provider_killed_mid_stream_is_a_session_lost_within_bounds(
        tmp_path: Any) -> None:
    network = Network(tmp_path)
    try:
        p = network.start_provider(extra=["--warm", "0"])
        Counter = remote(cpus=1, idle_timeout=60, max_duration=300, echo=False,
                         home=network.root / "req", config=os.devnull,
                         bootstrap=[p["addr"]])(_Counter)
        got: list[int] = []
        started = time.monotonic()
        with pytest.raises(SessionLost), Counter.session(0) as c:
            for i in c.count(1000, 0.05):
                got.append(i)
                if i == 5:
                    os.killpg(p["proc"].pid, signal.SIGKILL)
                    started = time.monotonic()
        assert got[:6] == list(range(6))
        assert time.monotonic() - started < 60
    finally:
        network.close()


async def test_hostile_session_frames_get_named_errors_and_the_provider_serves_on(
        net: Network) -> None:
    from node.net.client import open_client
    from protocol import Identity, wire
    from protocol.framing import HEADER

    p = net.providers[0]
    async with open_client(Identity.generate(), [p["addr"]]) as (host, _):
        cases = [
            (HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1", "bad_request"),
            (wire.encode(wire.MethodCall(id=1, method="add", args=b"", window=0)),
             "bad_request"),  # a call before any session opened
            (wire.encode(wire.SessionOpen(spec=b"\x80")), "bad_request"),
            (HEADER.pack(64 * 1024 * 1024) + b"x" * 100, "too_large"),
        ]
        for payload, code in cases:
            stream = await host.open_stream(p["peer_id"], wire.SESSION_PROTOCOL,
                                            addrs=p["addrs"])
            try:
                await stream._raw.write(payload)
                reply = await stream.receive_within(10, "reply")
            finally:
                await stream.close()
            assert isinstance(reply, wire.ErrorReply) and reply.code == code, (payload[:20],
                                                                                reply)
    Counter = counter(net, idle_timeout=60, max_duration=300)
    async with Counter.session.aio(3) as c:  # canary: a well-formed session is served
        assert await c.add.aio(1) == 4
