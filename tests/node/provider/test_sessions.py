"""The provider's side of sessions: a host process built once, many calls over one stream
(in-memory hosts, a plain executor, and a tiny stdlib session host of the test's own)."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from ledger import Ledger
from node.net.gossip import Gossip
from node.net.host import Stream
from node.net.memory import MemoryHost, memory_network
from node.provider import sessions
from node.provider.cache import InputCache
from node.provider.daemon import Provider, ProviderConfig
from node.provider.executor import Executor, ExecutorSetup, PlainExecutor, SandboxExecutor
from node.provider.sessions import handle_session
from node.provider.telemetry import Telemetry
from protocol import InputFile, Quote, Resources, Runtime, open_signed, sign, wire
from protocol.codec import pack
from protocol.sessions import (
    CLASS_FILE,
    HOST_FILE,
    Call,
    SessionResult,
    SessionSpec,
    Transcript,
)

HOST = r'''
import os, pickle, struct, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer

def send(kind, body=b""):
    data = kind + body
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()

def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    data = inp.read(n)
    return data[:1], data[1:]

with open("session.pkl", "rb") as f:
    conf = pickle.load(f)
if "fail" in conf:
    send(b"F", conf["fail"])
    sys.exit(1)
total = conf.get("start", 0)
credit, pending = {}, []
send(b"R")
while True:
    fr = pending.pop(0) if pending else read()
    if fr is None:
        break
    kind, body = fr
    if kind == b"K":
        cid, n = struct.unpack(">IH", body[:6])
        credit[cid] = credit.get(cid, 0) + n
        continue
    cid, window, n = struct.unpack(">IHH", body[:8])
    method, args = body[8:8 + n].decode(), body[8 + n:]
    head = struct.pack(">I", cid)
    if method == "add":
        total += int(args)
        send(b"E", head + b"\x00" + str(total).encode())
    elif method == "count":
        credit[cid] = window
        for i in range(int(args)):
            while credit.get(cid, 0) <= 0:
                fr = read()
                if fr is None:
                    sys.exit(0)
                if fr[0] == b"K":
                    k, m = struct.unpack(">IH", fr[1][:6])
                    credit[k] = credit.get(k, 0) + m
                else:
                    pending.append(fr)
            credit[cid] -= 1
            send(b"I", head + str(i).encode())
        send(b"E", head + b"\x00done")
    elif method == "print":
        send(b"O", b"\x01" + args)
        send(b"E", head + b"\x00")
    elif method == "flood":
        for _ in range(int(args)):
            send(b"I", head + b"x")
        send(b"E", head + b"\x00")
    elif method == "sleep":
        time.sleep(float(args))
        send(b"E", head + b"\x00slept")
    elif method == "huge":
        out.write(struct.pack(">I", 2**30))
        out.flush()
        time.sleep(60)
    elif method == "die":
        print("dying", file=sys.stderr, flush=True)
        os._exit(3)
    else:
        send(b"E", head + b"\x01no such method")
'''
EMPTY = hashlib.sha256().digest()


@asynccontextmanager
async def provider_with(tmp_path: Path, executor: Executor, runtime: str = "python3"
                        ) -> AsyncIterator[tuple[Provider, MemoryHost, MemoryHost]]:
    async with memory_network() as net:
        phost, rhost = net.add(), net.add()
        setup = ExecutorSetup(executor=executor, report=None,
                              runtime=Runtime(name=runtime, version="3", packages={},
                                              digest=""), reason="test")
        ledger = Ledger.open(tmp_path / "ledger.db", phost.identity)
        provider = Provider(ProviderConfig(home=tmp_path), phost.identity, clock=time.time,
                            setup=setup, ledger=ledger,
                            cache=InputCache(tmp_path / "cache", max_bytes=10**6),
                            telemetry=Telemetry(), gossip=Gossip(None, time.time))
        phost.handle(wire.SESSION_PROTOCOL, lambda s: handle_session(provider, s))
        yield provider, phost, rhost
        ledger.close()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Provider, MemoryHost, MemoryHost]]:
    async with provider_with(tmp_path, PlainExecutor(tmp_path / "jobs")) as three:
        yield three


Pair = tuple[Provider, MemoryHost, MemoryHost]


async def open_session(phost: MemoryHost, rhost: MemoryHost, conf: dict[str, Any], *,
                       idle_s: int = 60, max_seconds: int = 60, concurrency: int = 2,
                       runtime: str = "python3") -> tuple[Stream, str, Quote]:
    """A session driven through quote and inputs, up to its host's start."""
    files = {CLASS_FILE: pickle.dumps(conf), HOST_FILE: HOST.encode()}
    spec = SessionSpec(
        requester=rhost.identity.peer_id, provider=phost.peer_id, runtime=runtime,
        inputs=tuple(InputFile(name=n, sha256=hashlib.sha256(d).hexdigest(), size=len(d))
                     for n, d in files.items()),
        resources=Resources(max_seconds=max_seconds), idle_timeout_s=idle_s,
        concurrency=concurrency, max_price=None, nonce=os.urandom(16),
        created_at=int(time.time() * 1000))
    raw = sign(spec, rhost.identity).raw
    sid = open_signed(raw, SessionSpec).digest
    by_digest = {hashlib.sha256(d).hexdigest(): (n, d) for n, d in files.items()}
    stream = await rhost.open_stream(phost.peer_id, wire.SESSION_PROTOCOL)
    with trio.fail_after(10):
        await stream.send(wire.SessionOpen(spec=raw))
        offer = await stream.receive()
        assert isinstance(offer, wire.QuoteOffer), offer
        quote = open_signed(offer.quote, Quote).message
        await stream.send(wire.QuoteAccept(job_id=sid))
        while isinstance(frame := await stream.receive(), wire.Queued):
            pass
        assert isinstance(frame, wire.Accepted), frame
        for d in frame.need:
            name, data = by_digest[d]
            await stream.send(wire.Chunk(name=name, offset=0, data=data, final=True))
    return stream, sid, quote


async def ready(phost: MemoryHost, rhost: MemoryHost, conf: dict[str, Any] | None = None,
                **kw: Any) -> tuple[Stream, str, Quote]:
    stream, sid, quote = await open_session(phost, rhost, conf or {}, **kw)
    with trio.fail_after(20):
        frame = await stream.receive()
    assert isinstance(frame, wire.SessionReady) and frame.job_id == sid, frame
    return stream, sid, quote


async def next_frame(stream: Stream) -> wire.Frame:
    """The next frame that is not a checkpoint."""
    with trio.fail_after(20):
        while isinstance(frame := await stream.receive(), wire.Checkpoint):
            pass
    return frame


async def the_end(stream: Stream, provider: Provider, sid: str, quote: Quote,
                  within: float = 20) -> SessionResult:
    with trio.fail_after(within):
        while not isinstance(frame := await stream.receive(), wire.SessionEnd):
            assert isinstance(frame, wire.Checkpoint | wire.Output), frame
    signed = open_signed(frame.result, SessionResult)
    result = signed.message
    assert result.job_id == sid and result.provider == provider.identity.peer_id
    assert 0 <= result.price_charged <= quote.max_charge
    with trio.fail_after(5):
        while provider.admission.in_use:
            await trio.sleep(0.02)  # the session's slot went back
    return result


async def call(stream: Stream, cid: int, method: str, args: bytes = b"",
               window: int = 0) -> wire.Frame:
    await stream.send(wire.MethodCall(id=cid, method=method, args=args, window=window))
    return await next_frame(stream)


async def test_state_lasts_across_calls_and_the_signed_transcript_is_the_callers(
        pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost, {"start": 10})
    mine = Transcript(sid)
    for cid, (n, total) in enumerate([(1, b"11"), (2, b"13"), (3, b"16")], start=1):
        reply = await call(stream, cid, "add", str(n).encode())
        assert isinstance(reply, wire.Reply) and (reply.id, reply.value) == (cid, total)
        assert not reply.error
        mine.add(cid, "add", str(n).encode(), EMPTY, total, False)
    printed = await call(stream, 4, "print", b"hello")
    assert isinstance(printed, wire.Output) and (printed.stream, printed.text) == (
        "stdout", "hello")
    reply = await next_frame(stream)
    assert isinstance(reply, wire.Reply) and reply.id == 4
    mine.add(4, "print", b"hello", EMPTY, b"", False)
    await stream.send(wire.SessionClose(abandon=False))
    result = await the_end(stream, provider, sid, quote)
    assert (result.status, result.calls, result.reason) == ("closed", 4, "")
    assert result.transcript == mine.head
    assert result.usage.wall_s > 0


async def test_a_streamed_call_never_runs_past_the_readers_credit(pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost)
    await stream.send(wire.MethodCall(id=1, method="count", args=b"6", window=2))
    book = Call(1, "count", b"6", 2)
    got: list[bytes] = []
    while len(got) < 6:
        for _ in range(2):
            item = await next_frame(stream)
            assert isinstance(item, wire.Item) and item.id == 1
            got.append(item.value)
            book.item(item.value)
        if len(got) < 6:
            with trio.move_on_after(0.5) as idle:
                early = await next_frame(stream)
            assert idle.cancelled_caught, f"{early} came before any credit"
            await stream.send(wire.Credit(id=1, n=2))
    assert got == [str(i).encode() for i in range(6)]  # in order
    reply = await next_frame(stream)
    assert isinstance(reply, wire.Reply) and reply.value == b"done"
    mine = Transcript(sid)
    mine.add(1, "count", b"6", book.items, b"done", False)
    await stream.send(wire.SessionClose(abandon=False))
    result = await the_end(stream, provider, sid, quote)
    assert result.status == "closed" and result.transcript == mine.head


async def test_an_open_session_sends_signed_checkpoints(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    provider, phost, rhost = pair
    monkeypatch.setattr(sessions, "CHECKPOINT_S", 0.3)
    stream, sid, quote = await ready(phost, rhost)
    assert isinstance(await call(stream, 1, "add", b"5"), wire.Reply)
    mine = Transcript(sid)
    mine.add(1, "add", b"5", EMPTY, b"5", False)
    with trio.fail_after(5):
        while not isinstance(frame := await stream.receive(), wire.Checkpoint):
            pass
    point = open_signed(frame.result, SessionResult).message
    assert (point.status, point.calls, point.transcript) == ("open", 1, mine.head)
    assert point.price_charged <= quote.max_charge
    await stream.send(wire.SessionClose(abandon=False))
    assert (await the_end(stream, provider, sid, quote)).status == "closed"


async def test_an_idle_session_ends_idle(pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost, idle_s=1)
    assert isinstance(await call(stream, 1, "add", b"1"), wire.Reply)
    started = time.monotonic()
    result = await the_end(stream, provider, sid, quote)
    assert result.status == "idle" and result.calls == 1
    assert 0.8 < time.monotonic() - started < 10


async def test_a_session_past_its_maximum_duration_ends_expired(pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost, max_seconds=2)
    result = await the_end(stream, provider, sid, quote)
    assert result.status == "expired"
    assert 1.9 <= result.usage.wall_s < 10


async def test_a_constructor_that_raises_ends_the_session_failed(pair: Pair) -> None:
    provider, phost, rhost = pair
    error = pack({"v": 1, "ok": False, "error": {"type": "ValueError",
                                                 "message": "bad seed", "traceback": ""}})
    stream, sid, quote = await open_session(phost, rhost, {"fail": error})
    result = await the_end(stream, provider, sid, quote)
    assert (result.status, result.reason, result.calls) == ("failed", "ValueError: bad seed", 0)


async def test_a_host_that_streams_beyond_credit_or_dies_fails_the_session(
        pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost)
    first = await call(stream, 1, "flood", b"3", window=1)
    assert isinstance(first, wire.Item) and first.value == b"x"  # within its credit
    result = await the_end(stream, provider, sid, quote)
    assert result.status == "failed"
    assert result.reason == ("the session host broke the protocol: an item of call 1 "
                             "beyond the reader's credit")
    stream, sid, quote = await ready(phost, rhost)
    await stream.send(wire.MethodCall(id=1, method="die", args=b"", window=0))
    result = await the_end(stream, provider, sid, quote)
    assert (result.status, result.reason) == ("failed",
                                              "the session host exited (code 3): dying")


async def test_an_oversized_host_frame_fails_the_session_before_it_is_read(
        pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost)
    await stream.send(wire.MethodCall(id=1, method="huge", args=b"", window=0))
    result = await the_end(stream, provider, sid, quote)
    assert (result.status, result.reason) == (
        "failed", "the session host broke the protocol: the host sent a frame of "
        "1073741824 bytes (1 .. 1049600 allowed)")


async def test_a_close_waits_for_the_calls_in_flight(pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, sid, quote = await ready(phost, rhost)
    await stream.send(wire.MethodCall(id=1, method="sleep", args=b"0.5", window=0))
    await stream.send(wire.SessionClose(abandon=False))
    reply = await next_frame(stream)
    assert isinstance(reply, wire.Reply) and reply.value == b"slept"
    result = await the_end(stream, provider, sid, quote)
    assert (result.status, result.calls) == ("closed", 1)


async def test_hostile_frames_are_refused_and_the_provider_serves_on(pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, _, _ = await ready(phost, rhost)
    assert isinstance(await call(stream, 1, "add", b"1"), wire.Reply)
    reused = await call(stream, 1, "add", b"1")
    assert isinstance(reused, wire.ErrorReply) and reused.code == "bad_request"
    assert reused.message == "call id 1 is not above the last one (1)"
    stream, _, _ = await ready(phost, rhost)
    await stream.send(wire.Credit(id=7, n=1))
    unknown = await next_frame(stream)
    assert isinstance(unknown, wire.ErrorReply) and unknown.code == "bad_request"
    assert unknown.message == "call 7 is not in flight"
    with trio.fail_after(5):
        while provider.admission.in_use:
            await trio.sleep(0.02)
    stream, sid, quote = await ready(phost, rhost)  # canary: a well-behaved one is served
    reply = await call(stream, 1, "add", b"2")
    assert isinstance(reply, wire.Reply) and reply.value == b"2"
    await stream.send(wire.SessionClose(abandon=False))
    assert (await the_end(stream, provider, sid, quote)).status == "closed"


async def test_a_requester_that_goes_away_frees_the_slot(pair: Pair) -> None:
    provider, phost, rhost = pair
    stream, _, _ = await ready(phost, rhost)
    assert provider.admission.in_use == 1
    await stream.reset()
    with trio.fail_after(10):
        while provider.admission.in_use:
            await trio.sleep(0.02)


async def test_a_session_runs_in_the_real_sandbox(sandbox: object, tmp_path: Path) -> None:
    from node.provider.sandbox.runner import Sandbox

    assert isinstance(sandbox, Sandbox)
    name = sandbox.runtime.name
    async with provider_with(tmp_path, SandboxExecutor(sandbox, None), name) as three:
        provider, phost, rhost = three
        stream, sid, quote = await ready(phost, rhost, {"start": 1}, runtime=name)
        reply = await call(stream, 1, "add", b"2")
        assert isinstance(reply, wire.Reply) and reply.value == b"3"
        await stream.send(wire.MethodCall(id=2, method="count", args=b"2", window=2))
        items = [await next_frame(stream), await next_frame(stream)]
        assert [i.value for i in items if isinstance(i, wire.Item)] == [b"0", b"1"]
        assert isinstance(await next_frame(stream), wire.Reply)
        await stream.send(wire.SessionClose(abandon=False))
        result = await the_end(stream, provider, sid, quote)
        assert (result.status, result.calls) == ("closed", 2), result.reason
        assert result.usage.cpu_s > 0  # the cgroup's count


async def test_a_session_takes_a_warm_worker_when_one_is_ready(sandbox: object,
                                                              tmp_path: Path) -> None:
    from node.provider.sandbox.pool import warm_pool
    from node.provider.sandbox.runner import Sandbox

    assert isinstance(sandbox, Sandbox)
    name = sandbox.runtime.name
    async with warm_pool(sandbox, 1) as pool:
        with trio.fail_after(120):
            while not pool.ready:
                await trio.sleep(0.05)
        async with provider_with(tmp_path, SandboxExecutor(sandbox, pool), name) as three:
            provider, phost, rhost = three
            stream, sid, quote = await ready(phost, rhost, {"start": 5}, runtime=name)
            assert pool.started == 2  # the ready worker was taken, and another boots
            reply = await call(stream, 1, "add", b"2")
            assert isinstance(reply, wire.Reply) and reply.value == b"7"
            await stream.send(wire.SessionClose(abandon=False))
            result = await the_end(stream, provider, sid, quote)
            assert (result.status, result.calls) == ("closed", 1), result.reason
