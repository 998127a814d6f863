"""Placing one job: rank offers, try providers until one delivers, verify by policy.

A provider that fails, times out, refuses or vanishes is replaced by the next candidate
while the job's deadline allows; only a verified result is ever accepted (and later paid),
so a job that moved never pays twice. With redundancy (fixed k, or adaptive by the first
provider's trust) replicas run at once on distinct providers and a quorum of agreeing
fingerprints decides; an outvoted provider is banned with exponential backoff. A canary
(a job whose answer we know) can ride along with the real job on the same provider.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol

import trio

from node.errors import (
    NeedsUnmet,
    NoProviders,
    PeerGone,
    PeerRefused,
    PeerTimeout,
    PriceRefused,
    RemoteError,
    ResultRejected,
    UserError,
    sole_error,
)
from node.net.host import Host
from node.net.peers import PeerBook
from node.net.proximity import measure
from node.net.transfer import TransferFailed, file_sha256
from node.requester import events
from node.requester.agreement import (
    Comparator,
    Fingerprint,
    canary_name,
    exact,
    fingerprint,
    make_canary,
)
from node.requester.events import Emit, ignore
from node.requester.exchange import JobOutcome, JobRequest, run_job
from node.requester.holds import DEFAULT_HOLD_S
from node.requester.payments import Payments
from protocol import CapacityAd, Resources, Signed
from scheduler import Requirements, meets
from scheduler.requirements import unmet
from scheduler.scoring import JobEstimate, ScoreParts, rank
from scheduler.verification import Mode, Policy, TrustTracker, Verdict

log = logging.getLogger(__name__)
RETRYABLE = (PeerGone, PeerTimeout, PeerRefused, PriceRefused, ResultRejected,
             TransferFailed)
CANARY_RESOURCES = Resources(cpus=1, memory_mb=256, disk_mb=64, max_seconds=60)


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """A provider that did not deliver, and why."""

    provider: str
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class Replica:
    provider: str
    job_id: str
    agreed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    outcome: JobOutcome
    """The accepted result; its files are in outcome.out_dir."""
    replicas: tuple[Replica, ...]
    attempts: tuple[Attempt, ...]
    verification: str
    canaries_passed: int = 0
    held_until: float | None = None
    """Set when the payment is held (see holds.py): unix seconds."""


def verification_policy(redundancy: int, verify: str, trust: TrustTracker, *,
                        what: str = "redundancy") -> Policy:
    """The policy for `--redundancy` / `--verify` (a majority of K; adaptive; or none);
    `what` names the option in the error."""
    if redundancy < 1:
        raise UserError(f"{what} must be at least 1")
    if redundancy > 1:
        return Policy(Mode.REDUNDANCY, k=redundancy // 2 + 1, max_replicas=redundancy + 2,
                      tracker=trust)
    if verify == "adaptive":
        return Policy.adaptive(trust, k=2, max_replicas=4)
    return Policy(Mode.NONE, tracker=trust)


def hold_seconds(redundancy: int, verify: str, hold: float | None = None) -> float:
    """How long an unchecked result's payment is held: only adaptive, single-copy jobs."""
    if verify != "adaptive" or redundancy != 1:
        return 0.0
    return DEFAULT_HOLD_S if hold is None else hold


def job_estimate(request: JobRequest, *, gflop: float = 0.0) -> JobEstimate:
    paths = [request.script, *request.files]
    digests = {file_sha256(p): p.stat().st_size for p in paths if p.is_file()}
    return JobEstimate(resources=request.resources, gflop=gflop,
                       input_digests=tuple(digests), input_bytes_by_digest=digests)


class AdSource(Protocol):
    """Where placement gets ads: the session's offer cache (offers.py), or Discovery."""

    def clock(self) -> float: ...

    async def require_ads(self, capability: str = "cpu", *,
                          want: Callable[[CapacityAd], bool] | None = None
                          ) -> list[Signed[CapacityAd]]: ...


def job_needs(requirements: Requirements, resources: Resources) -> Requirements:
    """The requirements with the job's own sizes: an ad must hold its cpus, memory, GPUs."""
    return dataclasses.replace(requirements, cpus=max(requirements.cpus, resources.cpus),
                               gpus=max(requirements.gpus, resources.gpus),
                               memory_mb=max(requirements.memory_mb, resources.memory_mb))


async def find_candidates(disc: AdSource, requirements: Requirements, job: JobEstimate,
                          peers: PeerBook, *, provider: str | None = None,
                          reputation: dict[str, float] | None = None
                          ) -> list[tuple[CapacityAd, ScoreParts]]:
    """Ads that meet the job's needs (its cpus, memory and GPUs too), not banned, best
    first (see scheduler.scoring); the source searches the DHT only if none of the ads it
    holds would do. NeedsUnmet when no ad is big enough, naming the largest offered."""
    needs = job_needs(requirements, job.resources)

    def want(ad: CapacityAd) -> bool:
        now = disc.clock()
        return ((provider is None or ad.peer_id == provider)
                and meets(ad, needs, now_ms=int(now * 1000))
                and not peers.trust.is_blacklisted(ad.peer_id, now))

    ads = [a.message for a in await disc.require_ads("cpu", want=want)]
    now = disc.clock()
    if provider is not None:
        ads = [a for a in ads if a.peer_id == provider]
        if not ads:
            raise UserError(f"provider {provider} was not found through the DHT; "
                            "run `offload offers` to list the ones that are")
    fit = [a for a in ads if meets(a, needs, now_ms=int(now * 1000))]
    allowed = [a for a in fit if not peers.trust.is_blacklisted(a.peer_id, now)]
    if not allowed:
        short = unmet(ads, needs, now_ms=int(now * 1000))
        if short is not None:
            raise NeedsUnmet(f"no provider meets the job's needs: {short}; ask for less, "
                             "or run `offload offers` to see what is offered")
        banned = len(fit) - len(allowed)
        raise UserError("no provider meets the job's requirements"
                        + (f" ({banned} banned for wrong results)" if banned else "")
                        + "; relax them or run `offload offers` to see what is offered")
    return rank(allowed, job, peers.observations(reputation), now_ms=int(now * 1000))


BUSY_TRIES = 4
"""`busy` answers one provider may give one job before it counts as a failed attempt."""
BUSY_DEFAULT_S = 2.0
"""The first wait when a busy provider names no `retry_after_s`; doubled each time."""
BUSY_MAX_WAIT_S = 30.0
"""The longest one wait for a busy provider, whatever it asks."""
BUSY_JITTER = 0.5
"""Waits are stretched by a random 0 to 50 %, so a burst of requesters spreads out."""


def busy_delay(retry_after_s: float | None, tries: int, rng: random.Random) -> float:
    """How long to wait before asking a provider again after its `tries`-th busy: its
    `retry_after_s` (else BUSY_DEFAULT_S doubled per try), capped, plus jitter."""
    if retry_after_s is None or not math.isfinite(retry_after_s) or retry_after_s <= 0:
        base = BUSY_DEFAULT_S * 2.0 ** max(0, tries - 1)
    else:
        base = retry_after_s
    return float(min(base, BUSY_MAX_WAIT_S) * (1.0 + BUSY_JITTER * rng.random()))


class Pool:
    """Ranked candidates handed out once each: replicas never share a provider. A busy
    provider can be put back with a time before which it is not handed out."""

    def __init__(self, ranked: Sequence[tuple[CapacityAd, ScoreParts]]) -> None:
        self._ads = [ad for ad, _ in ranked]
        self._later: list[tuple[float, CapacityAd]] = []

    def peek(self) -> CapacityAd | None:
        return self._ads[0] if self._ads else None

    def take(self, now: float = -math.inf) -> CapacityAd | None:
        """The best fresh candidate, else a deferred one whose time has come."""
        if self._ads:
            return self._ads.pop(0)
        if self._later and self._later[0][0] <= now:
            return self._later.pop(0)[1]
        return None

    def defer(self, ad: CapacityAd, until: float) -> None:
        self._later.append((until, ad))
        self._later.sort(key=lambda x: x[0])

    def wake_at(self) -> float | None:
        """When the next deferred candidate may be taken (None: none is deferred)."""
        return self._later[0][0] if self._later else None

    def __len__(self) -> int:
        return len(self._ads) + len(self._later)


@dataclasses.dataclass(slots=True, kw_only=True)
class Placer:
    """One job's placement: retries, replicas, canaries, all within one deadline."""

    host: Host
    peers: PeerBook
    policy: Policy = dataclasses.field(default_factory=Policy.none)
    same: Comparator = exact
    canary: bool = False
    replicas: int = 1
    """At least this many replicas (fixed redundancy); the policy may ask for more."""
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    emit: Emit = ignore
    payments: Payments | None = None
    attempts: list[Attempt] = dataclasses.field(default_factory=list)
    canaries_passed: int = 0
    last_error: RemoteError | None = None
    hold_s: float = 0.0
    """Hold the payment of a result no second provider checked (adaptive; see holds.py)."""
    held_until: float | None = None
    busy: dict[str, int] = dataclasses.field(default_factory=dict)
    """`busy` answers per provider so far."""
    on_gone: Callable[[str], None] | None = None
    """Told the peer id of a provider that could not be reached (the offer cache drops it)."""

    async def place(self, ranked: Sequence[tuple[CapacityAd, ScoreParts]],
                    request: JobRequest, out_dir: Path, *, deadline_s: float) -> Placement:
        pool = Pool(ranked)
        first = pool.peek()
        if first is None:
            raise NoProviders("no candidate provider for this job")
        deadline = trio.current_time() + deadline_s
        planned = max(self.replicas, self.policy.plan(first.peer_id, self.rng))
        if self.policy.mode is Mode.ADAPTIVE:
            planned = min(planned, len(pool))  # unreplicated then; its payment is held
        if planned > len(pool):
            raise UserError(f"verification needs {planned} different providers but only "
                            f"{len(pool)} qualify; lower --redundancy or relax --where")
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".replicas-", dir=out_dir))
        pay = self._pay()
        results: list[tuple[str, tuple[JobOutcome, Fingerprint]]] = []
        try:

            async def replica(i: int) -> None:
                outcome = await self.run_one(pool, request, work / str(i), deadline)
                results.append((outcome.result.provider,
                                (outcome, fingerprint(outcome.result, outcome.out_dir))))

            async with _unwrapped(), trio.open_nursery() as nursery:
                for i in range(planned):
                    nursery.start_soon(replica, i)
            def judge() -> Verdict[tuple[JobOutcome, Fingerprint]]:
                return self.policy.judge(results, planned=planned,
                                         same=lambda a, b: self.same(a[1], b[1]),
                                         now=time.time())

            ran = planned
            verdict = judge()
            while self.policy.needs_more(verdict, ran) and len(pool) > 0:
                await replica(ran)
                ran += 1
                verdict = judge()
            if verdict.accepted is None:
                raise ResultRejected(
                    f"the {ran} providers that ran the job disagree and no "
                    f"{self.policy.quorum_size(planned)} of them agree; nothing was accepted "
                    "or paid: " + ", ".join(p[:16] for p, _ in results))
            accepted, _ = verdict.accepted
            wrong = set(verdict.disagreeing)
            for peer, (o, _) in results:
                if peer in wrong:
                    log.warning("provider %s returned a wrong result; banned, not paid",
                                peer[:16])
                    await pay.reject(o.signed, "outvoted by a quorum of other providers")
                elif len(results) == 1 and self.hold_s > 0:
                    self.held_until = time.time() + self.hold_s
                    if not await pay.hold(o.signed, self.held_until,
                                          strikes=self.peers.trust.strikes(peer)):
                        self.held_until = None
                else:
                    await pay.accept(o.signed)
            for name in accepted.out_dir.iterdir():
                dest = out_dir / name.name
                if dest.exists():
                    shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
                name.rename(dest)
            outcome = dataclasses.replace(accepted, out_dir=out_dir)
        finally:
            for _, (o, _) in results:  # whatever was not settled above: no quorum, an error
                await pay.refund(o.result.job_id, "failed")
            shutil.rmtree(work, ignore_errors=True)
            self.peers.save()
        agreeing = set(verdict.agreeing) if len(results) > 1 else {accepted.result.provider}
        self.emit(events.Verified(job_id=outcome.result.job_id, provider=outcome.result.provider,
                                  status=outcome.result.status, replicas=len(results),
                                  agreed=len(agreeing)))
        return Placement(
            outcome=outcome, attempts=tuple(self.attempts), verification=_describe(
                self.policy, planned), canaries_passed=self.canaries_passed,
            held_until=self.held_until,
            replicas=tuple(Replica(provider=p, job_id=o.result.job_id, agreed=p in agreeing)
                           for p, (o, _) in results))

    async def run_one(self, pool: Pool, request: JobRequest, out_dir: Path,
                      deadline: float) -> JobOutcome:
        """The next candidates in turn until one returns a (signed, checked) result; a
        busy one is asked again after its retry_after_s while the deadline allows."""
        while True:
            ad = pool.take(trio.current_time())
            if ad is None and (wake := pool.wake_at()) is not None:
                await trio.sleep_until(wake)  # only busy ones are left; defer() checked
                continue
            if ad is None:
                if len(self.attempts) <= 1 and self.last_error is not None:
                    raise self.last_error  # one provider, one reason: say it as it was
                tried = "; ".join(f"{a.provider[:16]}: {a.error}" for a in self.attempts)
                raise NoProviders("every candidate provider failed"
                                  + (f" ({tried})" if tried else ""))
            left = deadline - trio.current_time()
            if left <= 1.0:
                raise PeerTimeout("the job's deadline passed before any provider delivered")
            try:
                with trio.fail_after(left):
                    return await self._try(ad, request, out_dir)
            except trio.TooSlowError:
                self.attempts.append(Attempt(ad.peer_id, "deadline passed"))
                raise PeerTimeout("the job's deadline passed before any provider "
                                  "delivered") from None
            except RETRYABLE as exc:
                shutil.rmtree(out_dir, ignore_errors=True)
                if isinstance(exc, PeerRefused) and exc.code == "busy" and \
                        self._retry_later(pool, ad, exc, deadline):
                    continue
                if isinstance(exc, ResultRejected):
                    self.peers.trust.record_mismatch(ad.peer_id, time.time())
                if isinstance(exc, PeerGone) and self.on_gone is not None:
                    self.on_gone(ad.peer_id)
                log.info("provider %s failed (%s); trying the next one", ad.peer_id[:16], exc)
                self.attempts.append(Attempt(ad.peer_id, str(exc)))
                self.last_error = exc
                self.emit(events.Retried(provider=ad.peer_id, error=str(exc)))

    def _retry_later(self, pool: Pool, ad: CapacityAd, exc: PeerRefused,
                     deadline: float) -> bool:
        """Put a busy provider back for later if its tries and the deadline allow."""
        tries = self.busy[ad.peer_id] = self.busy.get(ad.peer_id, 0) + 1
        if tries > BUSY_TRIES:
            return False
        delay = busy_delay(exc.retry_after_s, tries, self.rng)
        at = trio.current_time() + delay
        if at >= deadline - 1.0:
            return False
        pool.defer(ad, at)
        log.info("provider %s is busy; asking again in %.1f s unless another is free",
                 ad.peer_id[:16], delay)
        self.last_error = exc
        self.emit(events.BusyRetry(provider=ad.peer_id, retry_in_s=round(delay, 3),
                                   tries=tries))
        return True

    async def _try(self, ad: CapacityAd, request: JobRequest, out_dir: Path) -> JobOutcome:
        if not self.peers.measured_recently(ad.peer_id):  # warm: its RTT is seconds old
            await measure(self.host, self.peers, ad)  # RTT and our Vivaldi coordinate
        pay = self._pay()
        if not self.canary:
            return await run_job(self.host, ad, request, out_dir, emit=self.emit, payments=pay)
        canary = make_canary()
        box = Path(tempfile.mkdtemp(prefix=".canary-"))
        script = box / canary_name()
        script.write_text(canary.script)
        got: list[JobOutcome] = []
        try:
            async with _unwrapped(), trio.open_nursery() as nursery:
                async def job() -> None:
                    got.append(await run_job(self.host, ad, request, out_dir, emit=self.emit,
                                             payments=pay))

                nursery.start_soon(job)
                check = await run_job(self.host, ad, JobRequest(
                    script=script, resources=CANARY_RESOURCES, runtime=request.runtime,
                    max_price=request.max_price, caps=request.caps), box / "out",
                    payments=pay, emit=self.emit)
        finally:
            shutil.rmtree(box, ignore_errors=True)
        if check.result.stdout != canary.expected_stdout or check.result.status != "ok":
            why = "failed a canary job (a job with a known answer)"
            await pay.reject(check.signed, why)
            await pay.reject(got[0].signed, why)
            raise ResultRejected(f"provider {ad.peer_id[:16]} {why}; its results are not "
                                 "accepted")
        await pay.accept(check.signed)
        self.canaries_passed += 1
        return got[0]

    def _pay(self) -> Payments:
        return self.payments if self.payments is not None else Payments(None, self.host)



@asynccontextmanager
async def _unwrapped() -> AsyncIterator[None]:
    """Re-raise a nursery's one real error as itself, so callers can catch it by type."""
    try:
        yield
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise sole from None


def _describe(policy: Policy, planned: int) -> str:
    if policy.mode is Mode.NONE:
        return "none"
    if policy.mode is Mode.REDUNDANCY:
        return f"redundancy {planned} (quorum {policy.k})"
    return f"adaptive ({planned} replica{'s' if planned > 1 else ''})"
