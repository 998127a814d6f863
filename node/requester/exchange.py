"""The requester side of a job exchange, driven by protocol/exchange.py's table: send the spec
and inputs, follow the run, verify the result and fetch the outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import trio

from ledger import LedgerError, RefundReason
from node.errors import (
    PeerGone,
    PeerRefused,
    PeerTimeout,
    PriceRefused,
    RemoteError,
    ResultRejected,
    UserError,
)
from node.net import lane
from node.net.guard import guarded
from node.net.host import Host, Stream
from node.net.transfer import (
    STALL_S,
    Progress,
    file_sha256,
    no_progress,
    receive_file,
    send_file,
    transfer_deadline,
    transfer_seconds,
)
from node.requester import events
from node.requester.events import Emit, Meter, ignore
from node.requester.payments import Payments
from node.requester.verify import RESULT_FILE, safe_join, verify_result_bytes
from protocol import (
    CapacityAd,
    Identity,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    ProtocolError,
    Quote,
    Resources,
    Signed,
    open_signed,
    sign,
    wire,
)
from protocol.errors import SendOutOfOrder
from protocol.exchange import JOB, SETTLE
from protocol.messages import MAX_OUTPUT_TEXT, check_file_name
from scheduler.pricing import credits, over_caps

log = logging.getLogger(__name__)
T = TypeVar("T")

QUOTE_S = 30.0
"""The longest wait for a provider's quote (or its named refusal)."""
HEARTBEAT_GRACE_S = 15.0
"""The longest silence while queued or running: providers send a heartbeat every 2 s."""
GRACE_S = 30.0
"""Fixed grace on the job's timeout: waiting for a slot, and running until the result,
may each take at most `timeout + GRACE_S` (README, "Deadlines")."""


@dataclasses.dataclass(frozen=True, slots=True)
class Phases:
    """Deadlines of one job exchange, in seconds, from the job's timeout (max_seconds).

    Uploads and downloads are bounded by transfer.transfer_seconds of their bytes (and
    transfer.STALL_S per chunk); within every phase no heartbeat may be later than
    HEARTBEAT_GRACE_S."""

    max_seconds: int

    @property
    def quote_s(self) -> float:
        return QUOTE_S

    @property
    def slot_s(self) -> float:
        return self.max_seconds + GRACE_S

    @property
    def run_s(self) -> float:
        return self.max_seconds + GRACE_S

    def total_s(self, upload_bytes: int, download_bytes: int) -> float:
        """The longest a whole attempt may take, every phase at its limit."""
        return (self.quote_s + self.slot_s + transfer_seconds(upload_bytes) + self.run_s
                + transfer_seconds(download_bytes))


RELAY_BULK_BYTES = wire.LANE_MIN_BYTES
"""Inputs or outputs from this size wait for a direct connection before going through a
relay (for outputs, the size at which the provider waits for our `lane` or `fetch_outputs`)."""
DIRECT_WAIT_S = 10.0
"""How long they wait (DCUtR tries every 2 s, each dial up to 3 s)."""
PHASES = ("prepare", "connect", "quote", "escrow", "slot", "upload", "run", "verify",
          "download")
"""The phases of one exchange, in order, as `events.Timing` names them."""


class _Marks:
    """Emits `events.Timing` for each phase as it ends (monotonic clock); those before the
    quote wait for it, so a job's first event is still `Quoted`."""

    def __init__(self, emit: Emit, started: float) -> None:
        self.emit = emit
        self.last = started
        self.job_id = self.provider = ""
        self.held: list[events.Timing] | None = []
        self.phases: dict[str, float] = {}
        """Milliseconds per phase so far, for the job's record."""

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        timing = events.Timing(job_id=self.job_id, provider=self.provider, phase=phase,
                               ms=round((now - self.last) * 1000.0, 3))
        self.phases[phase] = timing.ms
        self.last = now
        if self.held is None:
            self.emit(timing)
        else:
            self.held.append(timing)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for timing in held:
            self.emit(timing)


@dataclasses.dataclass(frozen=True, slots=True)
class JobRequest:
    script: Path
    args: Sequence[str] = ()
    files: Sequence[Path] = ()
    resources: Resources = dataclasses.field(default_factory=Resources)
    max_price: int | None = None
    runtime: str = "python3"
    caps: Price | None = None
    output_cap: int = 0
    """Bytes of stdout, and of stderr, the result should hold (within the provider's
    limit, MAX_OUTPUT_TEXT); 0: the provider's limit. What is cut is stated in the result."""
    full_output: bool = False
    """Also bring back the whole of stdout and stderr as files (FULL_OUTPUT) in out_dir."""
    detach: bool = False
    """Let the job run on without us once its inputs are in (`detach_job`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class JobOutcome:
    signed: Signed[JobResult]
    out_dir: Path
    wall_s: float
    quote: Quote
    route: str = "direct"
    """"direct", or "relayed" through a circuit relay."""
    output_route: str = "direct"
    """The outputs' route: big ones leave a relayed job stream for a direct connection."""

    @property
    def result(self) -> JobResult:
        return self.signed.message


def input_files(request: JobRequest) -> list[tuple[InputFile, Path]]:
    """The script and every --file, named by basename; names must be plain and unique."""
    pairs: list[tuple[InputFile, Path]] = []
    for path in [request.script, *request.files]:
        if not path.is_file():
            raise UserError(f"{path} is not a readable file")
        try:
            check_file_name(path.name, "file name")
        except ProtocolError as exc:
            raise UserError(f"{exc}; rename the file") from None
        if any(p.name == path.name for _, p in pairs):
            raise UserError(f"two inputs are named {path.name!r}; rename one of them")
        pairs.append((InputFile(name=path.name, sha256=file_sha256(path),
                                size=path.stat().st_size), path))
    return pairs


@dataclasses.dataclass(frozen=True, slots=True)
class DetachedJob:
    """A job that runs on without us (`detach_job`): its escrow stays locked until its
    result is fetched (`offload result`) or its provider's keeping time has run out."""

    job_id: str
    provider: str
    quote: Quote
    keep_s: int
    accepted_at: float
    """Unix seconds when the provider took it."""


@dataclasses.dataclass(slots=True)
class _Attempt:
    """What the parts of one exchange share."""

    stream: Stream
    spec_raw: bytes
    job_id: str
    files: list[tuple[InputFile, Path]]
    pay: Payments
    seen: list[str]
    mark: _Marks
    route: str


async def run_job(host: Host, ad: CapacityAd, request: JobRequest, out_dir: Path, *,
                  clock: Callable[[], float] = time.time, emit: Emit = ignore,
                  payments: Payments | None = None) -> JobOutcome:
    """Send the job to `ad`'s provider and return its verified result; outputs land in out_dir.

    Every phase has its own deadline (see `Phases`): a provider that freezes, trickles or
    stops answering fails the attempt with PeerTimeout, in one line, within its phase.
    With `payments`, the quote is escrowed before inputs move; any failure refunds it
    (timeout, rejection, cancellation named as such). A returned result's escrow stays
    locked: the caller accepts (pays) or rejects it once it has judged the result."""
    started = time.monotonic()

    async def body(a: _Attempt) -> JobOutcome:
        signed, quote, out_route = await _exchange(
            a.stream, a.spec_raw, a.job_id, ad, a.files, out_dir, host.peer_id, request,
            emit, a.pay, a.seen, a.mark, identity=host.identity, host=host, route=a.route)
        return JobOutcome(signed=signed, out_dir=out_dir, wall_s=time.monotonic() - started,
                          quote=quote, route=a.route, output_route=out_route)

    return await _attempt(host, ad, dataclasses.replace(request, detach=False), body,
                          clock=clock, emit=emit, payments=payments)


async def detach_job(host: Host, ad: CapacityAd, request: JobRequest, *,
                     clock: Callable[[], float] = time.time, emit: Emit = ignore,
                     payments: Payments | None = None) -> DetachedJob:
    """Send the job as `run_job` does, and return once the provider has taken it and said
    it runs on without us (`detached`); the escrow stays locked for `Payments.detach`."""

    async def body(a: _Attempt) -> DetachedJob:
        quote = await _send_job(a.stream, a.spec_raw, a.job_id, ad, a.files, host.peer_id,
                                request, emit, a.pay, a.mark, identity=host.identity)
        with within(HEARTBEAT_GRACE_S, f"provider {ad.peer_id[:16]} did not confirm "
                    f"detached job {a.job_id[:12]}"):
            while True:
                frame = await a.stream.receive()
                raise_if_error(frame)
                if isinstance(frame, wire.Detached):
                    break
        if frame.job_id != a.job_id:
            raise ResultRejected("the provider detached a different job id")
        a.mark("run")
        return DetachedJob(job_id=a.job_id, provider=ad.peer_id, quote=quote,
                           keep_s=frame.keep_s, accepted_at=clock())

    return await _attempt(host, ad, dataclasses.replace(request, detach=True), body,
                          clock=clock, emit=emit, payments=payments)


async def _attempt(host: Host, ad: CapacityAd, request: JobRequest,
                   body: Callable[[_Attempt], Awaitable[T]], *, clock: Callable[[], float],
                   emit: Emit, payments: Payments | None) -> T:
    """One exchange with `ad`'s provider: the signed spec, the stream, then `body`; any
    failure refunds what was escrowed (a rejected result's digest named)."""
    started = time.monotonic()
    files = input_files(request)
    if not 0 <= request.output_cap <= MAX_OUTPUT_TEXT:
        raise UserError(f"the output cap must be 0 (the provider's limit) to "
                        f"{MAX_OUTPUT_TEXT} bytes, not {request.output_cap}")
    spec = JobSpec(
        requester=host.peer_id, provider=ad.peer_id, runtime=request.runtime,
        entrypoint=request.script.name, args=tuple(request.args),
        inputs=tuple(f for f, _ in files), resources=request.resources,
        max_price=request.max_price, verification="none", nonce=os.urandom(16),
        created_at=int(clock() * 1000), output_cap=request.output_cap,
        full_output=request.full_output, detach=request.detach)
    signed_spec = sign(spec, host.identity)
    job_id = signed_spec.digest
    pay = payments or Payments(None, host)
    seen: list[str] = []  # the result's digest, once one arrived
    mark = _Marks(emit, started)
    mark.job_id, mark.provider = job_id, ad.peer_id
    mark("prepare")
    try:
        raw, route = await _open_route(host, ad, sum(f.size for f, _ in files), emit, job_id)
        stream = guarded(raw, JOB, "requester")
        mark("connect")
        try:
            done = await body(_Attempt(stream, signed_spec.raw, job_id, files, pay, seen,
                                       mark, route))
        finally:
            await stream.close()
    except BaseException as exc:
        await pay.timed(job_id, mark.phases)
        if isinstance(exc, ResultRejected) and seen:
            await pay.refund(job_id, "rejected", detail=str(exc), result_digest=seen[0])
        else:
            await pay.refund(job_id, refund_reason(exc), detail=str(exc))
        raise
    await pay.timed(job_id, mark.phases)
    return done


async def _open_route(host: Host, ad: CapacityAd, input_bytes: int, emit: Emit,
                      job_id: str) -> tuple[Stream, str]:
    """The job's stream. Through a relay, inputs of RELAY_BULK_BYTES or more first wait up
    to DIRECT_WAIT_S for hole punching to give a direct connection (a relay carries a
    tenth of the throughput, within its limits), then go relayed if none came. The wait
    comes before the stream opens: a provider gives a stream 10 s to send its job."""
    peer, waited = ad.peer_id, 0.0
    if input_bytes >= RELAY_BULK_BYTES and host.connection_kind(peer) != "direct":
        if not host.connection_kind(peer):
            with contextlib.suppress(RemoteError):  # open_stream below says what failed
                await host.ping(peer, addrs=ad.addrs, count=1, timeout=10.0)
        waited = await _await_direct(host, peer)
    stream = await host.open_stream(peer, wire.JOB_PROTOCOL, addrs=ad.addrs)
    route = host.connection_kind(peer) or "direct"
    emit(events.Route(job_id=job_id, provider=peer, route=route, waited_s=waited))
    return stream, route


async def _await_direct(host: Host, peer: str) -> float:
    """Up to DIRECT_WAIT_S for a relayed peer to be reached directly; the seconds waited."""
    if host.connection_kind(peer) != "relayed":
        return 0.0
    start = trio.current_time()
    with trio.move_on_after(DIRECT_WAIT_S):
        while host.connection_kind(peer) != "direct":
            await trio.sleep(0.1)
    return round(trio.current_time() - start, 3)


async def _outputs_route(stream: Stream, host: Host | None, ad: CapacityAd, job_id: str,
                         route: str, size: int, emit: Emit) -> tuple[Stream, str]:
    """Where the outputs come from. Outputs of RELAY_BULK_BYTES or more that would come
    through a relay wait, as inputs do, for a direct connection and move to a settle
    stream over it (`fetch_outputs`); else they follow the job stream."""
    if route != "relayed" or size < RELAY_BULK_BYTES or host is None:
        return stream, route
    waited = await _await_direct(host, ad.peer_id)
    if host.connection_kind(ad.peer_id) != "direct":
        emit(events.Route(job_id=job_id, provider=ad.peer_id, route="relayed",
                          waited_s=waited, what="outputs"))
        return stream, "relayed"
    await _send(stream, wire.FetchOutputs(job_id=job_id), "the move of the outputs")
    fetch = guarded(await host.open_stream(ad.peer_id, wire.SETTLE_PROTOCOL, addrs=ad.addrs),
                    SETTLE, "requester")
    try:
        await _send(fetch, wire.FetchOutputs(job_id=job_id), "the fetch of the outputs")
    except BaseException:
        await fetch.close()
        raise
    emit(events.Route(job_id=job_id, provider=ad.peer_id, route="direct", waited_s=waited,
                      what="outputs"))
    return fetch, "direct"


def check_quote(raw: bytes, *, job_id: str, ad: CapacityAd, requester: str,
                request: JobRequest) -> Quote:
    """The provider's signed quote, against the job's cap and the per-coefficient caps."""
    try:
        quote = open_signed(raw, Quote).message
    except ProtocolError as exc:
        raise ResultRejected(f"the provider's quote is not intact: {exc}") from exc
    if (quote.job_id, quote.provider, quote.requester) != (job_id, ad.peer_id, requester):
        raise ResultRejected("the provider quoted another job, or signed as someone else")
    ask = credits(quote.max_charge)
    if request.max_price is not None and quote.max_charge > request.max_price:
        raise PriceRefused(f"price: provider {ad.peer_id[:16]} asks up to {ask} credits for "
                           f"this job, above your cap of {credits(request.max_price)}; raise "
                           "--max-price or ask for less time or fewer resources")
    if request.caps is not None and (over := over_caps(quote.price, request.caps)):
        raise PriceRefused(f"price: provider {ad.peer_id[:16]} asks "
                           + ", ".join(f"{n}={getattr(quote.price, n)}" for n in over)
                           + " micro-credits, above your caps in requester.toml")
    return quote


async def _send_job(stream: Stream, spec_raw: bytes, job_id: str, ad: CapacityAd,
                    files: list[tuple[InputFile, Path]], requester: str, request: JobRequest,
                    emit: Emit, pay: Payments, mark: _Marks, *,
                    identity: Identity | None = None) -> Quote:
    """The spec, its quote checked and escrowed, a slot, the inputs: the provider runs it."""
    phases = Phases(request.resources.max_seconds)
    who = f"provider {ad.peer_id[:16]}"
    with within(phases.quote_s, f"{who} sent no quote for job {job_id[:12]}"):
        await stream.send(wire.SubmitJob(spec=spec_raw))
        reply = await stream.receive()
    raise_if_error(reply)
    assert isinstance(reply, wire.QuoteOffer)  # the exchange table allows no other
    offer = reply
    try:
        quote = check_quote(offer.quote, job_id=job_id, ad=ad, requester=requester,
                            request=request)
    except PriceRefused as exc:
        await tell(stream, wire.ErrorReply(code="price", message=str(exc)[:1000]))
        raise
    mark("quote")
    emit(events.Quoted(job_id=job_id, provider=ad.peer_id, max_charge=quote.max_charge))
    mark.release()
    try:
        await pay.lock(job_id, ad.peer_id, quote.max_charge)
    except LedgerError as exc:
        await tell(stream, wire.ErrorReply(code="price", message=f"requester: {exc}"[:1000]))
        raise
    mark("escrow")
    with within(phases.slot_s, f"{who} gave job {job_id[:12]} no slot"):
        await _send(stream, wire.QuoteAccept(job_id=job_id), "the quote acceptance")
        while True:
            reply = await stream.receive_within(HEARTBEAT_GRACE_S, "slot or place in line")
            raise_if_error(reply)
            if not isinstance(reply, wire.Queued):
                break
    assert isinstance(reply, wire.Accepted)
    accepted = reply
    if accepted.job_id != job_id:
        raise ResultRejected("the provider acknowledged a different job id")
    by_digest = {f.sha256: (f, p) for f, p in files}
    if any(d not in by_digest for d in accepted.need):
        raise ResultRejected("the provider asked for a file that is not part of the job")
    sending = [(by_digest[d], accepted.resume.get(d, 0)) for d in accepted.need]
    mark("slot")
    with transfer_deadline(sum(f.size - offset for (f, _), offset in sending),
                           f"the inputs of job {job_id[:12]} to {who}"):
        def uploading(f: InputFile, offset: int) -> None:
            emit(events.Uploading(job_id=job_id, provider=ad.peer_id, name=f.name,
                                  size=f.size, offset=offset))

        meter = Meter(emit, job_id, ad.peer_id, "up",
                      [(f.name, f.size, offset) for (f, _), offset in sending])

        def on_lane() -> None:
            for (f, _), offset in sending:
                uploading(f, offset)

        async def upload(s: Stream) -> None:
            for (f, path), offset in sending:
                uploading(f, offset)
                await send_file(s, f.name, path, offset=offset, progress=meter)

        await lane.send_phase(stream, identity,
                              [(f.name, path, offset) for (f, path), offset in sending],
                              fallback=upload, on_lane=on_lane, progress=meter)
    mark("upload")
    return quote


async def _exchange(stream: Stream, spec_raw: bytes, job_id: str, ad: CapacityAd,
                    files: list[tuple[InputFile, Path]], out_dir: Path,
                    requester: str, request: JobRequest, emit: Emit, pay: Payments,
                    seen: list[str], mark: _Marks, *, identity: Identity | None = None,
                    host: Host | None = None,
                    route: str = "direct") -> tuple[Signed[JobResult], Quote, str]:
    """The verified result, the quote, and the outputs' route (from the job's `route`)."""
    phases = Phases(request.resources.max_seconds)
    who = f"provider {ad.peer_id[:16]}"
    quote = await _send_job(stream, spec_raw, job_id, ad, files, requester, request, emit,
                            pay, mark, identity=identity)
    with within(phases.run_s, f"{who} returned no result for job {job_id[:12]}"):
        ready = await _await_result(stream, job_id, ad, emit)
    mark("run")
    signed = verify_result_bytes(ready.result, job_id=job_id, provider=ad.peer_id,
                                 requester=requester)
    seen.append(signed.digest)
    if signed.message.price_charged > quote.max_charge:
        raise ResultRejected(f"the provider charged {credits(signed.message.price_charged)} "
                             f"credits, above its quote of {credits(quote.max_charge)}")
    mark("verify")
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = signed.message.outputs
    size = sum(o.size for o in outputs)
    source, out_route = await _outputs_route(stream, host, ad, job_id, route, size, emit)
    try:
        with transfer_deadline(size, f"the outputs of job {job_id[:12]} from {who}"):
            await download_outputs(source, identity, outputs, out_dir, lambda out: emit(
                events.Downloading(job_id=job_id, provider=ad.peer_id, name=out.name,
                                   size=out.size)),
                Meter(emit, job_id, ad.peer_id, "down", [(o.name, o.size, 0) for o in outputs]))
    finally:
        if source is not stream:
            await source.close()
    (out_dir / RESULT_FILE).write_bytes(signed.raw)
    mark("download")
    return signed, quote, out_route


async def download_outputs(stream: Stream, identity: Identity | None, outputs: Sequence[OutputFile],
                    out_dir: Path, downloading: Callable[[OutputFile], None],
                    progress: Progress = no_progress) -> None:
    """The outputs in the result's order: over a fast lane we offer when they are big
    enough (node/net/lane.py), else as chunks on the stream; digests checked either way."""
    sinks = [lane.DestFile(safe_join(out_dir, o.name), o.size, o.sha256) for o in outputs]

    async def by_stream(s: Stream) -> None:
        for out in outputs:
            downloading(out)
            await receive_file(s, name=out.name, size=out.size, sha256=out.sha256,
                               dest=safe_join(out_dir, out.name), progress=progress)

    def on_lane() -> None:
        for out in outputs:
            downloading(out)

    items = [(o.name, sink) for o, sink in zip(outputs, sinks, strict=True)]
    try:
        if await lane.receive_phase(stream, identity, items, fallback=by_stream,
                                    on_lane=on_lane, progress=progress):
            for sink in sinks:
                await trio.to_thread.run_sync(sink.finish)
    finally:
        for sink in sinks:
            sink.abandon()


async def _await_result(stream: Stream, job_id: str, ad: CapacityAd,
                        emit: Emit) -> wire.ResultReady:
    """Heartbeats and live output until the provider says the result is ready."""
    while True:
        try:
            frame = await stream.receive_within(HEARTBEAT_GRACE_S, "heartbeat or result")
        except PeerGone as exc:
            raise PeerGone(f"provider {ad.peer_id[:16]} went away while running job "
                           f"{job_id[:12]}; nothing was charged") from exc
        raise_if_error(frame)
        if isinstance(frame, wire.Running):
            emit(events.Running(job_id=job_id, provider=ad.peer_id, elapsed_s=frame.elapsed_s))
            continue
        if isinstance(frame, wire.Output):
            emit(events.LogLine(job_id=job_id, provider=ad.peer_id, stream=frame.stream,
                                text=frame.text))
            continue
        assert isinstance(frame, wire.ResultReady)
        return frame


@contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Bound one phase of the exchange; PeerTimeout naming it when it runs out."""
    with trio.move_on_after(seconds) as scope:
        yield
    if scope.cancelled_caught:
        raise PeerTimeout(f"{what} within {seconds:.0f} s")


async def _send(stream: Stream, frame: wire.Frame, what: str) -> None:
    with trio.move_on_after(STALL_S) as scope:
        await stream.send(frame)
    if scope.cancelled_caught:
        raise PeerTimeout(f"{stream.remote_peer[:16]} did not take {what} within "
                          f"{STALL_S:.0f} s")


async def tell(stream: Stream, frame: wire.Frame) -> None:
    """A last word before giving up: bounded, and its failure is not the story."""
    with trio.move_on_after(STALL_S):
        try:
            await stream.send(frame)
        except (RemoteError, SendOutOfOrder):
            pass


def refund_reason(exc: BaseException) -> RefundReason:
    if isinstance(exc, trio.Cancelled | KeyboardInterrupt):
        return "cancelled"
    if isinstance(exc, PeerTimeout):
        return "timeout"
    return "failed"


def raise_if_error(frame: wire.Frame) -> None:
    if isinstance(frame, wire.ErrorReply):
        raise PeerRefused(frame.code, frame.message, frame.retry_after_s)
