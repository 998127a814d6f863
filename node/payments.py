"""The requester's money path: escrow per attempt, then release, reject or refund once.

Every job a provider quotes above zero locks the quote's maximum in this node's ledger
before any input moves. An accepted result releases its charge (the rest comes back) and
sends the provider our signed Receipt and cumulative Cheque over `/offload/settle/1.0.0`;
a wrong result is rejected (refund, and a signed receipt that is evidence against the
provider); a failure, timeout or cancellation refunds all. The ledger's transition table
makes a second release impossible, so no job is ever paid twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ledger import Ledger, LedgerError, RefundReason
from node import events
from node.events import Emit, ignore
from node.holds import Hold, HoldBook
from node.host import Host
from protocol import JobResult, Signed, wire

log = logging.getLogger(__name__)
SETTLE_TIMEOUT_S = 10.0
T = TypeVar("T")


class Payments:
    """Escrow and settlement for one requester session (no ledger: nothing is charged)."""

    def __init__(self, ledger: Ledger | None, host: Host, *, emit: Emit = ignore,
                 publish: Callable[[bytes], Awaitable[None]] | None = None,
                 holds: HoldBook | None = None) -> None:
        self.ledger = ledger
        self.holds = holds if holds is not None else HoldBook(None)
        self.host = host
        self.emit = emit
        self.publish = publish
        """Gossips each receipt (see gossip.py) besides sending it to its provider."""
        self._locked: set[str] = set()
        self.paid = 0
        """Micro-credits released in this session."""

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kw))

    def reputations(self) -> dict[str, float]:
        return self.ledger.reputations() if self.ledger is not None else {}

    async def lock(self, job_id: str, provider: str, amount: int) -> None:
        """Escrow `amount` for the job; InsufficientFunds (a local error) if it cannot."""
        if self.ledger is None or amount <= 0:
            return
        await self._run(self.ledger.lock, job_id, provider, amount)
        self._locked.add(job_id)

    def is_locked(self, job_id: str) -> bool:
        return job_id in self._locked

    async def refund(self, job_id: str, reason: RefundReason, *, detail: str = "",
                     result_digest: str = "") -> None:
        """Give the whole escrow back (shielded: runs even while the caller is cancelled)."""
        if self.ledger is None or job_id not in self._locked:
            return
        self._locked.discard(job_id)
        with trio.CancelScope(shield=True):
            try:
                job = await self._run(self.ledger.job, job_id)
                await self._run(self.ledger.refund, job_id, reason, detail=detail[:200],
                                result_digest=result_digest)
            except LedgerError as exc:
                log.error("refunding job %s failed: %s", job_id[:12], exc)
                return
        self.emit(events.Refunded(job_id=job_id, provider=job.provider, amount=job.amount,
                                  reason=reason))

    async def accept(self, signed: Signed[JobResult]) -> None:
        """Pay a verified result's charge; tell the provider (receipt + cheque)."""
        r = signed.message
        if self.ledger is None or r.job_id not in self._locked:
            return
        self._locked.discard(r.job_id)
        with trio.CancelScope(shield=True):
            job = await self._run(self.ledger.job, r.job_id)
            pay = await self._run(self.ledger.release, r.job_id, r.price_charged,
                                  result_digest=signed.digest)
        self.paid += r.price_charged
        self.emit(events.Paid(job_id=r.job_id, provider=r.provider, amount=r.price_charged,
                              refunded=job.amount - r.price_charged))
        await self._tell(r.provider, pay.receipt.raw, pay.cheque.raw, r.job_id)

    async def hold(self, signed: Signed[JobResult], until: float, *, strikes: int = 0) -> bool:
        """Keep an unreplicated result's escrow locked until `until` (see holds.py);
        False (and nothing held) when nothing was escrowed."""
        r = signed.message
        if self.ledger is None or r.job_id not in self._locked:
            return False
        self._locked.discard(r.job_id)
        self.holds.add(Hold(job_id=r.job_id, provider=r.provider, charge=r.price_charged,
                            result_digest=signed.digest, until=until, strikes=strikes))
        return True

    async def settle_holds(self, now: float, strikes: Callable[[str], int]) -> list[Hold]:
        """Release held payments whose hold ended; refuse those to providers caught since
        the hold began (`strikes`: how often a provider was caught so far). Returns the
        refused holds: results the user should treat as suspect."""
        refused: list[Hold] = []
        if self.ledger is None:
            return refused
        for h in self.holds.all():
            if strikes(h.provider) > h.strikes:
                with trio.CancelScope(shield=True):
                    receipt = await self._run(
                        self.ledger.refund, h.job_id, "rejected", detail="the provider was "
                        "caught returning a wrong result while this payment was held",
                        result_digest=h.result_digest)
                self.holds.remove(h.job_id)
                refused.append(h)
                log.warning("job %s: payment to %s refused, the provider was caught cheating "
                            "during the hold; treat that result as suspect", h.job_id[:12],
                            h.provider[:16])
                self.emit(events.Refunded(job_id=h.job_id, provider=h.provider,
                                          amount=h.charge, reason="rejected"))
                if receipt is not None:
                    await self._tell(h.provider, receipt.raw, b"", h.job_id)
            elif now >= h.until:
                with trio.CancelScope(shield=True):
                    pay = await self._run(self.ledger.release, h.job_id, h.charge,
                                          result_digest=h.result_digest)
                self.holds.remove(h.job_id)
                self.paid += h.charge
                self.emit(events.Paid(job_id=h.job_id, provider=h.provider, amount=h.charge))
                await self._tell(h.provider, pay.receipt.raw, pay.cheque.raw, h.job_id)
        return refused

    async def reject(self, signed: Signed[JobResult], why: str) -> None:
        """A wrong result: nothing is paid, and the provider gets the signed rejection."""
        r = signed.message
        if self.ledger is None or r.job_id not in self._locked:
            return
        self._locked.discard(r.job_id)
        with trio.CancelScope(shield=True):
            job = await self._run(self.ledger.job, r.job_id)
            receipt = await self._run(self.ledger.refund, r.job_id, "rejected",
                                      detail=why[:200], result_digest=signed.digest)
        self.emit(events.Refunded(job_id=r.job_id, provider=r.provider, amount=job.amount,
                                  reason="rejected"))
        if receipt is not None:
            await self._tell(r.provider, receipt.raw, b"", r.job_id)

    async def settle_all(self, reason: RefundReason = "failed") -> None:
        """Refund every escrow this session still holds (on the way out)."""
        for job_id in list(self._locked):
            await self.refund(job_id, reason)

    async def _tell(self, provider: str, receipt: bytes, cheque: bytes, job_id: str) -> None:
        """Best effort: the ledger entry is already final; the provider may ask again."""
        if self.publish is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT_S):
                await self.publish(receipt)
        with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT_S):
            try:
                stream = await self.host.open_stream(provider, wire.SETTLE_PROTOCOL)
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
