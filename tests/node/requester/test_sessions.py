"""The requester's session core over memory hosts, against a scripted provider and a real
SQLite ledger: a clean session is paid its final charge, a streamed call is held back by
credit, a wrong transcript or an overcharge is rejected, a provider that vanishes is paid
its last verified checkpoint, a constructor that raised is SessionFailed."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
import trio
import trio.testing

from ledger import Ledger
from node.errors import CallRaised, PeerGone, ResultRejected, SessionFailed, SessionLost
from node.net.host import Stream
from node.net.memory import MemoryHost, memory_network
from node.net.transfer import receive_file
from node.requester import records
from node.requester.payments import Payments
from node.requester.sessions import SessionRequest, open_session
from protocol import Identity, Price, Quote, Usage, open_signed, sign, wire
from protocol.sessions import CLASS_FILE, HOST_FILE, Calls, SessionResult, SessionSpec
from tests.node.requester.fake_provider import NOW_MS, FakeProvider

FUNDS = 10_000
Mode = Literal["ok", "wrong_transcript", "overcharge", "vanish", "fail_build"]


@dataclasses.dataclass
class FakeSessions(FakeProvider):
    """Serves sessions: `echo` replies its args, `count` streams int(args) items within
    credit, `fail` replies an error; a checkpoint after every reply."""

    mode: Mode = "ok"
    per_call: int = 100
    sent_items: list[int] = dataclasses.field(default_factory=list)
    credit_seen: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.host.handle(wire.SESSION_PROTOCOL, self.handle_session)

    def session_result(self, sid: str, requester: str, calls: Calls, status: str,
                       price: int, reason: str = "") -> bytes:
        head = calls.transcript.head
        if self.mode == "wrong_transcript" and status != "open":
            head = "ab" * 32
        return sign(SessionResult(
            job_id=sid, provider=self.peer_id, requester=requester, status=status,  # type: ignore[arg-type]
            calls=calls.transcript.calls, transcript=head,
            usage=Usage(wall_s=0.1, cpu_s=0.1, gpu_s=0.0, peak_memory_mb=10),
            price_charged=price, reason=reason, at=NOW_MS), self.identity).raw

    async def handle_session(self, stream: Stream) -> None:
        opened = wire.expect(await stream.receive(), wire.SessionOpen)
        signed = open_signed(opened.spec, SessionSpec)
        spec, sid = signed.message, signed.digest
        quote = Quote(job_id=sid, provider=self.peer_id, requester=spec.requester,
                      price=Price(), max_charge=self.max_charge, expires=NOW_MS + 30_000)
        await stream.send(wire.QuoteOffer(quote=sign(quote, self.identity).raw))
        wire.expect(await stream.receive(), wire.QuoteAccept)
        await stream.send(wire.Queued(position=0))
        await stream.send(wire.Accepted(job_id=sid, need=tuple(f.sha256 for f in spec.inputs),
                                        resume={}))
        with tempfile.TemporaryDirectory() as tmp:
            for f in spec.inputs:
                dest = Path(tmp) / f.name
                await receive_file(stream, name=f.name, size=f.size, sha256=f.sha256,
                                   dest=dest)
                self.inputs[f.name] = dest.read_bytes()
        calls = Calls(sid, spec.concurrency)
        await stream.send(wire.Output(stream="stdout", text="building\n"))
        if self.mode == "fail_build":
            await stream.send(wire.SessionEnd(result=self.session_result(
                sid, spec.requester, calls, "failed", 50, "ValueError: cannot build")))
            return
        await stream.send(wire.SessionReady(job_id=sid))
        price = 10
        left: dict[int, int] = {}
        while True:
            frame = await stream.receive()
            if isinstance(frame, wire.SessionClose):
                break
            if isinstance(frame, wire.Credit):
                self.credit_seen.append(frame.n)
                if frame.id in calls.open:  # else: it crossed the call's reply
                    calls.grant(frame.id, frame.n)
            elif isinstance(frame, wire.MethodCall):
                if self.mode == "vanish" and calls.transcript.calls >= 1:
                    raise PeerGone("the fake provider vanished")
                calls.call(frame.id, frame.method, frame.args, frame.window)
                if frame.method == "count":
                    left[frame.id] = int(frame.args)
                elif frame.method == "hang":
                    pass
                else:
                    error = frame.method == "fail"
                    value = b"boom" if error else frame.args
                    await stream.send(wire.Output(stream="stdout", text="called\n"))
                    calls.reply(frame.id, value, error)
                    await stream.send(wire.Reply(id=frame.id, value=value, error=error))
                    price += self.per_call
                    await stream.send(wire.Checkpoint(result=self.session_result(
                        sid, spec.requester, calls, "open", price)))
            for call_id in list(left):
                c = calls.open[call_id]
                while left[call_id] and c.credit > 0:
                    n = c.items_seen
                    calls.item(call_id, str(n).encode())
                    self.sent_items.append(n)
                    await stream.send(wire.Item(id=call_id, value=str(n).encode()))
                    left[call_id] -= 1
                if not left[call_id]:
                    del left[call_id]
                    calls.reply(call_id, b"", False)
                    await stream.send(wire.Reply(id=call_id, value=b"", error=False))
        charge = price + (self.max_charge if self.mode == "overcharge" else 0)
        await stream.send(wire.SessionEnd(result=self.session_result(
            sid, spec.requester, calls, "closed", charge)))


def request(tmp: Path, **kw: Any) -> SessionRequest:
    (tmp / CLASS_FILE).write_bytes(b"pickled class")
    (tmp / HOST_FILE).write_text("# host\n")
    return SessionRequest(class_file=tmp / CLASS_FILE, host_file=tmp / HOST_FILE, **kw)


@asynccontextmanager
async def setup(tmp_path: Path, **fake: Any
                ) -> AsyncIterator[tuple[Payments, FakeSessions, Ledger, MemoryHost]]:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(FUNDS)
        async with memory_network() as net:
            provider = FakeSessions(net.add(), **fake)
            host = net.add(me)
            yield Payments(ledger, host), provider, ledger, host
            await trio.testing.wait_all_tasks_blocked()


async def test_calls_keep_order_and_a_clean_close_pays_the_final_charge(tmp_path: Path) -> None:
    printed: list[tuple[str, str]] = []
    async with setup(tmp_path) as (pay, provider, ledger, host):
        async with open_session(host, provider.ad(), request(tmp_path), payments=pay,
                                echo=lambda s, t: printed.append((s, t)),
                                home=tmp_path / "home", clock=lambda: 1234.5) as session:
            assert [(r.status, r.file) for r in records.load(tmp_path / "home")] == [
                ("open", None)]
            assert await session.call("echo", b"one") == (b"one", False)
            assert await session.call("fail", b"") == (b"boom", True)
            await trio.testing.wait_all_tasks_blocked()
            assert session.checkpoint is not None
            assert session.checkpoint.message.price_charged == 210
        assert session.final is not None and session.final.message.status == "closed"
        [kept] = records.load(tmp_path / "home")
        assert (kept.session_id, kept.provider, kept.opened_at, kept.status, kept.calls,
                kept.charge) == (session.session_id, provider.ad().peer_id, 1234.5, "closed",
                                 2, 210)
        assert kept.file is not None and Path(kept.file).read_bytes() == session.final.raw
        assert ledger.balance().available == FUNDS - 210 and ledger.balance().escrow == 0
        assert set(provider.inputs) == {CLASS_FILE, HOST_FILE}
        assert printed == [("stdout", "building\n"), ("stdout", "called\n"),
                           ("stdout", "called\n")]


async def test_a_stream_runs_no_further_ahead_than_the_consumer_allows(
        tmp_path: Path) -> None:
    async with (setup(tmp_path) as (pay, provider, _, host),
                open_session(host, provider.ad(), request(tmp_path), payments=pay) as session):
        got = []
        async for item in session.stream("count", b"10", window=4):
            got.append(int(item))
            await trio.testing.wait_all_tasks_blocked()
            # what the provider sent is at most what we took plus the window
            assert len(provider.sent_items) <= len(got) + 4
        assert got == list(range(10))
        assert sum(provider.credit_seen) >= 6
        assert await session.call("echo", b"after") == (b"after", False)


async def test_leaving_a_stream_early_drains_it_and_the_session_goes_on(
        tmp_path: Path) -> None:
    async with (setup(tmp_path) as (pay, provider, _, host),
                open_session(host, provider.ad(), request(tmp_path), payments=pay) as session):
        async with aclosing(session.stream("count", b"30", window=2)) as items:
            async for item in items:
                assert item == b"0"
                break
        assert await session.call("echo", b"next") == (b"next", False)
        assert len(provider.sent_items) == 30


async def test_a_wrong_transcript_is_rejected_and_nothing_is_paid(tmp_path: Path) -> None:
    async with setup(tmp_path, mode="wrong_transcript") as (pay, provider, ledger, host):
        with pytest.raises(ResultRejected, match=r"transcript \(1 calls\) does not match "
                           r"ours \(1 calls\)"):
            async with open_session(host, provider.ad(), request(tmp_path),
                                    payments=pay, home=tmp_path / "home") as session:
                await session.call("echo", b"x")
        assert ledger.balance().available == FUNDS and ledger.balance().escrow == 0
        assert [(r.status, r.file) for r in records.load(tmp_path / "home")] == [
            ("rejected", None)]  # a wrong result is not kept as one


async def test_an_overcharge_is_rejected(tmp_path: Path) -> None:
    async with setup(tmp_path, mode="overcharge") as (pay, provider, ledger, host):
        with pytest.raises(ResultRejected, match="above its quote of"):
            async with open_session(host, provider.ad(), request(tmp_path),
                                    payments=pay) as session:
                await session.call("echo", b"x")
        assert ledger.balance().available == FUNDS


async def test_a_provider_that_vanishes_is_paid_its_last_checkpoint(tmp_path: Path) -> None:
    async with setup(tmp_path, mode="vanish") as (pay, provider, ledger, host):
        with pytest.raises(SessionLost, match=r"at most its last checkpoint is paid "
                           r"\(0\.000110 credits, 1 calls\)"):
            async with open_session(host, provider.ad(), request(tmp_path),
                                    payments=pay, home=tmp_path / "home") as session:
                assert await session.call("echo", b"x") == (b"x", False)
                await session.call("echo", b"y")
        assert ledger.balance().available == FUNDS - 110 and ledger.balance().escrow == 0
        [kept] = records.load(tmp_path / "home")  # the checkpoint it was paid
        assert (kept.status, kept.calls, kept.charge) == ("lost", 1, 110)
        assert session.checkpoint is not None and kept.file is not None
        assert Path(kept.file).read_bytes() == session.checkpoint.raw


async def test_a_constructor_that_raised_is_session_failed(tmp_path: Path) -> None:
    async with setup(tmp_path, mode="fail_build") as (pay, provider, ledger, host):
        with pytest.raises(SessionFailed, match="ended before it opened \\(failed\\): "
                           "ValueError: cannot build"):
            async with open_session(host, provider.ad(), request(tmp_path), payments=pay):
                pytest.fail("the session opened")
        assert ledger.balance().available == FUNDS - 50


async def test_a_cancelled_call_still_closes_and_settles_the_session(tmp_path: Path) -> None:
    async with setup(tmp_path) as (pay, provider, ledger, host):
        with trio.move_on_after(1) as scope:
            async with open_session(host, provider.ad(), request(tmp_path),
                                    payments=pay) as session:
                assert await session.call("echo", b"x") == (b"x", False)
                await session.call("hang", b"")
        assert scope.cancelled_caught
        assert session.final is not None and session.final.message.status == "closed"
        assert ledger.balance().available == FUNDS - 110 and ledger.balance().escrow == 0


def test_a_streamed_error_carries_its_value() -> None:
    assert CallRaised(b"x").value == b"x"
