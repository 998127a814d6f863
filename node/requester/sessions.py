"""The requester side of a session (`/offload/session/1.0.0`, protocol/sessions.py): open
a lease on one provider, call methods of the object built there, close and settle.

`open_session` signs the SessionSpec, checks the quote (as jobs do), escrows its maximum,
uploads the inputs and waits until the object is built; then `RemoteSession.call` and
`RemoteSession.stream` send calls, and one reader task hands each frame to the call it
belongs to. Our own `Calls` book keeps ids, concurrency and credit (a streamed item beyond
what we granted is the provider's breach) and the transcript every signed SessionResult
must match. On the way out the session is closed (bounded, shielded) and settled once:
the verified final result is paid; a wrong one is rejected (nothing paid); a provider that
vanished is paid its last verified checkpoint, or nothing. With a home, the session is
recorded under it (records.py: open once built; at settle, the signed result it paid).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import trio

from ledger import LedgerError, RefundReason
from node.errors import (
    CallRaised,
    PeerTimeout,
    PriceRefused,
    RemoteError,
    ResultRejected,
    SessionFailed,
    SessionLost,
    UserError,
    sole_error,
)
from node.net.guard import GuardedStream, guarded
from node.net.host import Host
from node.net.transfer import send_file, transfer_deadline
from node.requester import events, records
from node.requester.events import Emit, ignore
from node.requester.exchange import (
    GRACE_S,
    HEARTBEAT_GRACE_S,
    QUOTE_S,
    JobRequest,
    check_quote,
    input_files,
    raise_if_error,
    refund_reason,
    tell,
    within,
)
from node.requester.payments import Failure, Payments
from node.requester.verify import verify_session_bytes
from protocol import (
    CapacityAd,
    InputFile,
    Price,
    ProtocolError,
    Quote,
    Resources,
    Signed,
    sign,
    wire,
)
from protocol.exchange import SESSION
from protocol.messages import check_method
from protocol.sessions import (
    CLASS_FILE,
    HOST_FILE,
    MAX_VALUE_BYTES,
    Calls,
    SessionResult,
    SessionSpec,
    Transcript,
)
from scheduler.pricing import credits

log = logging.getLogger(__name__)

WINDOW = 8
"""Items a streamed call may run ahead of its reader, by default."""
SILENCE_S = 35.0
"""The longest silence while a call is in flight: providers checkpoint every 10 s."""
CLOSE_S = 30.0
"""The longest wait for the final result after `session_close` (calls in flight included)."""
Echo = Callable[[Literal["stdout", "stderr"], str], None]
"""Where the remote prints go (stream, text)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRequest:
    """What to build: `class_file` (named CLASS_FILE: the pickled class and constructor
    arguments), `host_file` (named HOST_FILE: node.api.session_host.HOST), more files."""

    class_file: Path
    host_file: Path
    files: Sequence[Path] = ()
    resources: Resources = dataclasses.field(default_factory=Resources)
    """`max_seconds` is the lease's maximum duration."""
    idle_timeout_s: int = 300
    concurrency: int = 1
    max_price: int | None = None
    runtime: str = "python3"
    caps: Price | None = None


def session_files(request: SessionRequest) -> list[tuple[InputFile, Path]]:
    """CLASS_FILE, HOST_FILE, then the extra files (named and checked as a job's)."""
    if (request.class_file.name, request.host_file.name) != (CLASS_FILE, HOST_FILE):
        raise UserError(f"a session's first inputs must be named {CLASS_FILE} and "
                        f"{HOST_FILE}, not {request.class_file.name} and "
                        f"{request.host_file.name}")
    return input_files(JobRequest(script=request.class_file,
                                  files=(request.host_file, *request.files)))


def judge(signed: Signed[SessionResult], *, session_id: str, provider: str,
          requester: str, transcript: Transcript, max_charge: int, final: bool) -> str:
    """What is wrong with a session result we opened ("" when nothing): ids, status, our
    own transcript (head and calls), the quote's cap."""
    r = signed.message
    if (r.job_id, r.provider, r.requester) != (session_id, provider, requester):
        return "the session result is for another session, provider or requester"
    if final == (r.status == "open"):
        return (f"a {'final' if final else 'checkpoint'} session result has status "
                f"{r.status!r}")
    if (r.transcript, r.calls) != (transcript.head, transcript.calls):
        return (f"the provider's transcript ({r.calls} calls) does not match ours "
                f"({transcript.calls} calls): it signed other calls or replies than we got")
    if r.price_charged > max_charge:
        return (f"the provider charged {credits(r.price_charged)} credits, above its quote "
                f"of {credits(max_charge)}")
    return ""


_Event = tuple[Literal["item"], bytes] | tuple[Literal["reply"], bytes, bool]


class RemoteSession:
    """One open session: `call` and `stream` methods of the object on the provider."""

    def __init__(self, stream: GuardedStream, *, session_id: str, ad: CapacityAd,
                 requester: str, concurrency: int, payments: Payments, emit: Emit = ignore,
                 echo: Echo | None = None, home: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.link = stream
        self.session_id = session_id
        self.ad = ad
        self.requester = requester
        self.payments = payments
        self.emit = emit
        self.echo = echo
        self.quote: Quote | None = None
        self.calls = Calls(session_id, concurrency)
        self.checkpoint: Signed[SessionResult] | None = None
        """The last checkpoint we verified: what a vanished provider is paid."""
        self.final: Signed[SessionResult] | None = None
        self._evidence: tuple[Signed[SessionResult], str] | None = None
        self._failure: BaseException | None = None
        self._expired = False
        self._outvoted = ""
        self._slots = trio.Semaphore(concurrency)
        self._send_lock = trio.Lock()
        self._waiting: dict[int, trio.MemorySendChannel[_Event]] = {}
        self._next_id = 0
        self._closing = False
        self._ended = trio.Event()
        self._settled = False
        self._reader = trio.CancelScope(shield=True)
        self.home = home
        """Where the session is recorded (records.py); None: nowhere."""
        self.clock = clock
        self.opened_at = clock()
        self._recorded = False

    @property
    def who(self) -> str:
        return f"provider {self.ad.peer_id[:16]}"

    # -- opening -----------------------------------------------------------------------
    async def _open(self, spec_raw: bytes, request: SessionRequest,
                    files: list[tuple[InputFile, Path]]) -> None:
        """Quote, escrow, inputs, and the object built (or SessionFailed)."""
        sid, who = self.session_id, self.who
        with within(QUOTE_S, f"{who} sent no quote for session {sid[:12]}"):
            await self._send(wire.SessionOpen(spec=spec_raw))
            reply = await self.link.receive()
        raise_if_error(reply)
        assert isinstance(reply, wire.QuoteOffer)  # the exchange table allows no other
        check = JobRequest(script=request.class_file, max_price=request.max_price,
                           caps=request.caps)
        try:
            quote = check_quote(reply.quote, job_id=sid, ad=self.ad,
                                requester=self.requester, request=check)
        except PriceRefused as exc:
            await tell(self.link, wire.ErrorReply(code="price", message=str(exc)[:1000]))
            raise
        self.emit(events.Quoted(job_id=sid, provider=self.ad.peer_id,
                                max_charge=quote.max_charge))
        try:
            await self.payments.lock(sid, self.ad.peer_id, quote.max_charge)
        except LedgerError as exc:
            await tell(self.link, wire.ErrorReply(code="price",
                                                     message=f"requester: {exc}"[:1000]))
            raise
        self.quote = quote
        slot_s = request.resources.max_seconds + GRACE_S
        with within(slot_s, f"{who} gave session {sid[:12]} no slot"):
            await self._send(wire.QuoteAccept(job_id=sid))
            while True:
                reply = await self.link.receive_within(HEARTBEAT_GRACE_S,
                                                         "slot or place in line")
                raise_if_error(reply)
                if not isinstance(reply, wire.Queued):
                    break
        assert isinstance(reply, wire.Accepted)
        if reply.job_id != sid:
            raise ResultRejected("the provider acknowledged a different session id")
        by_digest = {f.sha256: (f, p) for f, p in files}
        if any(d not in by_digest for d in reply.need):
            raise ResultRejected("the provider asked for a file that is not part of the "
                                 "session")
        sending = [(by_digest[d], reply.resume.get(d, 0)) for d in reply.need]
        with transfer_deadline(sum(f.size - at for (f, _), at in sending),
                               f"the inputs of session {sid[:12]} to {who}"):
            for (f, path), at in sending:
                self.emit(events.Uploading(job_id=sid, provider=self.ad.peer_id,
                                           name=f.name, size=f.size, offset=at))
                async with self._send_lock:
                    await send_file(self.link, f.name, path, offset=at)
        with within(slot_s, f"{who} did not build the object of session {sid[:12]}"):
            while True:
                frame = await self.link.receive()
                raise_if_error(frame)
                if isinstance(frame, wire.Output):
                    self._output(frame)
                    continue
                break
        if isinstance(frame, wire.SessionEnd):
            self._ended.set()
            self.final = self._verify(frame.result, final=True)
            r = self.final.message
            raise SessionFailed(f"the session on {who} ended before it opened "
                                f"({r.status}): {r.reason or 'no reason given'}")
        assert isinstance(frame, wire.SessionReady)
        if frame.job_id != sid:
            raise ResultRejected("the provider opened a different session id")
        if self.home is not None:
            self._recorded = True
            await trio.to_thread.run_sync(records.record_open, self.home, sid,
                                          self.ad.peer_id, self.opened_at)

    # -- calls -------------------------------------------------------------------------
    async def call(self, method: str, args: bytes) -> tuple[bytes, bool]:
        """Call `method` with `args` (a cloudpickle of (args, kwargs)): the reply's value
        and whether it is an error (both as the provider's strict msgpack)."""
        async with self._slots:
            _, events_ = await self._start(method, args, 0)
            with events_:
                while True:
                    event = await self._next(events_)
                    if event[0] == "reply":
                        return event[1], event[2]

    async def stream(self, method: str, args: bytes, *,
                     window: int = WINDOW) -> AsyncGenerator[bytes, None]:
        """The items a generator method yields, as they come; credit is granted only for
        items the consumer took, so a slow consumer stops the producer. A reply that is
        an error ends it with `CallRaised` carrying the value. Leaving early drains the
        rest of the call (the protocol has no cancel)."""
        async with self._slots:
            call_id, events_ = await self._start(method, args, window)
            with events_:
                taken, done = 0, False
                try:
                    while True:
                        event = await self._next(events_)
                        if event[0] == "reply":
                            done = True
                            if event[2]:
                                raise CallRaised(event[1])
                            return
                        yield event[1]
                        taken += 1
                        if taken >= max(1, window // 2):
                            await self._grant(call_id, taken)
                            taken = 0
                finally:
                    if not done and self._failure is None:
                        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_S):
                            await self._drain(call_id, events_, taken)

    async def _drain(self, call_id: int, events_: trio.MemoryReceiveChannel[_Event],
                     taken: int) -> None:
        """The rest of a stream the consumer left: items taken and dropped (credit as
        ever, so the channel stays within its window) until the reply."""
        try:
            await self._grant(call_id, taken)
            while (await self._next(events_))[0] == "item":
                await self._grant(call_id, 1)
        except RemoteError:
            return

    async def _start(self, method: str, args: bytes, window: int
                     ) -> tuple[int, trio.MemoryReceiveChannel[_Event]]:
        try:
            check_method(method)
        except ProtocolError as exc:
            raise UserError(f"{exc}: only public methods can be called") from None
        if len(args) > MAX_VALUE_BYTES:
            raise UserError(f"the arguments are {len(args)} bytes pickled, above the cap "
                            f"of {MAX_VALUE_BYTES}; send big data as files")
        self._check_open()
        self._next_id += 1
        call_id = self._next_id
        self.calls.call(call_id, method, args, window)
        send, receive = trio.open_memory_channel[_Event](window + 1)
        self._waiting[call_id] = send
        try:
            await self._send(wire.MethodCall(id=call_id, method=method, args=args,
                                             window=window))
        except BaseException as exc:
            self._end(SessionLost(f"the call of {method} could not reach {self.who}: "
                                  f"{exc}{self._paid()}"))
            receive.close()
            raise self._lost() from exc
        return call_id, receive

    async def _grant(self, call_id: int, n: int) -> None:
        if n <= 0 or call_id not in self.calls.open:
            return
        self.calls.grant(call_id, n)
        await self._send(wire.Credit(id=call_id, n=n))

    async def _next(self, events_: trio.MemoryReceiveChannel[_Event]) -> _Event:
        try:
            return await events_.receive()
        except trio.EndOfChannel:
            raise self._lost() from None

    async def _send(self, frame: wire.Frame) -> None:
        async with self._send_lock:
            await self.link.send(frame)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise self._lost()
        if self._closing or self._ended.is_set():
            raise UserError("the session is closed; open a new one")

    def _lost(self) -> BaseException:
        exc = self._failure
        if isinstance(exc, ResultRejected | SessionLost):
            return exc
        return SessionLost(f"the session on {self.who} ended{self._paid()}")

    def _paid(self) -> str:
        cp = self.checkpoint
        if cp is None:
            return "; nothing is paid"
        return (f"; at most its last checkpoint is paid ({credits(cp.message.price_charged)} "
                f"credits, {cp.message.calls} calls)")

    # -- the reader --------------------------------------------------------------------
    async def read(self) -> None:
        """Every frame after `session_ready`, to the call it belongs to, until the end.
        Never raises but Cancelled: a failure ends the session (`_end`)."""
        heard = trio.current_time()
        try:
            with self._reader:  # shielded: the close needs it even when we are cancelled
                while True:
                    try:
                        frame = await self.link.receive_within(SILENCE_S, "frame")
                    except PeerTimeout:
                        if self.calls.open and trio.current_time() - heard >= SILENCE_S:
                            raise
                        continue
                    heard = trio.current_time()
                    if self._dispatch(frame):
                        return
        except ResultRejected as exc:
            self._end(exc)
        except (RemoteError, ProtocolError) as exc:
            self._end(SessionLost(f"session {self.session_id[:12]} on {self.who} was "
                                  f"lost: {exc}{self._paid()}"))

    def _dispatch(self, frame: wire.Frame) -> bool:
        """Handle one frame; True once the session ended."""
        raise_if_error(frame)
        if isinstance(frame, wire.Item):
            self.calls.item(frame.id, frame.value)
            self._waiting[frame.id].send_nowait(("item", frame.value))
        elif isinstance(frame, wire.Reply):
            self.calls.reply(frame.id, frame.value, frame.error)
            send = self._waiting.pop(frame.id)
            send.send_nowait(("reply", frame.value, frame.error))
            send.close()
        elif isinstance(frame, wire.Output):
            self._output(frame)
        elif isinstance(frame, wire.Checkpoint):
            self.checkpoint = self._verify(frame.result, final=False)
        elif isinstance(frame, wire.SessionEnd):
            self.final = self._verify(frame.result, final=True)
            r = self.final.message
            # a lease that ran out with no call in flight ended as agreed: only a later
            # call hears of it
            self._expired = r.status in ("idle", "expired") and not self.calls.open
            self._end(None if self._closing and not self.calls.open else SessionLost(
                f"{self.who} ended session {self.session_id[:12]} ({r.status}"
                f"{': ' + r.reason if r.reason else ''}); its final result is paid"))
            return True
        return False

    def _verify(self, raw: bytes, *, final: bool) -> Signed[SessionResult]:
        signed = verify_session_bytes(raw)
        assert self.quote is not None
        why = judge(signed, session_id=self.session_id, provider=self.ad.peer_id,
                    requester=self.requester, transcript=self.calls.transcript,
                    max_charge=self.quote.max_charge, final=final)
        if why:
            self._evidence = (signed, why)
            raise ResultRejected(why)
        return signed

    def _output(self, frame: wire.Output) -> None:
        self.emit(events.LogLine(job_id=self.session_id, provider=self.ad.peer_id,
                                 stream=frame.stream, text=frame.text))
        if self.echo is not None:
            self.echo(frame.stream, frame.text)

    def _end(self, failure: BaseException | None) -> None:
        if self._failure is None:
            self._failure = failure
        for send in self._waiting.values():
            send.close()
        self._waiting.clear()
        self._ended.set()

    # -- closing and settling ----------------------------------------------------------
    async def close(self, *, abandon: bool = False) -> None:
        """Ask the provider to end the lease (at once, cutting the calls in flight, with
        `abandon`); wait (bounded) for its final result. Call it
        shielded; it never raises (a failure is recorded, `settle` acts on it)."""
        if self._ended.is_set() or self._closing:
            return
        self._closing = True
        with trio.move_on_after(CLOSE_S):
            try:
                await self._send(wire.SessionClose(abandon=abandon))
                await self._ended.wait()
            except (RemoteError, ProtocolError) as exc:
                self._end(SessionLost(f"session {self.session_id[:12]} could not be "
                                      f"closed on {self.who}: {exc}{self._paid()}"))
        if not self._ended.is_set():
            self._end(SessionLost(f"{self.who} sent no final result of session "
                                  f"{self.session_id[:12]} within {CLOSE_S:.0f} s"
                                  f"{self._paid()}"))

    def outvote(self, why: str) -> None:
        """Other providers' sessions disagreed with one of this one's replies: it is not
        paid; its signed result (or nothing) goes back rejected at settlement."""
        self._outvoted = self._outvoted or why[:200]

    def stop_reading(self) -> None:
        self._reader.cancel()

    async def settle(self, reason: RefundReason = "failed") -> None:
        """Once: pay the verified final result; reject a wrong one; else pay the last
        verified checkpoint; else refund all. Shielded; a ledger failure stays pending."""
        if self._settled:
            return
        self._settled = True
        pay = self.payments
        try:
            with trio.CancelScope(shield=True):
                if self._outvoted and (self.final or self.checkpoint):
                    await pay.reject(self.final or self.checkpoint,  # type: ignore[arg-type]
                                     self._outvoted)
                elif self._outvoted:
                    await pay.refund(self.session_id, "rejected", detail=self._outvoted)
                elif self._evidence is not None:
                    await pay.reject(self._evidence[0], self._evidence[1])
                elif self.final is not None:
                    await pay.accept(self.final)
                elif self.checkpoint is not None:
                    await pay.accept(self.checkpoint)
                else:
                    detail = str(self._failure) if self._failure else ""
                    await pay.refund(self.session_id, reason, detail=detail)
        except Failure as exc:
            log.error("settling session %s failed, it stays pending: %s",
                      self.session_id[:12], exc)
        with trio.CancelScope(shield=True):
            await self._record()

    async def _record(self) -> None:
        """Keep what the session settled on under the home: the verified final result,
        else the last verified checkpoint (a rejected one is not kept)."""
        rejected = self._evidence is not None or bool(self._outvoted)
        kept = None if rejected else self.final or self.checkpoint
        if self.home is None or not (self._recorded or kept is not None or rejected):
            return
        status: records.Unsigned = "rejected" if rejected else "lost"
        await trio.to_thread.run_sync(partial(
            records.record_end, self.home, self.session_id, self.ad.peer_id,
            self.opened_at, kept, status=status, now=self.clock()))

    def raise_failure(self) -> None:
        """After close: the reason the session did not end cleanly, if any (a lease that
        ran out between calls, verified and paid, is a clean end)."""
        if self._failure is not None and not self._expired:
            raise self._failure


def build_spec(host: Host, ad: CapacityAd, request: SessionRequest,
               files: list[tuple[InputFile, Path]], clock: Callable[[], float]) -> SessionSpec:
    return SessionSpec(
        requester=host.peer_id, provider=ad.peer_id, runtime=request.runtime,
        inputs=tuple(f for f, _ in files), resources=request.resources,
        idle_timeout_s=request.idle_timeout_s, concurrency=request.concurrency,
        max_price=request.max_price, nonce=os.urandom(16), created_at=int(clock() * 1000))


@asynccontextmanager
async def open_session(host: Host, ad: CapacityAd, request: SessionRequest, *,
                       payments: Payments | None = None, emit: Emit = ignore,
                       echo: Echo | None = None, clock: Callable[[], float] = time.time,
                       home: Path | None = None) -> AsyncIterator[RemoteSession]:
    """An open session on `ad`'s provider, closed and settled on the way out (even when
    cancelled: shielded, bounded). Raises SessionFailed when the object could not be
    built, SessionLost / ResultRejected when the session did not end cleanly. With `home`
    it is recorded there (records.py) for `offload sessions` and `offload verify`."""
    files = session_files(request)
    try:
        signed_spec = sign(build_spec(host, ad, request, files, clock), host.identity)
    except ProtocolError as exc:
        raise UserError(f"the session cannot be asked for: {exc}") from None
    pay = payments or Payments(None, host)
    raw = await host.open_stream(ad.peer_id, wire.SESSION_PROTOCOL, addrs=ad.addrs)
    stream = guarded(raw, SESSION, "requester")
    session = RemoteSession(stream, session_id=signed_spec.digest, ad=ad,
                            requester=host.peer_id, concurrency=request.concurrency,
                            payments=pay, emit=emit, echo=echo, home=home, clock=clock)
    try:
        try:
            await session._open(signed_spec.raw, request, files)
        except BaseException as exc:
            await session.settle(refund_reason(exc))
            raise
        clean = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.read)
                try:
                    yield session
                    clean = True
                finally:
                    with trio.CancelScope(shield=True):
                        await session.close(abandon=not clean)
                    session.stop_reading()
        except BaseExceptionGroup as group:
            err = sole_error(group)
            await session.settle(refund_reason(err) if err is not None else "cancelled")
            if err is None:
                raise
            raise err from None
        except BaseException as exc:
            await session.settle(refund_reason(exc))
            raise
        await session.settle()
        if clean:
            session.raise_failure()
    finally:
        with trio.CancelScope(shield=True):
            await stream.close()

