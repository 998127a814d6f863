"""A distributed map: N jobs over several providers, results in input order.

scheduler.mapping decides who runs what; this module runs it: `per_provider` worker
tasks per provider run its items. A provider that fails, refuses or vanishes is
dropped and its items move to the others (one that is only `busy` is asked again a
few times first); a straggler gets a second copy on an idle provider and the slower
copy is cancelled (it is never accepted, so never paid). `events.MapProgress` says how
many items are done and failed, of all.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from node.errors import PeerRefused, RemoteError, ResultRejected
from node.net.host import Host
from node.net.peers import PeerBook
from node.requester import events
from node.requester.events import Emit, ignore
from node.requester.exchange import JobOutcome, JobRequest, run_job
from node.requester.payments import Payments
from node.requester.placement import BUSY_TRIES, busy_delay
from protocol import CapacityAd
from scheduler.mapping import ItemState, MapScheduler
from scheduler.scoring import ScoreParts

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class ItemResult:
    index: int
    outcome: JobOutcome | None
    """None when the item failed on every provider it was tried on."""
    error: str | None
    attempts: int


@dataclasses.dataclass(frozen=True, slots=True)
class MapReport:
    items: tuple[ItemResult, ...]
    workers: tuple[str, ...]
    duplicates: int
    retries: int


async def _run_unless_busy(host: Host, ad: CapacityAd, request: JobRequest, dest: Path, *,
                           emit: Emit, payments: Payments, rng: random.Random) -> JobOutcome:
    tries = 0
    while True:
        try:
            return await run_job(host, ad, request, dest, emit=emit, payments=payments)
        except PeerRefused as exc:
            tries += 1
            if exc.code != "busy" or tries > BUSY_TRIES:
                raise
            delay = busy_delay(exc.retry_after_s, tries, rng)
            emit(events.BusyRetry(provider=ad.peer_id, retry_in_s=round(delay, 3),
                                  tries=tries))
            shutil.rmtree(dest, ignore_errors=True)
            await trio.sleep(delay)


def rates(ranked: Sequence[tuple[CapacityAd, ScoreParts]]) -> dict[str, float]:
    """Expected jobs per second of each provider, from its score's run-time estimate."""
    out: dict[str, float] = {}
    for ad, parts in ranked:
        if not math.isfinite(parts.total):
            continue
        run_s = max(parts.seconds, 1e-3)
        out[ad.peer_id] = 1.0 / run_s
    return out


async def run_map(host: Host, ranked: Sequence[tuple[CapacityAd, ScoreParts]],
                  requests: Sequence[JobRequest], out_root: Path, *, peers: PeerBook,
                  max_workers: int = 4, per_provider: int = 2, max_attempts: int = 3,
                  straggler_factor: float = 3.0, min_straggler_s: float = 5.0,
                  emit: Emit = ignore, payments: Payments | None = None,
                  rng: random.Random | None = None) -> MapReport:
    """Run every request, up to `per_provider` at a time on each of at most `max_workers`
    providers; item i's files land in out_root/i. A provider that answers `busy` is asked
    again after its retry_after_s (placement.busy_delay), a few times, before it is dropped."""
    rng = rng or random.Random()
    usable = [(ad, p) for ad, p in ranked if math.isfinite(p.total)][:max_workers]
    ads = {ad.peer_id: ad for ad, _ in usable}
    sched = MapScheduler(len(requests), rates(usable), max_attempts=max_attempts,
                         straggler_factor=straggler_factor, min_straggler_s=min_straggler_s)
    pay = payments if payments is not None else Payments(None, host)
    outcomes: dict[int, JobOutcome] = {}
    errors: dict[int, str] = {}
    scopes: dict[tuple[str, int], trio.CancelScope] = {}
    changed = trio.Event()

    def notify() -> None:
        nonlocal changed
        changed.set()
        changed = trio.Event()
        tally()

    told = (-1, -1)

    def tally(final: bool = False) -> None:
        """A MapProgress when the count of items done or failed moved; at the end every
        item without an outcome counts as failed."""
        nonlocal told
        gone = [i for i in range(len(requests)) if i not in outcomes and (
            final or sched.state(i) is ItemState.FAILED)]
        bad = sum(o.result.status != "ok" for o in outcomes.values())
        now = (len(outcomes) + len(gone), bad + len(gone))
        if now != told:
            told = now
            emit(events.MapProgress(done=now[0], failed=now[1], total=len(requests)))

    async def worker(peer: str) -> None:
        while not sched.finished and peer in sched.workers:
            now = trio.current_time()
            item = sched.next_for(peer, now)
            if item is None:
                wait = sched.wake_after(now)
                with trio.move_on_after(1.0 if wait is None else min(wait + 0.01, 5.0)):
                    await changed.wait()
                continue
            scope = trio.CancelScope()
            scopes[(peer, item)] = scope
            dest = out_root / f".{item}-{peer[:12]}"
            outcome: JobOutcome | None = None
            failure: RemoteError | None = None
            with scope:
                try:
                    outcome = await _run_unless_busy(host, ads[peer], requests[item], dest,
                                                     emit=emit, payments=pay, rng=rng)
                except RemoteError as exc:
                    failure = exc
            scopes.pop((peer, item), None)
            now = trio.current_time()
            if scope.cancelled_caught:
                sched.cancelled(peer, item)
                shutil.rmtree(dest, ignore_errors=True)
            elif outcome is not None:
                kept, losers = sched.done(peer, item, now)
                if kept:
                    await pay.accept(outcome.signed)
                    final = out_root / str(item)
                    shutil.rmtree(final, ignore_errors=True)
                    dest.rename(final)
                    outcomes[item] = dataclasses.replace(outcome, out_dir=final)
                    emit(events.Verified(job_id=outcome.result.job_id, provider=peer,
                                         status=outcome.result.status))
                    errors.pop(item, None)
                else:  # a straggler's slower copy: not needed, so not paid
                    await pay.refund(outcome.result.job_id, "cancelled")
                    shutil.rmtree(dest, ignore_errors=True)
                for loser in losers:
                    if (s := scopes.get((loser, item))) is not None:
                        s.cancel()
            else:
                assert failure is not None
                log.info("item %d failed on %s: %s", item, peer[:16], failure)
                errors[item] = f"{peer[:16]}: {failure}"
                emit(events.Retried(provider=peer, error=str(failure)))
                if isinstance(failure, ResultRejected):
                    peers.trust.record_mismatch(peer, time.time())
                shutil.rmtree(dest, ignore_errors=True)
                sched.failed(peer, item, now, worker_gone=True)
            notify()

    out_root.mkdir(parents=True, exist_ok=True)
    tally()
    async with trio.open_nursery() as nursery:
        for peer in ads:
            for _ in range(max(1, per_provider)):  # providers run several jobs at once
                nursery.start_soon(worker, peer)
    tally(final=True)
    peers.save()
    items = tuple(
        ItemResult(index=i, outcome=outcomes.get(i),
                   error=None if sched.state(i) is ItemState.DONE else errors.get(
                       i, "no provider was left to run it"),
                   attempts=sched.attempts(i))
        for i in range(len(requests)))
    return MapReport(items=items, workers=tuple(ads), duplicates=sched.duplicates,
                     retries=sched.retries)
