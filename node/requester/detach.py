"""Jobs that run on without us: `offload submit --detach`, then from any process on the
home `offload result`, `offload logs` and `offload cancel`.

A detached job's escrow stays locked after the process that submitted it exits: the
home's `detached.json` (a `DetachedBook`) keeps it from the orphan sweep until the
provider's keeping time has run out (`Detached.until`). Its result is fetched, verified
and paid like any other; a provider that disclaims it (restarted while it ran, or the
time ran out) has it refunded. Past `until` the sweep settles it as an orphan.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ledger.records import Record
from node.errors import (
    NoProviders,
    NotFinished,
    PeerGone,
    PeerRefused,
    PeerTimeout,
    RemoteError,
    ResultRejected,
    UnknownJob,
    UserError,
)
from node.net.guard import guarded
from node.net.host import Stream
from node.net.transfer import transfer_deadline
from node.requester import events
from node.requester.events import Emit, ignore
from node.requester.exchange import GRACE_S, HEARTBEAT_GRACE_S, DetachedJob, detach_job
from node.requester.exchange import download_outputs as download
from node.requester.holds import Detached, DetachedBook
from node.requester.verify import RESULT_FILE, verify_result_bytes
from protocol import JobResult, Signed, wire
from protocol.exchange import SETTLE

if TYPE_CHECKING:
    from node.requester.session import Job, Session

log = logging.getLogger(__name__)
ASK_S = 15.0
"""The longest wait for a provider's answer to a question about a detached job."""
CANCEL_S = 45.0
"""A cancel waits this long for the stopped job's signed result (the provider, 30 s)."""
WAIT_POLL_S = 2.0
RETRYABLE = ("busy", "draining", "no_sandbox", "too_large", "bad_request", "expired")


def find_job(records: list[Record], prefix: str) -> Record:
    """The one record whose id starts with `prefix` (at least 6 characters)."""
    prefix = prefix.strip().lower()
    if len(prefix) < 6:
        raise UnknownJob("give at least 6 characters of the job id (`offload jobs` lists "
                         "them)")
    found = [r for r in records if r.job_id.startswith(prefix)]
    if not found:
        raise UnknownJob(f"no job of this home has an id starting with {prefix}; "
                         "`offload jobs` lists them")
    if len(found) > 1:
        raise UnknownJob(f"{len(found)} jobs have ids starting with {prefix}; give more "
                         "characters")
    return found[0]


async def submit_detached(session: Session, job: Job) -> DetachedJob:
    """Place `job` on the best provider that takes it detached (others are tried when one
    refuses or fails before it took the job); its escrow stays locked, kept in the book."""
    request = dataclasses.replace(session.check(job), detach=True)
    if job.redundancy != 1 or job.verify != "none":
        raise UserError("--detach runs a job on one provider: drop --redundancy and --verify")
    ranked = await session.candidates(job)
    errors: list[str] = []
    for ad, _ in ranked[:8]:
        try:
            d = await detach_job(session.host, ad, request, emit=session.emit,
                                 payments=session.payments)
        except PeerRefused as exc:
            if exc.code not in RETRYABLE:
                raise
            errors.append(f"{ad.peer_id[:16]}: {exc}")
            continue
        except (PeerGone, PeerTimeout) as exc:
            errors.append(f"{ad.peer_id[:16]}: {exc}")
            continue
        await session.payments.detach(Detached(
            job_id=d.job_id, provider=d.provider,
            addrs=tuple(session.host.known_addrs(d.provider)[:8]) or tuple(ad.addrs[:8]),
            amount=d.quote.max_charge, max_seconds=request.resources.max_seconds,
            accepted_at=d.accepted_at, keep_s=d.keep_s), DetachedBook.load(session.home))
        return d
    raise NoProviders("no provider took the job detached: " + "; ".join(errors[-3:])
                      if errors else "no provider offers what the job needs")


async def _ask(session: Session, provider: str, addrs: tuple[str, ...],
               frame: wire.Frame) -> Stream:
    """A settle stream to the provider opened with `frame`: at the addresses known, else
    at those of its ad found afresh (a restarted provider may listen elsewhere)."""
    try:
        raw = await session.host.open_stream(provider, wire.SETTLE_PROTOCOL, addrs=addrs,
                                             timeout=ASK_S)
    except (PeerGone, PeerTimeout) as first:
        ads = await session.disc.find_ads(limit=50, timeout=ASK_S)
        ad = next((a.message for a in ads if a.message.peer_id == provider), None)
        if ad is None:
            raise PeerGone(f"provider {provider[:16]} cannot be reached ({first}) and has "
                           "no ad in the DHT now; try again later") from first
        raw = await session.host.open_stream(provider, wire.SETTLE_PROTOCOL,
                                             addrs=ad.addrs, timeout=ASK_S)
    stream = guarded(raw, SETTLE, "requester")
    await stream.send(frame)
    return stream


def _where(session: Session, record: Record) -> tuple[Detached | None, tuple[str, ...]]:
    entry = DetachedBook.load(session.home).get(record.job_id)
    addrs = entry.addrs if entry else tuple(session.host.known_addrs(record.provider)[:8])
    return entry, addrs


@dataclasses.dataclass(frozen=True, slots=True)
class Fetched:
    signed: Signed[JobResult]
    out_dir: Path
    charged: int
    refunded: int


async def fetch_result(session: Session, record: Record, out_dir: Path, *,
                       wait: bool = False, emit: Emit = ignore) -> Fetched:
    """Ask the provider for the detached job's signed result (NotFinished while it runs,
    unless `wait`), fetch and check its outputs into `out_dir`, pay it, drop it from the
    book. A provider that disclaims the job gets it refunded."""
    entry, addrs = _where(session, record)
    if entry is None:
        raise UserError(f"job {record.job_id[:12]} is not a detached job of this home "
                        f"(it is {record.status}); `offload show {record.job_id[:12]}` "
                        "prints a saved result")
    pay = session.payments
    signed = await _result_when_done(session, entry, addrs, wait=wait)
    if signed is None:
        await pay.adopt(entry)
        await pay.refund(entry.job_id, "cancelled", detail="the provider kept no result of "
                         "the detached job (restarted, or its time ran out)")
        await pay.undetach(entry.job_id, DetachedBook.load(session.home))
        raise RemoteError(f"provider {entry.provider[:16]} keeps no result of job "
                          f"{entry.job_id[:12]}; its escrow was refunded")
    r = signed.message
    out_dir.mkdir(parents=True, exist_ok=True)
    stream = await _ask(session, entry.provider, addrs, wire.FetchOutputs(job_id=r.job_id))
    try:
        with transfer_deadline(sum(o.size for o in r.outputs),
                               f"the outputs of job {r.job_id[:12]}"):
            await download(stream, session.host.identity, r.outputs, out_dir, lambda o: emit(
                events.Downloading(job_id=r.job_id, provider=r.provider, name=o.name,
                                   size=o.size)),
                events.Meter(emit, r.job_id, r.provider, "down",
                             [(o.name, o.size, 0) for o in r.outputs]))
    finally:
        await stream.close()
    (out_dir / RESULT_FILE).write_bytes(signed.raw)
    await pay.adopt(entry)
    await pay.accept(signed)
    await pay.placed(r.job_id, out_dir)
    await pay.undetach(r.job_id, DetachedBook.load(session.home))
    return Fetched(signed=signed, out_dir=out_dir, charged=r.price_charged,
                   refunded=entry.amount - r.price_charged)


async def _result_when_done(session: Session, entry: Detached, addrs: tuple[str, ...], *,
                            wait: bool) -> Signed[JobResult] | None:
    """The verified signed result; None when the provider disclaims the job."""
    deadline = entry.accepted_at + entry.max_seconds + GRACE_S
    while True:
        stream = await _ask(session, entry.provider, addrs,
                            wire.ResultQuery(job_id=entry.job_id))
        try:
            reply = await stream.receive_within(ASK_S, "the result of a detached job")
        finally:
            await stream.close()
        if isinstance(reply, wire.ResultReady):
            return _check(reply.result, entry, session.peer_id)
        if isinstance(reply, wire.ErrorReply):
            if reply.code == "expired":
                return None
            raise PeerRefused(reply.code, reply.message, reply.retry_after_s)
        assert isinstance(reply, wire.Running)
        if not wait or time.time() > deadline:
            raise NotFinished(f"job {entry.job_id[:12]} still runs on provider "
                              f"{entry.provider[:16]} ({reply.elapsed_s:.0f} s so far); "
                              f"`offload result {entry.job_id[:12]} --wait` waits for it, "
                              f"`offload logs {entry.job_id[:12]} --follow` shows its output")
        await trio.sleep(WAIT_POLL_S)


def _check(raw: bytes, entry: Detached, me: str) -> Signed[JobResult]:
    signed = verify_result_bytes(raw, job_id=entry.job_id, provider=entry.provider,
                                 requester=me)
    if not 0 <= signed.message.price_charged <= entry.amount:
        raise ResultRejected(f"the provider charged job {entry.job_id[:12]} above its "
                             "escrow")
    return signed


async def follow_logs(session: Session, record: Record, *, follow: bool,
                      write: Callable[[str, str], None]) -> Signed[JobResult] | None:
    """The job's output from its provider to `write(stream, text)`: what it kept so far,
    and with `follow` what comes until the job ends. Returns the signed result when the
    job has ended (its stdout and stderr are the saved output), else None."""
    _, addrs = _where(session, record)
    stream = await _ask(session, record.provider, addrs,
                        wire.LogsQuery(job_id=record.job_id, follow=follow))
    try:
        while True:
            frame = await stream.receive_within(HEARTBEAT_GRACE_S, "the job's output")
            if isinstance(frame, wire.Output):
                write(frame.stream, frame.text)
            elif isinstance(frame, wire.LogsEnd):
                if frame.dropped:
                    log.info("the provider no longer keeps the first %d bytes of output",
                             frame.dropped)
                return None
            elif isinstance(frame, wire.ResultReady):
                return verify_result_bytes(frame.result, job_id=record.job_id,
                                           provider=record.provider,
                                           requester=session.peer_id)
            elif isinstance(frame, wire.ErrorReply):
                if frame.code == "expired":
                    raise RemoteError(f"provider {record.provider[:16]} has no output of "
                                      f"job {record.job_id[:12]} (it is not running there "
                                      "and its result is gone)")
                raise PeerRefused(frame.code, frame.message, frame.retry_after_s)
    finally:
        await stream.close()


async def cancel(session: Session, record: Record) -> Signed[JobResult] | None:
    """Stop the job on its provider and return its signed result (None: the provider
    has none). A detached job is then settled here: its charge for what it used is paid
    and the rest of its escrow refunded; a job another process on this home still runs
    is settled by that process."""
    entry, addrs = _where(session, record)
    stream = await _ask(session, record.provider, addrs, wire.CancelJob(job_id=record.job_id))
    try:
        reply = await stream.receive_within(CANCEL_S, "the stopped job's result")
    finally:
        await stream.close()
    if isinstance(reply, wire.ErrorReply) and reply.code != "expired":
        raise PeerRefused(reply.code, reply.message, reply.retry_after_s)
    signed = None
    if isinstance(reply, wire.ResultReady):
        signed = verify_result_bytes(reply.result, job_id=record.job_id,
                                     provider=record.provider, requester=session.peer_id)
    if entry is None:
        return signed
    pay = session.payments
    await pay.adopt(entry)
    if signed is None:
        await pay.refund(entry.job_id, "cancelled", detail="cancelled; the provider kept "
                         "no result")
    else:
        _check(signed.raw, entry, session.peer_id)
        await pay.accept(signed)
    await pay.undetach(entry.job_id, DetachedBook.load(session.home))
    return signed
