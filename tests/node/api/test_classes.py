"""`@remote` classes: the decorator, and a session end to end over a memory network whose
provider relays the frames to the real session host script, run as a local process."""

from __future__ import annotations

import dataclasses
import struct
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from node.api.classes import RemoteClass, RemoteInstance, _echo
from node.api.remote import pickle_function, remote
from node.api.session_host import host_bytes
from node.errors import RemoteFunctionError, SessionFailed, UserError
from node.net.host import Stream
from node.net.memory import MemoryHost, memory_network
from node.net.transfer import receive_file
from node.requester.sessions import Echo, SessionRequest, open_session
from protocol import Identity, Price, Quote, Usage, open_signed, sign, wire
from protocol.sessions import CLASS_FILE, HOST_FILE, Calls, SessionResult, SessionSpec
from tests.node.requester.fake_provider import NOW_MS, FakeProvider


class _Chat:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting
        self.said: list[str] = []

    def reply(self, text: str) -> str:
        self.said.append(text)
        print("heard", text)
        return f"{self.greeting} {text} ({len(self.said)})"

    def tokens(self, text: str) -> Iterator[str]:
        yield from text.split()

    def fail(self) -> None:
        raise KeyError("missing")


class _Broken:
    def __init__(self) -> None:
        raise ValueError("no model here")


# mypy ignores what a class decorator returns, so typed code binds the RemoteClass itself
Chat = remote(cpus=1, idle_timeout=60, concurrency=1)(_Chat)
Broken = remote(_Broken)


def test_remote_on_a_class_gives_a_remote_class() -> None:
    assert isinstance(Chat, RemoteClass) and Chat.lease.idle_timeout == 60
    here = Chat.local("hi")
    assert here.reply("x") == "hi x (1)"
    with pytest.raises(UserError, match="idle_timeout are for classes"):
        remote(idle_timeout=5)(lambda: 1)
    with pytest.raises(UserError, match=r"concurrency must be 1 \.\. 16"):
        remote(concurrency=0)(type("C", (), {}))


@dataclasses.dataclass
class HostRelay(FakeProvider):
    """A provider that runs HOST_FILE as a local process and relays its frames."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.host.handle(wire.SESSION_PROTOCOL, self.handle_session)

    def result(self, sid: str, requester: str, calls: Calls,  # type: ignore[override]
               status: str, reason: str = "") -> bytes:
        return sign(SessionResult(
            job_id=sid, provider=self.peer_id, requester=requester, status=status,  # type: ignore[arg-type]
            calls=calls.transcript.calls, transcript=calls.transcript.head,
            usage=Usage(wall_s=0.1, cpu_s=0.1, gpu_s=0.0, peak_memory_mb=10),
            price_charged=0, reason=reason, at=NOW_MS), self.identity).raw

    async def handle_session(self, stream: Stream) -> None:
        signed = open_signed(wire.expect(await stream.receive(), wire.SessionOpen).spec,
                             SessionSpec)
        spec, sid = signed.message, signed.digest
        quote = Quote(job_id=sid, provider=self.peer_id, requester=spec.requester,
                      price=Price(), max_charge=0, expires=NOW_MS + 30_000)
        await stream.send(wire.QuoteOffer(quote=sign(quote, self.identity).raw))
        wire.expect(await stream.receive(), wire.QuoteAccept)
        await stream.send(wire.Accepted(job_id=sid, need=tuple(f.sha256 for f in spec.inputs),
                                        resume={}))
        calls = Calls(sid, spec.concurrency)
        with tempfile.TemporaryDirectory() as tmp:
            for f in spec.inputs:
                await receive_file(stream, name=f.name, size=f.size, sha256=f.sha256,
                                   dest=Path(tmp) / f.name)
            proc = await trio.lowlevel.open_process(
                [sys.executable, HOST_FILE], cwd=tmp, stdin=-1, stdout=-1)
            assert proc.stdin is not None and proc.stdout is not None
            out, buf = proc.stdout, bytearray()

            async def frame() -> tuple[bytes, bytes]:
                while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
                    data = await out.receive_some(65536)
                    assert data, "the host ended"
                    buf.extend(data)
                n = struct.unpack(">I", buf[:4])[0]
                body = bytes(buf[4:4 + n])
                del buf[:4 + n]
                return body[:1], body[1:]

            async def to_host(kind: bytes, body: bytes) -> None:
                assert proc.stdin is not None
                await proc.stdin.send_all(struct.pack(">I", len(body) + 1) + kind + body)

            try:
                while True:
                    kind, body = await frame()
                    if kind != b"O":
                        break
                    await stream.send(wire.Output(stream="stdout" if body[0] == 1 else
                                                  "stderr", text=body[1:].decode()))
                if kind == b"F":
                    await stream.send(wire.SessionEnd(result=self.result(
                        sid, spec.requester, calls, "failed", "the constructor raised")))
                    return
                await stream.send(wire.SessionReady(job_id=sid))

                async def from_host() -> None:
                    while True:
                        kind, body = await frame()
                        if kind == b"O":
                            await stream.send(wire.Output(
                                stream="stdout" if body[0] == 1 else "stderr",
                                text=body[1:].decode()))
                            continue
                        (call_id,) = struct.unpack(">I", body[:4])
                        if kind == b"I":
                            calls.item(call_id, body[4:])
                            await stream.send(wire.Item(id=call_id, value=body[4:]))
                        else:
                            calls.reply(call_id, body[5:], body[4] == 1)
                            await stream.send(wire.Reply(id=call_id, value=body[5:],
                                                         error=body[4] == 1))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(from_host)
                    while True:
                        got = await stream.receive()
                        if isinstance(got, wire.SessionClose):
                            break
                        if isinstance(got, wire.Credit):
                            if got.id in calls.open:
                                calls.grant(got.id, got.n)
                                await to_host(b"K", struct.pack(">IH", got.id, got.n))
                        elif isinstance(got, wire.MethodCall):
                            calls.call(got.id, got.method, got.args, got.window)
                            name = got.method.encode()
                            await to_host(b"C", struct.pack(">IHH", got.id, got.window,
                                                            len(name)) + name + got.args)
                    nursery.cancel_scope.cancel()
                await stream.send(wire.SessionEnd(result=self.result(
                    sid, spec.requester, calls, "closed")))
            finally:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def session_of(rc: RemoteClass[Any], *args: Any,
                     echo: Echo | None = None) -> AsyncIterator[RemoteInstance]:
    async with memory_network() as net:
        provider = HostRelay(net.add())
        host: MemoryHost = net.add(Identity.generate())
        with tempfile.TemporaryDirectory() as tmp:
            class_file, host_file = Path(tmp) / CLASS_FILE, Path(tmp) / HOST_FILE
            class_file.write_bytes(pickle_function(rc.cls, (rc.cls, args, {})))
            host_file.write_bytes(host_bytes())
            request = SessionRequest(class_file=class_file, host_file=host_file)
            def attempt() -> Any:
                return open_session(host, provider.ad(), request, echo=echo)

            async with RemoteInstance.held(rc.cls, attempt, restart=False) as instance:
                yield instance


async def test_a_session_keeps_state_streams_items_and_raises_remote_errors() -> None:
    async with session_of(Chat, "hello") as chat:
        assert await chat.reply.aio("a") == "hello a (1)"
        assert await chat.reply.aio(text="b") == "hello b (2)"
        assert [t async for t in chat.tokens.aio("one two three")] == ["one", "two", "three"]
        with pytest.raises(RemoteFunctionError, match="KeyError: 'missing'") as caught:
            await chat.fail.aio()
        assert isinstance(caught.value, KeyError)
        with pytest.raises(AttributeError, match="has no method 'nope'"):
            chat.nope  # noqa: B018
    assert chat.session.final is not None and chat.session.final.message.calls == 4


async def test_a_constructor_that_raises_is_session_failed() -> None:
    with pytest.raises(SessionFailed, match="the constructor raised"):
        async with session_of(Broken):
            pytest.fail("the session opened")


def test_the_sync_facade_holds_a_session_across_blocking_calls(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(RemoteClass, "_open", lambda self, args, kwargs: session_of(
        self, *args, echo=_echo))
    with Chat.session("hey") as chat:
        assert chat.reply("a") == "hey a (1)"
        assert list(chat.tokens("x y")) == ["x", "y"]
        assert chat.reply("b") == "hey b (2)"
        with pytest.raises(RemoteFunctionError, match="KeyError"):
            chat.fail()
        for token in chat.tokens("p q r"):
            assert token == "p"
            break
        assert chat.reply("c") == "hey c (3)"
    assert capsys.readouterr().out == "heard a\nheard b\nheard c\n"
    with pytest.raises(SessionFailed, match="the constructor raised"), Broken.session():
        pytest.fail("the session opened")


def test_sampled_replies_agree_on_equal_bytes_or_within_the_tolerance() -> None:
    import numpy as np

    from node.api.classes import _agree
    from node.api.values import WRAPPER, WRAPPER_NAME

    ns: dict[str, Any] = {"__name__": "offload_wrapper"}
    exec(compile(WRAPPER, WRAPPER_NAME, "exec"), ns)

    def v(value: Any) -> tuple[bytes, bool]:
        return ns["dumps"]({"v": 1, "ok": True, "value": value}), False

    assert _agree(v(6), v(6), None)
    assert not _agree(v(6), v(7), None)  # canary: exact by default
    assert not _agree(v(1.0), v(1.0 + 1e-9), None)
    assert _agree(v([1.0, {"a": 2.0}]), v([1.0 + 1e-9, {"a": 2.0}]), 1e-6)
    assert not _agree(v([1.0, {"a": 2.0}]), v([1.0, {"a": 2.1}]), 1e-6)
    assert _agree(v(np.ones(3)), v(np.ones(3) * (1 + 1e-9)), 1e-6)
    assert not _agree(v(np.ones(3)), v(np.ones(4)), 1e-6)
    assert not _agree(v(True), v(1), 1e-6)
    assert not _agree(v(6), (v(6)[0], True), 1e-6)  # a value never agrees with an error


def test_a_sample_share_outside_0_to_1_is_refused() -> None:
    with pytest.raises(UserError, match="sample is a share of calls"):
        remote(verify="sample", sample=0)(type("C", (), {}))
