"""The requester's money path: escrow per attempt, then release, reject or refund once.

Every job a provider quotes above zero locks the quote's maximum in this node's ledger
before any input moves. An accepted result releases its charge (the rest comes back) and
sends the provider our signed Receipt and cumulative Cheque over `/offload/settle/1.0.0`;
a wrong result is rejected (refund, and a signed receipt that is evidence against the
provider); a failure, timeout or cancellation refunds all. The ledger's transition table
makes a second release impossible, so no job is ever paid twice.

A job quoted at zero locks nothing, but it is recorded all the same (`offload jobs`) and
its verdict is signed as a receipt with charge 0, sent and gossiped like any other, so
reputation learns from free work too. Every job's record also gets its phases' timings
(`timed`) and where its result's files were put (`placed`).

A release or refund the ledger cannot write now (disk full, read-only, locked) stays
pending: it is retried when the session ends, and if it still fails the session's lease
(escrows.py) is kept, so the next command on the home sweeps it (`sweep`).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from ledger import EscrowStateError, Ledger, LedgerError, RefundReason
from node.errors import NodeError, RemoteError
from node.net.guard import guarded
from node.net.host import Host
from node.requester import events
from node.requester.escrows import (
    Lease,
    Orphan,
    drop_dead_leases,
    find_orphans,
    read_leases,
    sweeping,
)
from node.requester.events import Emit, ignore
from node.requester.holds import Detached, DetachedBook, Hold, HoldBook
from node.requester.verify import verify_result_bytes
from protocol import JobResult, Signed, wire
from protocol.exchange import SETTLE
from protocol.sessions import SessionResult

log = logging.getLogger(__name__)
SETTLE_TIMEOUT_S = 10.0
RECEIPTS_IN_FLIGHT = 4
"""Background receipts sent at once, below a provider's share of streams per peer."""
SWEEP_TIMEOUT_S = 15.0
"""The most a sweep spends asking providers for results, all orphans together."""
SWEEP_PARALLEL = 8
T = TypeVar("T")
Failure = (LedgerError, sqlite3.Error)
"""What a ledger write may raise that leaves the escrow as it was."""
Charged = Signed[JobResult] | Signed[SessionResult]
"""A signed charge to settle: a job's result, or a session's end or last checkpoint."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Pending:
    """A settlement the ledger could not write yet."""

    kind: Literal["release", "refund"]
    signed: Charged | None = None
    reason: RefundReason = "failed"
    detail: str = ""
    result_digest: str = ""


@dataclasses.dataclass(slots=True)
class Swept:
    """What a sweep did with orphaned escrows."""

    released: list[str] = dataclasses.field(default_factory=list)
    refunded: list[str] = dataclasses.field(default_factory=list)
    waiting: list[str] = dataclasses.field(default_factory=list)
    """Orphans left locked: their provider was unreachable and the grace has not passed."""


Proof = tuple[Literal["result", "none", "unreachable"], Signed[JobResult] | None]


class Payments:
    """Escrow and settlement for one requester session (no ledger: nothing is charged)."""

    def __init__(self, ledger: Ledger | None, host: Host | None, *, emit: Emit = ignore,
                 publish: Callable[[bytes], Awaitable[None]] | None = None,
                 holds: HoldBook | None = None, lease: Lease | None = None) -> None:
        self.ledger = ledger
        self.holds = holds if holds is not None else HoldBook(None)
        self.host = host
        self.emit = emit
        self.publish = publish
        """Gossips each receipt (see gossip.py) besides sending it to its provider."""
        self.lease = lease
        """Claims each job before its escrow is locked (escrows.py); None: no claims."""
        self.background: trio.Nursery | None = None
        """Where receipts go out (gossip, settle stream) without holding up the job that
        was settled; None: each settlement waits for its own."""
        self._in_flight = trio.CapacityLimiter(RECEIPTS_IN_FLIGHT)
        self._locked: set[str] = set()
        self._free: set[str] = set()
        """Free jobs this session recorded and has not given a verdict on yet."""
        self._pending: dict[str, _Pending] = {}
        self.paid = 0
        """Micro-credits released in this session."""

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kw))

    def reputations(self) -> dict[str, float]:
        return self.ledger.reputations() if self.ledger is not None else {}

    async def lock(self, job_id: str, provider: str, amount: int) -> None:
        """Escrow `amount` for the job (InsufficientFunds, a local error, if it cannot); a
        free job (`amount` 0) is only recorded."""
        if self.ledger is None:
            return
        if amount <= 0:  # claimed too: a sweep closes the record if this process dies
            if self.lease is not None:
                self.lease.claim(job_id, provider)
            await self._run(self.ledger.start_free, job_id, provider)
            self._free.add(job_id)
            return
        if self.lease is not None:
            self.lease.claim(job_id, provider, self._addrs(provider))
        await self._run(self.ledger.lock, job_id, provider, amount)
        self._locked.add(job_id)

    def is_locked(self, job_id: str) -> bool:
        return job_id in self._locked

    @property
    def unsettled(self) -> int:
        """Escrows this session locked and has not settled yet (pending ones included)."""
        return len(self._locked)

    async def refund(self, job_id: str, reason: RefundReason, *, detail: str = "",
                     result_digest: str = "") -> None:
        """Give the whole escrow back (shielded: runs even while the caller is cancelled).
        Never raises: a refund the ledger cannot write stays pending."""
        if job_id in self._free:
            await self._close_free(job_id, reason, detail=detail, result_digest=result_digest)
            return
        if self.ledger is None or job_id not in self._locked:
            return
        op = _Pending("refund", reason=reason, detail=detail[:200], result_digest=result_digest)
        try:
            await self._settle(job_id, op)
        except Failure as exc:
            log.error("refunding job %s failed, it stays pending: %s", job_id[:12], exc)

    async def accept(self, signed: Charged) -> None:
        """Pay a verified result's charge; tell the provider (receipt + cheque). A ledger
        failure is raised, and the release stays pending."""
        job_id = signed.message.job_id
        if job_id in self._free:
            await self._note(job_id, result_status=signed.message.status)
            await self._close_free(job_id, "accepted", result_digest=signed.digest)
            return
        if self.ledger is None or job_id not in self._locked:
            return
        await self._note(job_id, result_status=signed.message.status)
        await self._settle(job_id, _Pending("release", signed=signed))

    async def reject(self, signed: Charged, why: str) -> None:
        """A wrong result: nothing is paid, and the provider gets the signed rejection."""
        r = signed.message
        if r.job_id in self._free:
            await self._note(r.job_id, result_status=r.status)
            await self._close_free(r.job_id, "rejected", detail=why[:200],
                                   result_digest=signed.digest)
            return
        if self.ledger is None or r.job_id not in self._locked:
            return
        await self._note(r.job_id, result_status=r.status)
        await self._settle(r.job_id, _Pending("refund", reason="rejected", detail=why[:200],
                                              result_digest=signed.digest))

    async def _close_free(self, job_id: str, verdict: Literal["accepted"] | RefundReason, *,
                          detail: str = "", result_digest: str = "") -> None:
        """A free job's verdict: its record closed, its receipt (if any) sent on. Never
        raises; a verdict the ledger cannot write leaves the record running."""
        assert self.ledger is not None
        self._free.discard(job_id)
        try:
            with trio.CancelScope(shield=True):
                provider = (await self._run(self.ledger.record, job_id)).provider
                receipt = await self._run(self.ledger.close_free, job_id, verdict,
                                          detail=detail[:200], result_digest=result_digest)
        except Failure as exc:
            log.error("recording the verdict on free job %s failed: %s", job_id[:12], exc)
            return
        if receipt is not None:
            await self._notify(provider, receipt.raw, b"", job_id)

    async def _note(self, job_id: str, **fields: Any) -> None:
        """Add to a job's record (see Ledger.note); never raises: a record is no payment."""
        if self.ledger is None:
            return
        try:
            with trio.CancelScope(shield=True):
                await self._run(self.ledger.note, job_id, **fields)
        except Failure as exc:
            log.warning("could not add to the record of job %s: %s", job_id[:12], exc)

    async def timed(self, job_id: str, phases: dict[str, float]) -> None:
        """The milliseconds each phase of the job's exchange took, in its record (if it
        has one still open: a job is recorded from its quote on)."""
        if job_id in self._locked or job_id in self._free:
            await self._note(job_id, phases=phases)

    async def placed(self, job_id: str, out_dir: Path) -> None:
        """Where the job's accepted result's files are, in its record."""
        await self._note(job_id, out_dir=str(out_dir.resolve()))

    async def _settle(self, job_id: str, op: _Pending) -> None:
        """Write `op` to the ledger, then tell the provider; on a ledger failure the op is
        kept pending (and raised); an escrow someone else closed meanwhile is let go."""
        assert self.ledger is not None
        self._pending[job_id] = op
        try:
            with trio.CancelScope(shield=True):
                job = await self._run(self.ledger.job, job_id)
                if op.kind == "release":
                    assert op.signed is not None
                    pay = await self._run(self.ledger.release, job_id,
                                          op.signed.message.price_charged,
                                          result_digest=op.signed.digest)
                else:
                    receipt = await self._run(self.ledger.refund, job_id, op.reason,
                                              detail=op.detail, result_digest=op.result_digest)
        except EscrowStateError as exc:  # a sweep or `ledger refund` closed it already
            log.warning("job %s: %s", job_id[:12], exc)
            self._forget(job_id)
            return
        self._forget(job_id)
        if op.kind == "release":
            assert op.signed is not None
            charge = op.signed.message.price_charged
            self.paid += charge
            self.emit(events.Paid(job_id=job_id, provider=job.provider, amount=charge,
                                  refunded=job.amount - charge))
            await self._notify(job.provider, pay.receipt.raw, pay.cheque.raw, job_id)
        else:
            self.emit(events.Refunded(job_id=job_id, provider=job.provider, amount=job.amount,
                                      reason=op.reason))
            if receipt is not None:
                await self._notify(job.provider, receipt.raw, b"", job_id)

    def _forget(self, job_id: str) -> None:
        self._locked.discard(job_id)
        self._pending.pop(job_id, None)

    async def detach(self, entry: Detached, book: DetachedBook) -> None:
        """A job that runs on without this process: its escrow stays locked, kept from the
        sweep by `book` (written first), and this session no longer settles it."""
        await self._run(book.add, entry)
        await self._note(entry.job_id, detached=True)
        self._free.discard(entry.job_id)
        self._forget(entry.job_id)

    async def adopt(self, entry: Detached) -> None:
        """Settle a detached job in this session: claimed in its lease, then open here."""
        if self.ledger is None:
            return
        if self.lease is not None:
            self.lease.claim(entry.job_id, entry.provider, entry.addrs)
        (self._free if entry.amount == 0 else self._locked).add(entry.job_id)

    async def undetach(self, job_id: str, book: DetachedBook) -> None:
        await self._run(book.remove, job_id)

    async def hold(self, signed: Signed[JobResult], until: float, *, strikes: int = 0) -> bool:
        """Keep an unreplicated result's escrow locked until `until` (see holds.py);
        False (and nothing held) when nothing was escrowed."""
        r = signed.message
        if r.job_id in self._free:  # nothing to hold back: accepted now
            await self.accept(signed)
            return False
        if self.ledger is None or r.job_id not in self._locked:
            return False
        await self._note(r.job_id, result_status=r.status, held=True)
        await self._run(self.holds.add, Hold(
            job_id=r.job_id, provider=r.provider, charge=r.price_charged,
            result_digest=signed.digest, until=until, strikes=strikes))
        self._forget(r.job_id)
        return True

    async def settle_holds(self, now: float, strikes: Callable[[str], int]) -> list[Hold]:
        """Release held payments whose hold ended; refuse those to providers caught since
        the hold began (`strikes`: how often a provider was caught so far). Returns the
        refused holds: results the user should treat as suspect. A hold the ledger cannot
        settle now stays for a later session."""
        refused: list[Hold] = []
        if self.ledger is None:
            return refused
        for h in self.holds.all():
            caught = strikes(h.provider) > h.strikes
            if not caught and now < h.until:
                continue
            try:
                with trio.CancelScope(shield=True):
                    if caught:
                        receipt = await self._run(
                            self.ledger.refund, h.job_id, "rejected", detail="the provider "
                            "was caught returning a wrong result while this payment was held",
                            result_digest=h.result_digest)
                    else:
                        pay = await self._run(self.ledger.release, h.job_id, h.charge,
                                              result_digest=h.result_digest)
            except EscrowStateError:  # another session on this home settled it
                await self._run(self.holds.remove, h.job_id)
                continue
            except Failure as exc:
                log.error("settling the held payment of job %s failed; it stays held: %s",
                          h.job_id[:12], exc)
                continue
            await self._run(self.holds.remove, h.job_id)
            if caught:
                refused.append(h)
                log.warning("job %s: payment to %s refused, the provider was caught cheating "
                            "during the hold; treat that result as suspect", h.job_id[:12],
                            h.provider[:16])
                self.emit(events.Refunded(job_id=h.job_id, provider=h.provider,
                                          amount=h.charge, reason="rejected"))
                if receipt is not None:
                    await self._tell(h.provider, receipt.raw, b"", h.job_id)
            else:
                self.paid += h.charge
                self.emit(events.Paid(job_id=h.job_id, provider=h.provider, amount=h.charge))
                await self._tell(h.provider, pay.receipt.raw, pay.cheque.raw, h.job_id)
        return refused

    async def settle_all(self, reason: RefundReason = "failed") -> None:
        """On the way out: retry pending settlements, refund every other escrow this
        session still holds, close free jobs left open. Never raises; what still fails
        is left to a sweep."""
        for job_id in list(self._free):
            await self._close_free(job_id, reason)
        for job_id in list(self._locked):
            op = self._pending.get(job_id) or _Pending("refund", reason=reason)
            try:
                await self._settle(job_id, op)
            except Failure as exc:
                log.error("settling job %s failed; the next command on this home will "
                          "sweep it: %s", job_id[:12], exc)
            except Exception as exc:  # never mask the error the session ends with
                log.error("settling job %s failed: %s", job_id[:12], exc)

    def close(self) -> None:
        """Let go of the lease: removed if everything was settled, else kept for a sweep."""
        if self.lease is not None:
            self.lease.close(keep=bool(self._locked))

    # -- orphans -----------------------------------------------------------------------

    async def sweep(self, home: Path, *, now_ms: int | None = None) -> Swept:
        """Settle escrows of dead processes on this home (escrows.py): release the charge
        of a result the provider proves, refund one it disclaims, refund one whose
        provider cannot be asked once its grace has passed. Never raises."""
        swept = Swept()
        if self.ledger is None:
            return swept
        try:
            with sweeping(home) as mine:
                if mine:
                    await self._sweep(home, swept, now_ms)
        except Failure as exc:
            log.error("sweeping orphaned escrows failed; the next command retries: %s", exc)
        return swept

    async def _sweep(self, home: Path, swept: Swept, now_ms: int | None) -> None:
        assert self.ledger is not None
        ledger = self.ledger
        orphans = await self._run(find_orphans, ledger, home,
                                  exclude=set(self._locked))
        proofs: dict[str, Proof] = {}
        if orphans:
            limit = trio.Semaphore(SWEEP_PARALLEL)

            async def ask(o: Orphan) -> None:
                async with limit:
                    proofs[o.job.job_id] = await self.ask_result(o)

            with trio.move_on_after(SWEEP_TIMEOUT_S):
                async with trio.open_nursery() as nursery:
                    for o in orphans:
                        nursery.start_soon(ask, o)
        now = now_ms if now_ms is not None else _wall_ms()
        for o in orphans:
            job_id = o.job.job_id
            kind, signed = proofs.get(job_id, ("unreachable", None))
            if kind == "unreachable" and now < o.refund_after_ms:
                swept.waiting.append(job_id)
                continue
            self._locked.add(job_id)
            if o.detached:
                await self._run(DetachedBook.load(home).remove, job_id)
            try:
                if kind == "result" and signed is not None:
                    await self._settle(job_id, _Pending("release", signed=signed))
                    swept.released.append(job_id)
                else:
                    await self._settle(job_id, _Pending(
                        "refund", reason="cancelled",
                        detail="the requester process that held it is gone"))
                    swept.refunded.append(job_id)
            except Failure as exc:
                self._forget(job_id)
                log.error("settling orphaned job %s failed: %s", job_id[:12], exc)
        await self._run(close_dead_free, ledger, home, exclude=set(self._free))
        await self._run(drop_dead_leases, ledger, home)

    async def ask_result(self, o: Orphan) -> Proof:
        """Ask the provider for the signed result of an orphaned job (bounded); a result
        counts only if it verifies, names this job, us and that provider, and charges
        at most what was escrowed."""
        if self.host is None:
            return ("unreachable", None)
        job = o.job
        reply: wire.Frame | None = None
        with trio.move_on_after(SETTLE_TIMEOUT_S):
            try:
                stream = guarded(await self.host.open_stream(
                    job.provider, wire.SETTLE_PROTOCOL, addrs=o.addrs,
                    timeout=SETTLE_TIMEOUT_S), SETTLE, "requester")
                try:
                    await stream.send(wire.ResultQuery(job_id=job.job_id))
                    reply = await stream.receive_within(SETTLE_TIMEOUT_S, "a result")
                finally:
                    await stream.close()
            except (RemoteError, NodeError) as exc:
                log.info("could not ask %s for the result of job %s: %s", job.provider[:16],
                         job.job_id[:12], exc)
            except Exception as exc:  # a hostile or broken peer: count as unreachable
                log.info("asking %s for the result of job %s failed: %r", job.provider[:16],
                         job.job_id[:12], exc)
        if reply is None:
            return ("unreachable", None)
        if not isinstance(reply, wire.ResultReady):
            return ("none", None)
        try:
            signed = verify_result_bytes(reply.result, job_id=job.job_id,
                                         provider=job.provider, requester=self._me())
        except RemoteError as exc:
            log.warning("provider %s proved no result for job %s: %s", job.provider[:16],
                        job.job_id[:12], exc)
            return ("none", None)
        if not 0 <= signed.message.price_charged <= job.amount:
            log.warning("provider %s charged job %s above its escrow", job.provider[:16],
                        job.job_id[:12])
            return ("none", None)
        return ("result", signed)

    def _me(self) -> str:
        assert self.ledger is not None
        return self.ledger.peer_id

    def _addrs(self, provider: str) -> list[str]:
        """The provider's known addresses, so a later sweep can reach it without the DHT."""
        return self.host.known_addrs(provider)[:8] if self.host is not None else []

    async def _notify(self, provider: str, receipt: bytes, cheque: bytes, job_id: str) -> None:
        """`_tell`, in the background when there is one still open."""
        if self.background is not None:
            try:
                self.background.start_soon(self._tell_queued, provider, receipt, cheque, job_id)
                return
            except RuntimeError:  # that nursery is closed: the session is ending
                pass
        await self._tell(provider, receipt, cheque, job_id)

    async def _tell_queued(self, provider: str, receipt: bytes, cheque: bytes,
                           job_id: str) -> None:
        async with self._in_flight:
            await self._tell(provider, receipt, cheque, job_id)

    async def _tell(self, provider: str, receipt: bytes, cheque: bytes, job_id: str) -> None:
        """Best effort: the ledger entry is already final; the provider may ask again."""
        if self.publish is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT_S):
                try:
                    await self.publish(receipt)
                except Exception as exc:
                    log.warning("could not gossip the receipt of job %s: %s", job_id[:12], exc)
        if self.host is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT_S):
            try:
                stream = guarded(await self.host.open_stream(provider, wire.SETTLE_PROTOCOL),
                                 SETTLE, "requester")
                try:
                    await stream.send(wire.Settle(receipt=receipt, cheque=cheque))
                    reply = await stream.receive_within(SETTLE_TIMEOUT_S, "a settle ack")
                finally:
                    await stream.close()
                if isinstance(reply, wire.ErrorReply):
                    log.warning("provider %s refused the receipt of job %s: %s",
                                provider[:16], job_id[:12], reply.message)
            except Exception as exc:  # never fatal: the payment is already final
                log.warning("could not send the receipt of job %s to %s: %s", job_id[:12],
                            provider[:16], exc)


def close_dead_free(ledger: Ledger, home: Path, *,
                    exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Close, as cancelled, the records of free jobs still running whose process is gone
    (no live lease claims them; the records are read before the leases, as for escrows).
    Returns their ids; never raises."""
    closed: list[str] = []
    try:
        kept = DetachedBook.load(home).kept(time.time())
        running = [r.job_id for r in [*ledger.records(status="running"),
                                      *ledger.records(status="detached")]
                   if r.max_charge == 0 and r.job_id not in exclude and r.job_id not in kept]
        live = read_leases(home).live if running else set()
        for job_id in running:
            if job_id in live:
                continue
            try:
                ledger.close_free(job_id, "cancelled",
                                  detail="the requester process that held it is gone")
            except EscrowStateError:  # closed meanwhile by its own process
                continue
            closed.append(job_id)
    except Failure as exc:  # a record is no payment: the next command tries again
        log.warning("could not close the records of dead free jobs: %s", exc)
    if closed:
        log.info("closed the records of %d free job(s) whose process had died", len(closed))
    return closed


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
