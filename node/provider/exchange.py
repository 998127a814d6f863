"""The provider's side of the job and settle exchanges, driven by protocol/exchange.py.

Every stream is wrapped in its exchange table (node/net/guard.py), so a frame out of order
is refused there (`OutOfOrder`, answered as `bad_request`); the checks here are about
values: signatures, addressing, freshness, price, capacity.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ledger import ChequeReplayed, ReceiptRefused, RemoteLedgerError
from node.errors import BeyondCapacity
from node.net.guard import guarded
from node.net.host import Stream
from node.net.transfer import file_sha256, transfer_deadline
from node.provider.admission import Busy, Capacity, Ticket
from node.provider.board import LiveJob
from node.provider.control import serve_cancel, serve_logs
from node.provider.executor import SandboxExecutor, Slot
from node.provider.jobio import (
    MAX_OUTPUT_BYTES,
    collect_outputs,
    outputs_stream,
    receive_inputs,
    send_outputs,
)
from node.provider.live import LIVE_BACKLOG, forward_output, offer
from node.provider.replies import REFUSAL_OUTCOME, error_code, error_text, refuse, try_send
from node.provider.runner import Capture, capture, output_sink, stop_signal
from node.provider.sandbox.errors import LaunchFailed
from protocol import (
    BadSignature,
    Expired,
    FrameTooLarge,
    JobResult,
    JobSpec,
    MalformedMessage,
    OutputFile,
    ProtocolError,
    Quote,
    Replayed,
    Usage,
    ValueOutOfRange,
    check_receipt,
    check_spec_fresh,
    open_signed,
    sign,
    wire,
)
from protocol.exchange import JOB, SETTLE, Table
from protocol.limits import MAX_SAFE
from protocol.messages import FULL_OUTPUT, MAX_OUTPUT_TEXT, clip_text
from protocol.receipts import open_cheque
from scheduler.pricing import charge, credits

if TYPE_CHECKING:
    from node.provider.daemon import Provider

log = logging.getLogger("node.provider.daemon")

MAX_INPUT_BYTES = 512 * 1024 * 1024
HEARTBEAT_S = 2.0
SETTLE_IDLE_S = 10.0
FIRST_FRAME_S = 10.0
"""A stream that sends no job spec within this is closed (silent streams hold shares)."""


async def handle_settle(p: Provider, raw: Stream) -> None:
    """A requester's receipt for one of our jobs, and its cheque when it paid; or its
    question for the signed result of a job it lost (`result_query`); or its fetch of a
    job's outputs it moved here from a relayed job stream (`fetch_outputs`)."""
    stream = guarded(raw, SETTLE, "provider")
    try:
        frame = await stream.receive_within(SETTLE_IDLE_S, "a settle frame")
        if isinstance(frame, wire.ResultQuery):
            await _answer_result(p, stream, frame.job_id)
            return
        if isinstance(frame, wire.FetchOutputs):
            await _serve_fetch(p, stream, frame.job_id)
            return
        if isinstance(frame, wire.LogsQuery | wire.CancelJob):
            await (serve_logs if isinstance(frame, wire.LogsQuery) else serve_cancel)(
                p, stream, frame)  # type: ignore[arg-type]
            return
        assert isinstance(frame, wire.Settle | wire.ErrorReply)  # the table allows no other
        if isinstance(frame, wire.ErrorReply):
            return
        receipt = check_receipt(frame.receipt, p.now_ms())
        if receipt.provider != p.identity.peer_id or receipt.requester != stream.remote_peer:
            raise ReceiptRefused("the receipt is not about a job this peer gave us")
        if frame.cheque:
            await trio.to_thread.run_sync(_accept_cheque, p, frame.cheque)
        await trio.to_thread.run_sync(p.ledger.record_receipt, frame.receipt)
        await trio.to_thread.run_sync(p.kept.drop, receipt.job_id)  # settled: fetched
        await p.gossip.publish(frame.receipt)  # the requester gossips it too; we stay online
    except (ProtocolError, RemoteLedgerError) as exc:
        p.peer_errors.failed("settle exchange", stream.remote_peer, exc)
        await refuse(stream, "too_large" if isinstance(exc, FrameTooLarge) else "payment",
                     str(exc))
        return
    except Exception as exc:  # e.g. the ledger's disk: the peer hears a named error
        p.peer_errors.failed("settle exchange", stream.remote_peer, exc)
        await try_send(stream, wire.ErrorReply(code=error_code(exc), message=error_text(exc)))
        return
    log.info("job %s settled by %s: %s, charge %s", receipt.job_id[:12],
             receipt.requester[:16], receipt.outcome, credits(receipt.charge))
    await try_send(stream, wire.SettleAck(job_id=receipt.job_id))


def _accept_cheque(p: Provider, raw: bytes) -> None:
    """Keep the cheque; one that a later cheque of the same payer, accepted already, covers
    (two settles of concurrent jobs that crossed on the way) adds nothing and is no error."""
    try:
        p.ledger.accept_cheque(raw)
    except ChequeReplayed:
        cheque = open_cheque(raw).message
        latest = p.ledger.latest_cheque(cheque.payer)
        if latest is None or latest.message.cumulative < cheque.cumulative:
            raise


async def _serve_fetch(p: Provider, stream: Stream, job_id: str) -> None:
    async def send(s: Stream, outputs: list[tuple[OutputFile, Path]]) -> None:
        with transfer_deadline(sum(o.size for o, _ in outputs),
                               f"the outputs of job {job_id[:12]}"):
            await send_outputs(s, outputs, metrics=p.metrics, identity=p.identity)
        log.info("job %s: outputs sent on the fetch stream of %s", job_id[:12],
                 s.remote_peer[:16])

    try:
        if not p.held_outputs.holds(job_id):
            kept = await trio.to_thread.run_sync(p.kept.outputs, job_id, stream.remote_peer)
            if kept is not None:
                await send(stream, kept)
                return
        await p.held_outputs.serve(stream, job_id, send)
    except Exception as exc:  # the boundary, as for jobs
        p.peer_errors.failed("output fetch", stream.remote_peer, exc)
        await try_send(stream, wire.ErrorReply(code=error_code(exc), message=error_text(exc)))


async def _answer_result(p: Provider, stream: Stream, job_id: str) -> None:
    """A `result_query`: `running` while the job runs here, else its signed result."""
    live = p.board.get(job_id, stream.remote_peer)
    if live is not None:
        await try_send(stream, wire.Running(elapsed_s=live.elapsed_s))
        return
    await p.results.answer(stream, job_id, also=p.kept.result)


async def handle_job(p: Provider, raw: Stream) -> None:
    """One job exchange; every failure ends in a named error frame, never a traceback."""
    await serve_exchange(p, raw, JOB, _serve)


async def serve_exchange(p: Provider, raw: Stream, table: Table,
                         serve: Callable[[Provider, Stream], Awaitable[None]]) -> None:
    """`serve` one exchange of `table` on a stream the admission counts; the boundary."""
    stream = guarded(raw, table, "provider")
    if not p.admission.open_stream():
        await try_send(stream, wire.ErrorReply(
            code="busy", message="too many open job streams",
            retry_after_s=p.admission.retry_after_s))
        return
    try:
        await serve(p, stream)
    except Exception as exc:  # the boundary: the peer hears a named error, we go on
        p.peer_errors.failed(f"{table.name} exchange", stream.remote_peer, exc)
        await try_send(stream, wire.ErrorReply(code=error_code(exc), message=error_text(exc)))
    finally:
        p.admission.close_stream()


async def _serve(p: Provider, stream: Stream) -> None:
    frame = await stream.receive_within(FIRST_FRAME_S, "job")
    if not isinstance(frame, wire.SubmitJob):  # an error frame: the requester gave up
        return
    try:
        signed = open_signed(frame.spec, JobSpec)
    except ProtocolError as exc:
        await refuse(stream, "bad_signature" if isinstance(exc, BadSignature)
                     else "bad_request", str(exc))
        return
    spec, job_id = signed.message, signed.digest
    await admit_and_run(p, stream, spec, job_id, partial(_run, p, stream, spec, job_id))


async def admit_and_run(p: Provider, stream: Stream, spec: JobSpec, job_id: str,
                        run: Callable[[Quote], Awaitable[None]], *, what: str = "job",
                        ) -> None:
    """What a job and a session (`what`) go through before they run: the checks,
    freshness and replay, draining, the quote and its cap, an admission ticket, the quote
    offered and accepted, the queue; then `run(quote)` holding the slot."""
    count = p.metrics.jobs_total.labels if what == "job" else None
    refusal = check_spec(p, spec, stream.remote_peer)
    if refusal:
        if count:
            count(outcome=REFUSAL_OUTCOME.get(refusal[0], "refused")).inc()
        await refuse(stream, *refusal)
        return
    try:
        check_spec_fresh(spec, now_ms=p.now_ms())
        p.replay.check_and_remember(job_id, now_ms=p.now_ms())
    except Expired as exc:
        await refuse(stream, "expired", str(exc))
        return
    except Replayed as exc:
        await refuse(stream, "replayed", str(exc))
        return
    if p.draining:
        await refuse(stream, "draining", "this provider is shutting down; use another")
        return
    try:
        quote = p.quote(spec, job_id)
    except ValueOutOfRange:
        await refuse(stream, "price", f"price: this {what} could cost more than any ledger "
                     "holds; ask for less time or fewer resources")
        return
    if spec.max_price is not None and quote.max_charge > spec.max_price:
        if count:
            count(outcome="price").inc()
        await refuse(stream, "price", f"price: this {what} can cost up to "
                     f"{credits(quote.max_charge)} credits here, above your cap of "
                     f"{credits(spec.max_price)}")
        return
    try:
        ticket = p.admission.admit(stream.remote_peer)
    except Busy as exc:
        if count:
            count(outcome="busy").inc()
        await try_send(stream, wire.ErrorReply(code="busy", message=str(exc),
                                               retry_after_s=exc.retry_after_s))
        return
    try:
        await stream.send(wire.QuoteOffer(quote=sign(quote, p.identity).raw))
        answer = await stream.receive_within(p.config.quote_hold_s, "quote acceptance")
        if isinstance(answer, wire.ErrorReply):
            log.info("%s %s: quote declined (%s)", what, job_id[:12], answer.message)
            return
        assert isinstance(answer, wire.QuoteAccept)  # the table allows no other
        if answer.job_id != job_id:
            raise MalformedMessage(f"the quote acceptance names another {what}")
        await queue(p, stream, ticket)
        p.running += 1
        try:
            await run(quote)
        except* LaunchFailed as group:  # e.g. EAGAIN from the kernel: try elsewhere
            if count:
                count(outcome="busy").inc()
            await refuse(stream, "busy", f"the {what}'s sandbox could not start here "
                         f"({group.exceptions[0]}); try again or another provider")
        finally:
            p.running -= 1
            p.last_job_end = time.monotonic()
    finally:
        p.admission.release(ticket)


async def queue(p: Provider, stream: Stream, ticket: Ticket) -> None:
    """Wait for the ticket's slot, telling the requester its place every few seconds."""
    if ticket.has_slot:
        return

    async def tell(pos: int) -> None:
        await stream.send(wire.Queued(position=pos))

    async with trio.open_nursery() as nursery:
        async def keep_telling() -> None:
            while True:
                await trio.sleep(HEARTBEAT_S)
                await stream.send(wire.Queued(position=max(1, p.admission.position(ticket))))

        nursery.start_soon(keep_telling)
        await p.admission.wait(ticket, tell)
        nursery.cancel_scope.cancel()


def check_spec(p: Provider, spec: JobSpec, peer: str) -> tuple[wire.ErrorCode, str] | None:
    """Why this provider will not run `spec` from `peer` (code and text), or None."""
    if p.executor is None:
        return ("no_sandbox", f"this provider runs no remote jobs: {p.setup.reason}")
    if spec.provider != p.identity.peer_id:
        return ("wrong_provider", "this job spec is addressed to another provider")
    if spec.requester != peer:
        return ("bad_request", "the job spec was signed by a peer other than the sender")
    if spec.runtime != p.setup.runtime.name:
        return ("bad_request", f"runtime {spec.runtime!r} is not offered here")
    gpus = p.executor.gpus if isinstance(p.executor, SandboxExecutor) else None
    try:  # beyond the machine: never, whatever is free (before `busy`, which says "later")
        Capacity.of_host(gpus=gpus.total if gpus else 0).check(spec.resources)
    except BeyondCapacity as exc:
        return ("too_large", str(exc))
    free_gpus = gpus.free if gpus else 0
    if spec.resources.gpus > free_gpus:
        return ("busy" if p.gpu_devices() else "bad_request",
                f"{spec.resources.gpus} GPU(s) asked, {free_gpus} free here")
    if spec.resources.max_seconds > p.config.max_seconds:
        return ("bad_request", f"max_seconds above this provider's {p.config.max_seconds}")
    if sum(f.size for f in spec.inputs) > MAX_INPUT_BYTES:
        return ("too_large", f"inputs exceed {MAX_INPUT_BYTES} bytes")
    if getattr(spec, "detach", False):
        if p.kept.keep_s <= 0:
            return ("bad_request", "this provider keeps no detached jobs; submit without "
                    "--detach")
        if spec.resources.disk_mb << 20 > p.kept.max_bytes:
            return ("too_large", f"a detached job's outputs may take {spec.resources.disk_mb}"
                    f" MB; this provider keeps at most {p.kept.max_bytes >> 20} MB of them")
    return None


def clip_output(data: bytes, cap: int = MAX_OUTPUT_TEXT) -> tuple[str, int]:
    """`clip_text`, then at most `cap` UTF-8 bytes of it (never half a character), and
    the UTF-8 bytes cut (0 if it kept everything)."""
    text, _ = clip_text(data)
    kept = text.encode("utf-8")
    if len(kept) > cap:
        text = kept[:cap].decode("utf-8", "ignore")
    whole = len(data.decode("utf-8", "replace").encode("utf-8"))
    return text, max(0, whole - len(text.encode("utf-8")))


class _Marks:
    """Phase durations of one job here, logged at debug level when it ends."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.ms: list[str] = []

    def __call__(self, phase: str) -> None:
        now = time.monotonic()
        self.ms.append(f"{phase}={(now - self.last) * 1000:.1f}")
        self.last = now


async def _run(p: Provider, stream: Stream, spec: JobSpec, job_id: str, quote: Quote) -> None:
    """One job, with the output capture its spec asks for (whole output files kept in a
    folder of ours, out of the job's reach, removed when the job is done)."""
    whole = Path(tempfile.mkdtemp(prefix="offload-output-")) if spec.full_output else None
    how = Capture(cap=min(spec.output_cap or MAX_OUTPUT_TEXT, MAX_OUTPUT_TEXT),
                  files={k: whole / v for k, v in FULL_OUTPUT.items()} if whole else {},
                  file_limit=min(spec.resources.disk_mb << 20, MAX_OUTPUT_BYTES // 2))
    token = capture.set(how)
    try:
        if spec.detach and not p.kept.reserve(job_id, spec.resources.disk_mb << 20):
            await try_send(stream, wire.ErrorReply(
                code="busy", message="no room left here to keep a detached job's outputs; "
                "try later or another provider", retry_after_s=60.0))
            return
        await _run_captured(p, stream, spec, job_id, quote, how)
    finally:
        p.kept.release(job_id)
        capture.reset(token)
        if whole is not None:
            shutil.rmtree(whole, ignore_errors=True)


def whole_outputs(how: Capture, found: list[tuple[OutputFile, Path]]
                  ) -> list[tuple[OutputFile, Path]]:
    """The job's outputs and, when asked, the files of its whole stdout and stderr (a
    name the job took itself gets a numbered one)."""
    names = {o.name for o, _ in found}
    extra: list[tuple[OutputFile, Path]] = []
    for path in how.files.values():
        if not path.is_file():
            continue
        name, n = path.name, 1
        while name in names:
            name, n = f"{path.stem}-{n}{path.suffix}", n + 1
        names.add(name)
        extra.append((OutputFile(name=name, sha256=file_sha256(path),
                                 size=path.stat().st_size), path))
    return found + extra


async def _run_captured(p: Provider, stream: Stream, spec: JobSpec, job_id: str, quote: Quote,
                        how: Capture) -> None:
    assert p.executor is not None
    mark = _Marks()
    async with p.executor.slot(spec, job_id) as slot:
        mark("slot")
        await receive_inputs(stream, spec, job_id, slot, cache=p.cache, metrics=p.metrics,
                             on_cached=p.wake_advertiser, identity=p.identity)
        mark("inputs")
        log.info("job %s from %s: running %s%s", job_id[:12], spec.requester[:16],
                 spec.entrypoint, " (detached)" if spec.detach else "")
        with p.board.running(job_id, spec.requester, detached=spec.detach) as live:
            if spec.detach:
                await stream.send(wire.Detached(job_id=job_id, keep_s=int(p.kept.keep_s)))
                await stream.close()
            await _run_live(p, stream, spec, job_id, quote, how, slot, live, mark)
    mark("teardown")
    log.debug("job %s phases (ms): %s", job_id[:12], " ".join(mark.ms))


async def _run_live(p: Provider, stream: Stream, spec: JobSpec, job_id: str, quote: Quote,
                    how: Capture, slot: Slot, live: LiveJob, mark: _Marks) -> None:
    """The job in its slot, its output to the board (and the stream unless detached), its
    signed result kept and sent with the outputs (kept here instead when detached)."""
    async with trio.open_nursery() as nursery:
        if not spec.detach:
            nursery.start_soon(_heartbeat, stream)
        send, recv = trio.open_memory_channel[tuple[str, bytes]](LIVE_BACKLOG)
        async with trio.open_nursery() as forwarding:
            if not spec.detach:
                forwarding.start_soon(forward_output, stream, recv)
            with send:
                token = output_sink.set(partial(_tee, live, send))
                stop = stop_signal.set(live.stop)
                try:
                    ex = await slot.run()
                finally:
                    stop_signal.reset(stop)
                    output_sink.reset(token)
            forwarding.cancel_scope.deadline = trio.current_time() + 2.0
        mark("sandbox")
        # heartbeats go on while outputs are hashed (large outputs, slow disks)
        found = await trio.to_thread.run_sync(collect_outputs, slot.out_dir)
        outputs = await trio.to_thread.run_sync(whole_outputs, how, found)
        nursery.cancel_scope.cancel()
    mark("collect")
    proc = ex.process
    price_charged = charge(
        p.config.price, spec.resources, cpu_s=proc.cpu_s, wall_s=proc.wall_s,
        bytes_in=sum(f.size for f in spec.inputs),
        bytes_out=sum(o.size for o, _ in outputs), quoted=quote.max_charge)
    stdout, out_lost = clip_output(proc.stdout, how.cap)
    stderr, err_lost = clip_output(proc.stderr, how.cap)
    result = JobResult(
        job_id=job_id, provider=p.identity.peer_id, requester=spec.requester,
        status=proc.status, exit_code=proc.exit_code, stdout=stdout, stderr=stderr,
        stdout_truncated=proc.stdout_truncated or out_lost > 0,
        stderr_truncated=proc.stderr_truncated or err_lost > 0,
        stdout_dropped=min(MAX_SAFE, proc.stdout_dropped + out_lost),
        stderr_dropped=min(MAX_SAFE, proc.stderr_dropped + err_lost),
        outputs=tuple(o for o, _ in outputs), limits_hit=ex.limits_hit,
        usage=Usage(wall_s=round(proc.wall_s, 3), cpu_s=round(proc.cpu_s, 3),
                    gpu_s=0.0, peak_memory_mb=proc.peak_memory_mb),
        sandbox=ex.profile, price_charged=price_charged, finished_at=p.now_ms())
    signed = sign(result, p.identity)
    await trio.to_thread.run_sync(p.results.put, job_id, signed.raw)
    m = p.metrics
    m.jobs_total.labels(outcome=proc.status).inc()
    m.job_seconds.observe(proc.wall_s)
    m.earnings_total.inc(price_charged)
    mark("sign+store")
    if spec.detach:
        kept = await trio.to_thread.run_sync(p.kept.keep, job_id, spec.requester,
                                             signed.raw, outputs)
        log.info("job %s (detached): %s (exit %d) in %.2f s, %s", job_id[:12],
                 proc.status, proc.exit_code, proc.wall_s,
                 "kept for its requester" if kept else "its outputs could not be kept")
        return
    await stream.send(wire.ResultReady(result=signed.raw))
    on = await outputs_stream(stream, job_id, outputs)
    if on is None:
        log.info("job %s: %s fetches the outputs on a new stream", job_id[:12],
                 spec.requester[:16])
        if not await p.held_outputs.hold(job_id, spec.requester, outputs):
            log.info("job %s: the outputs were not fetched", job_id[:12])
            await try_send(stream, wire.ErrorReply(
                code="expired", message="the outputs were not fetched in time"))
    else:
        with transfer_deadline(sum(o.size for o, _ in outputs), f"the outputs of job "
                               f"{job_id[:12]}"):
            await send_outputs(on, outputs, metrics=m, identity=p.identity)
    mark("send")
    log.info("job %s: %s (exit %d%s) in %.2f s", job_id[:12], proc.status, proc.exit_code,
             f", hit {','.join(ex.limits_hit)}" if ex.limits_hit else "", proc.wall_s)


def _tee(live: LiveJob, send: trio.MemorySendChannel[tuple[str, bytes]], name: str,
         data: bytes) -> None:
    live.write(name, data)
    offer(send, name, data)


async def _heartbeat(stream: Stream) -> None:
    started = time.monotonic()
    while True:
        await trio.sleep(HEARTBEAT_S)
        await stream.send(wire.Running(elapsed_s=round(time.monotonic() - started, 3)))
