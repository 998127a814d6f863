"""The provider's side of the session exchange (`/offload/session/1.0.0`, protocol/sessions.py).

A session opens like a job (signed spec, quote, admission ticket, inputs), then its slot
runs the session host (`python session_host.py`: HOST_FRAMES over its stdin and stdout)
until the requester closes it, it idles, it reaches its maximum duration or the host
fails. A `Calls` book keeps call ids, concurrency, credit and the transcript; every frame
between the requester and the host is relayed one at a time (bounded memory), and the host
may stream no item beyond the reader's credit. Every CHECKPOINT_S a signed SessionResult
(`open`) goes out; the end is the final one in `session_end`.

The checks, the quote and the slot reuse the job's, on `as_job(spec)`: the session seen as
a job that runs HOST_FILE with the session's inputs and resources.

While it runs, each session is in the provider's `sessions` book (`Live`), which the status
document (`offload status`) shows.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from node.errors import RemoteError
from node.net.host import Stream
from node.provider.exchange import admit_and_run, serve_exchange
from node.provider.executor import Interactive
from node.provider.jobio import receive_inputs
from node.provider.replies import refuse, try_send
from node.provider.session_host_io import (
    Ended,
    Failed,
    HostBroke,
    HostItem,
    HostReader,
    Printed,
    Ready,
    call_frame,
    credit_frame,
)
from protocol import (
    BadSignature,
    JobSpec,
    ProtocolError,
    Quote,
    Usage,
    open_signed,
    sign,
    wire,
)
from protocol.codec import unpack
from protocol.errors import OutOfOrder, SendOutOfOrder
from protocol.exchange import SESSION
from protocol.limits import MAX_MB
from protocol.messages import clip_text
from protocol.sessions import HOST_FILE, Calls, SessionResult, SessionSpec, SessionStatus
from scheduler.pricing import charge, credits

if TYPE_CHECKING:
    from node.provider.daemon import Provider

log = logging.getLogger("node.provider.daemon")

FIRST_FRAME_S = 10.0
"""A stream that sends no session_open within this is closed."""
CHECKPOINT_S = 10.0
"""How often an open session sends a signed checkpoint (read at each session's start)."""
START_S = 60.0
"""The session host must build the object (frame R) within this."""
CLOSE_GRACE_S = 30.0
"""After session_close, how long the calls in flight get to reply."""
TICK_S = 0.1
MAX_REASON = 1000


class Live:
    """The sessions a provider serves now, and how many ended since it started."""

    def __init__(self) -> None:
        self.open: dict[str, _Session] = {}
        self.ended = 0

    def doc(self, now: float) -> dict[str, Any]:
        """For the status document: each open session (id, requester, age_s, calls,
        status), and the count of ended ones."""
        return {"open": [s.status_doc(now) for s in self.open.values()],
                "ended": self.ended}


def as_job(spec: SessionSpec) -> JobSpec:
    """The session as the job checks, quotes and slots see it: HOST_FILE with its inputs."""
    return JobSpec(
        requester=spec.requester, provider=spec.provider, runtime=spec.runtime,
        entrypoint=HOST_FILE, args=(), inputs=spec.inputs, resources=spec.resources,
        max_price=spec.max_price, verification="none", nonce=spec.nonce,
        created_at=spec.created_at)


async def handle_session(p: Provider, raw: Stream) -> None:
    """One session exchange; every failure ends in a named error frame, never a traceback."""
    await serve_exchange(p, raw, SESSION, _open)


async def _open(p: Provider, stream: Stream) -> None:
    """Spec, checks, quote, admission and queue, as for a job; then the session itself."""
    frame = await stream.receive_within(FIRST_FRAME_S, "session_open")
    if not isinstance(frame, wire.SessionOpen):  # an error frame: the requester gave up
        return
    try:
        signed = open_signed(frame.spec, SessionSpec)
        job = as_job(signed.message)
    except ProtocolError as exc:
        await refuse(stream, "bad_signature" if isinstance(exc, BadSignature)
                     else "bad_request", str(exc))
        return
    spec, session_id = signed.message, signed.digest
    await admit_and_run(p, stream, job, session_id,
                        partial(_run, p, stream, spec, job, session_id), what="session")


async def _run(p: Provider, stream: Stream, spec: SessionSpec, job: JobSpec,
               session_id: str, quote: Quote) -> None:
    assert p.executor is not None
    async with p.executor.slot(job, session_id) as slot:
        await receive_inputs(stream, spec, session_id, slot, cache=p.cache,
                             metrics=p.metrics, on_cached=p.wake_advertiser, lanes=False)
        log.info("session %s from %s: starting its host", session_id[:12],
                 spec.requester[:16])
        async with slot.interactive() as host:
            session = _Session(p, stream, spec, session_id, quote, host)
            p.sessions.open[session_id] = session
            try:
                await session.run()
            finally:
                del p.sessions.open[session_id]
                p.sessions.ended += 1
    # the host and its sandbox are gone: its usage is final
    status, reason = session.end or ("failed", "the session ended without a reason")
    result = session.result(status, reason, cpu_s=host.cpu_s(), peak_mb=host.peak_memory_mb)
    signed = sign(result, p.identity)
    await trio.to_thread.run_sync(p.results.put, session_id, signed.raw)
    p.metrics.earnings_total.inc(result.price_charged)
    await try_send(stream, wire.SessionEnd(result=signed.raw))
    log.info("session %s: %s after %d call(s) in %.2f s, charge %s%s", session_id[:12],
             status, result.calls, result.usage.wall_s, credits(result.price_charged),
             f" ({reason})" if reason else "")


def _error_reason(value: bytes) -> str:
    """`Type: message` of an error value (node/api/values.py), else a plain sentence."""
    try:
        doc: Any = unpack(value, max_size=len(value) + 1)
        err = doc["error"]
        return f"{err['type']}: {err['message']}"[:MAX_REASON]
    except Exception:  # any malformed value: the host's own bytes, not trusted
        return "the constructor raised (its error value could not be read)"


class _Session:
    """One open session: the requester's frames, the host's frames and the clock, each in
    its own task; the first to call `finish` ends all three."""

    def __init__(self, p: Provider, stream: Stream, spec: SessionSpec, session_id: str,
                 quote: Quote, host: Interactive) -> None:
        self.p = p
        self.stream = stream
        self.spec = spec
        self.session_id = session_id
        self.quote = quote
        self.host = host
        self.calls = Calls(session_id, spec.concurrency)
        self.started = trio.current_time()
        self.ready_at: float | None = None
        self.ended_at: float | None = None
        self.last_activity = self.started
        self.close_by: float | None = None
        self.end: tuple[SessionStatus, str] | None = None
        self.scope = trio.CancelScope()
        self._sending = trio.Lock()
        self.bytes_in = sum(f.size for f in spec.inputs)

    # ending ------------------------------------------------------------------------------
    def finish(self, status: SessionStatus, reason: str = "") -> None:
        if self.end is None:
            self.end = (status, reason[:MAX_REASON])
            self.ended_at = trio.current_time()
        self.scope.cancel()

    def status_doc(self, now: float) -> dict[str, Any]:
        """One line of the status document (`now`: trio's clock)."""
        state = ("starting" if self.ready_at is None
                 else "open" if self.end is None and self.close_by is None
                 else "closing" if self.end is None else self.end[0])
        return {"id": self.session_id, "requester": self.spec.requester,
                "age_s": round(max(0.0, now - self.started), 1),
                "calls": self.calls.transcript.calls, "status": state}

    def wall_s(self) -> float:
        end = self.ended_at if self.ended_at is not None else trio.current_time()
        return max(0.0, end - (self.ready_at if self.ready_at is not None else end))

    def result(self, status: SessionStatus, reason: str = "", *, cpu_s: float,
               peak_mb: int) -> SessionResult:
        """Where the session stands now (its usage and price so far)."""
        wall = self.wall_s()
        price = charge(self.p.config.price, self.spec.resources, cpu_s=cpu_s, wall_s=wall,
                       bytes_in=self.bytes_in, bytes_out=0, quoted=self.quote.max_charge)
        usage = Usage(wall_s=round(wall, 3), cpu_s=round(cpu_s, 3), gpu_s=0.0,
                      peak_memory_mb=min(MAX_MB, max(0, peak_mb)))
        return SessionResult(
            job_id=self.session_id, provider=self.p.identity.peer_id,
            requester=self.spec.requester, status=status,
            calls=self.calls.transcript.calls, transcript=self.calls.transcript.head,
            usage=usage, price_charged=price, reason=reason, at=self.p.now_ms())

    # running -----------------------------------------------------------------------------
    async def run(self) -> None:
        reader = HostReader(self.host.stdout)
        with self.scope:
            if await self._guard(self._start, reader):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self._from_requester)
                    nursery.start_soon(self._guard, self._from_host, reader)
                    nursery.start_soon(self._guard, self._clock)
        if self.end is None:
            self.finish("failed", "the session ended without a reason")

    async def _guard(self, fn: Any, *args: Any) -> bool:
        """Run one task; whoever broke the rules decides how the session ends."""
        try:
            return bool(await fn(*args))
        except HostBroke as exc:
            self.finish("failed", f"the session host broke the protocol: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.finish("failed", self._exited())
        except SendOutOfOrder:  # the requester's error frame closed the exchange
            self.finish("closed", "the requester ended the session")
        except ProtocolError as exc:  # the requester broke the rules (or its bytes did)
            await self._send_quietly(wire.ErrorReply(code="bad_request",
                                                     message=str(exc)[:1000]))
            self.finish("failed", f"the requester broke the protocol: {exc}")
        except RemoteError as exc:  # gone, or stopped reading: nobody to serve
            self.finish("closed", f"the requester went away ({exc})")
        return False

    async def _send(self, frame: wire.Frame) -> None:
        async with self._sending:
            await self.stream.send(frame)

    async def _send_quietly(self, frame: wire.Frame) -> None:
        async with self._sending:
            await try_send(self.stream, frame)

    async def _print(self, ev: Printed) -> None:
        text, _ = clip_text(ev.text.encode("utf-8"), wire.MAX_OUTPUT_TEXT)
        await self._send(wire.Output(stream="stdout" if ev.stream == 1 else "stderr",
                                     text=text))

    def _exited(self) -> str:
        code = self.host.returncode
        tail = self.host.stderr_tail().strip()
        return (f"the session host exited (code {code})" if code is not None
                else "the session host closed its output") + (f": {tail}" if tail else "")

    async def _start(self, reader: HostReader) -> bool:
        """Until the host built the object (True) or failed to (False, finished)."""
        with trio.move_on_after(START_S):
            while True:
                ev = await reader.next()
                if ev is None:
                    with trio.move_on_after(2):
                        await self.host.process.wait()
                    self.finish("failed", "before the object was built, " + self._exited())
                    return False
                if isinstance(ev, Printed):
                    await self._print(ev)
                elif isinstance(ev, Ready):
                    self.ready_at = self.last_activity = trio.current_time()
                    await self._send(wire.SessionReady(job_id=self.session_id))
                    return True
                elif isinstance(ev, Failed):
                    self.finish("failed", _error_reason(ev.value))
                    return False
                else:
                    raise HostBroke(f"a {type(ev).__name__} frame before the object was built")
        self.finish("failed", f"the object was not built within {START_S:.0f} s")
        return False

    async def _from_requester(self) -> None:
        stdin = self.host.stdin
        while True:
            frame = await self.stream.receive()
            self.last_activity = trio.current_time()
            if isinstance(frame, wire.MethodCall):
                self.calls.call(frame.id, frame.method, frame.args, frame.window)
                await stdin.send_all(call_frame(frame.id, frame.window, frame.method,
                                                frame.args))
            elif isinstance(frame, wire.Credit):
                if self.calls.grant(frame.id, frame.n) is not None:
                    await stdin.send_all(credit_frame(frame.id, frame.n))
            elif isinstance(frame, wire.SessionClose):
                self.close_by = trio.current_time() + CLOSE_GRACE_S
                if frame.abandon and self.calls.open:
                    self.finish("closed", f"the requester abandoned {len(self.calls.open)} "
                                "call(s) in flight")
                elif not self.calls.open:
                    self.finish("closed")
            elif isinstance(frame, wire.ErrorReply):
                self.finish("closed", f"the requester ended the session: {frame.message}")
                return
            else:  # the table allows no other
                raise OutOfOrder(f"a {frame.type_name} frame in an open session")

    async def _from_host(self, reader: HostReader) -> None:
        while True:
            ev = await reader.next()
            if ev is None:
                with trio.move_on_after(2):
                    await self.host.process.wait()
                self.finish("failed", self._exited())
                return
            if isinstance(ev, HostItem):
                try:
                    self.calls.item(ev.id, ev.value)
                except OutOfOrder as exc:
                    raise HostBroke(str(exc)) from exc
                await self._send(wire.Item(id=ev.id, value=ev.value))
            elif isinstance(ev, Ended):
                try:
                    self.calls.reply(ev.id, ev.value, ev.error)
                except OutOfOrder as exc:
                    raise HostBroke(str(exc)) from exc
                await self._send(wire.Reply(id=ev.id, value=ev.value, error=ev.error))
                self.last_activity = trio.current_time()
                if self.close_by is not None and not self.calls.open:
                    self.finish("closed")
            elif isinstance(ev, Printed):
                await self._print(ev)
            else:
                raise HostBroke(f"a {type(ev).__name__} frame after the object was built")

    async def _clock(self) -> None:
        assert self.ready_at is not None
        every = CHECKPOINT_S
        expires = self.ready_at + self.spec.resources.max_seconds
        next_checkpoint = self.ready_at + every
        while True:
            now = trio.current_time()
            if now >= expires:
                self.finish("expired")
                return
            if self.close_by is not None and now >= self.close_by:
                self.finish("closed", f"calls still in flight {CLOSE_GRACE_S:.0f} s after "
                            "the close")
                return
            if (self.close_by is None and not self.calls.open
                    and now - self.last_activity >= self.spec.idle_timeout_s):
                self.finish("idle")
                return
            if now >= next_checkpoint:
                cpu, peak = await trio.to_thread.run_sync(
                    lambda: (self.host.cpu_s(), self.host.peak_memory_mb))
                result = self.result("open", cpu_s=cpu, peak_mb=peak)
                await self._send(wire.Checkpoint(result=sign(result, self.p.identity).raw))
                next_checkpoint = now + every
            await trio.sleep(TICK_S)
