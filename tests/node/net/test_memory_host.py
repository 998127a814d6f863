"""The in-memory hosts behave like libp2p ones on every path the node's code uses: streams
reach handlers, frames keep their caps and errors, shares and refusals, resets, stalls."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.errors import PeerGone, PeerTimeout
from node.net.host import Stream
from node.net.limits import Limits
from node.net.memory import memory_network
from protocol import FrameTooLarge, Identity, wire

ECHO = "/test/echo/1.0.0"


async def echo(stream: Stream) -> None:
    frame = wire.expect(await stream.receive(), wire.Output)
    await stream.send(say(f"{frame.text} from {stream.remote_peer[:8]}"))


def say(text: str) -> wire.Output:
    return wire.Output(stream="stdout", text=text)


async def test_a_stream_reaches_the_other_hosts_handler_with_real_peer_ids() -> None:
    a_id, b_id = Identity(bytes([1]) * 32), Identity(bytes([2]) * 32)
    async with memory_network() as net:
        a, b = net.add(a_id), net.add(b_id, ip="10.0.0.2")
        seen: list[tuple[str, str]] = []

        async def handler(stream: Stream) -> None:
            seen.append((stream.remote_peer, stream.remote_ip))
            await echo(stream)

        b.handle(ECHO, handler)
        stream = await a.open_stream(b.peer_id, ECHO)
        assert (stream.remote_peer, stream.remote_ip) == (b_id.peer_id, "10.0.0.2")
        await stream.send(say("hello"))
        reply = wire.expect(await stream.receive_within(5, "reply"), wire.Output)
        assert reply.text == f"hello from {a_id.peer_id[:8]}"
        assert seen == [(a_id.peer_id, "127.0.0.1")]
        with pytest.raises(PeerGone, match=r"^peer 12D3KooW\w{8} closed the stream$"):
            await stream.receive()  # the handler returned: its stream was closed
        assert a.streams_opened == [(b.peer_id, ECHO)]
        assert b.addrs() == [f"/ip4/10.0.0.2/tcp/4001/p2p/{b.peer_id}"]


async def test_unknown_peers_protocols_and_hosts_taken_down_fail_like_a_dial() -> None:
    async with memory_network() as net:
        a, b = net.add(), net.add()
        stranger = Identity.generate().peer_id
        with pytest.raises(PeerGone, match=rf"^could not open {ECHO} to {stranger[:16]}: "
                           "no such host on this memory network$"):
            await a.open_stream(stranger, ECHO)
        with pytest.raises(PeerGone, match=rf"^could not open {ECHO} to {b.peer_id[:16]}: "
                           "protocol not supported$"):
            await a.open_stream(b.peer_id, ECHO)
        b.handle(ECHO, echo)
        net.take_down(b.peer_id)
        with pytest.raises(PeerGone, match="no such host"):
            await a.open_stream(b.peer_id, ECHO)
        with pytest.raises(PeerGone, match=rf"^could not ping {b.peer_id[:16]}"):
            await a.ping(b.peer_id)
        with pytest.raises(PeerGone, match=r"^could not reach /ip4/"):
            await a.connect(b.addrs()[0])
        net.bring_up(b.peer_id)  # the canary: the same host, up again, answers
        assert await a.connect(b.addrs()[0]) == b.peer_id
        assert await a.ping(b.peer_id, addrs=b.addrs()) == net.rtt_ms
        assert a.known_addrs(b.peer_id) == b.addrs() and a.known_addrs(stranger) == []
        await (await a.open_stream(b.peer_id, ECHO)).close()


async def test_a_handler_that_raises_resets_the_stream_and_is_counted() -> None:
    async with memory_network() as net:
        a, b = net.add(), net.add()

        async def broken(stream: Stream) -> None:
            await stream.receive()
            raise PeerTimeout("the handler gave up")

        b.handle(ECHO, broken)
        stream = await a.open_stream(b.peer_id, ECHO)
        await stream.send(say("x"))
        with pytest.raises(PeerGone, match="closed the stream"):
            await stream.receive_within(5, "reply")
        assert b.peer_errors.counts == {"timeout": 1}


async def test_a_frame_above_the_handlers_cap_is_refused_by_the_decoder() -> None:
    async with memory_network() as net:
        a, b = net.add(), net.add()
        got: list[BaseException] = []

        async def small(stream: Stream) -> None:
            try:
                await stream.receive()
            except FrameTooLarge as exc:
                got.append(exc)
                raise

        b.handle(ECHO, small, max_frame=64)
        stream = await a.open_stream(b.peer_id, ECHO)
        await stream.send(say("x" * 64))  # the frame is above 64 bytes
        with pytest.raises(PeerGone):
            await stream.receive_within(5, "reply")
        assert len(got) == 1 and str(got[0]).startswith("frame announces ")
        assert str(got[0]).endswith(" bytes, cap is 64")
        assert b.peer_errors.counts == {"too_large": 1}
        b.handle(ECHO, echo, max_frame=64)
        canary = await a.open_stream(b.peer_id, ECHO)  # a frame under the cap passes
        await canary.send(say("x"))
        assert wire.expect(await canary.receive_within(5, "reply"), wire.Output).text == (
            f"x from {a.peer_id[:8]}")


async def test_streams_above_a_peers_share_hear_the_refusal_and_are_closed() -> None:
    async with memory_network() as net:
        a, c = net.add(), net.add()
        b = net.add(limits=Limits(streams_per_peer=1))
        release = trio.Event()

        async def hold(stream: Stream) -> None:
            await release.wait()

        async def refuse(stream: Stream, why: str) -> None:
            await stream.send(wire.ErrorReply(code="busy", message=why))

        b.handle(ECHO, hold, refuse=refuse)
        first = await a.open_stream(b.peer_id, ECHO)
        await trio.testing.wait_all_tasks_blocked()
        second = await a.open_stream(b.peer_id, ECHO)
        refusal = wire.expect(await second.receive_within(5, "refusal"), wire.ErrorReply)
        assert (refusal.code, refusal.message) == ("busy",
                                                   f"more than 1 open {ECHO} streams from you")
        assert b.peer_errors.counts == {"limit": 1}
        other = await c.open_stream(b.peer_id, ECHO)  # another peer has its own share
        await trio.testing.wait_all_tasks_blocked()
        assert b.shares.open_count(ECHO, c.peer_id) == 1
        release.set()
        for s in (first, other):
            with pytest.raises(PeerGone):
                await s.receive_within(5, "end")
        assert b.shares.open_count(ECHO, a.peer_id) == 0


async def test_sending_to_a_peer_that_reads_nothing_stalls_into_a_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    async with memory_network(lockstep=True) as net:
        a, b = net.add(), net.add()
        b.handle(ECHO, lambda stream: trio.sleep_forever())
        stream = await a.open_stream(b.peer_id, ECHO)
        started = trio.current_time()
        with pytest.raises(PeerTimeout, match=rf"^peer {b.peer_id[:16]} read nothing for 7 s$"):
            await stream.send(say("x"), stall_s=7)
        assert trio.current_time() - started == pytest.approx(7)
        with pytest.raises(PeerTimeout, match=rf"^no reply from {b.peer_id[:16]} within 3 s$"):
            await stream.receive_within(3, "reply")


async def test_two_tasks_may_send_on_one_stream_at_once() -> None:
    async with memory_network() as net:
        a, b = net.add(), net.add()
        got: list[str] = []

        async def collect(stream: Stream) -> None:
            for _ in range(40):
                got.append(wire.expect(await stream.receive(), wire.Output).text)

        b.handle(ECHO, collect)
        stream = await a.open_stream(b.peer_id, ECHO)

        async def burst(tag: str) -> None:
            for i in range(20):
                await stream.send(say(f"{tag}{i}:" + "x" * 50_000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(burst, "a")
            nursery.start_soon(burst, "b")
        while len(got) < 40:
            await trio.sleep(0.01)
        assert sorted(t.partition(":")[0] for t in got) == sorted(
            [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])

