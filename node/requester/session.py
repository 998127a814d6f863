"""The one requester core under both the CLI and the Python API.

`Job` is the one description of a job (the CLI's flags, the API's `Job`, `@remote`'s
options). A `Session` owns everything a requester opens: identity, ledger, host and DHT
client, receipts gossip, payments, holds and the escrow lease, and it places, maps and
plans jobs. Faces only format: `node.api.requester.Requester` returns Results, the
`offload` verbs print. Option names in errors carry the face's `prefix` ("--" on the
CLI, so `--timeout must be ...`; "" in the API, `timeout must be ...`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import trio

from node.errors import NodeError, UserError
from node.home import init_identity, open_ledger
from node.requester import events
from node.requester.events import Emit, ignore
from node.requester.exchange import JobRequest
from node.requester.payments import Swept
from protocol import CapacityAd, Resources
from protocol.limits import MICRO
from scheduler.scoring import ScoreParts

if TYPE_CHECKING:
    from ledger import Ledger
    from node.config import RequesterSettings
    from node.net.discovery import Discovery
    from node.net.host import Host
    from node.net.peers import PeerBook
    from node.requester.holds import Hold
    from node.requester.mapper import MapReport
    from node.requester.offers import OfferSource
    from node.requester.payments import Payments
    from node.requester.placement import Placement
    from protocol.identity import Identity
    from scheduler import Requirements
    from scheduler.decide import Plan
    from scheduler.verification import Policy

Verify = Literal["none", "adaptive", "canary", "sample"]
"""`sample` is for sessions (@remote classes): a share of calls replayed elsewhere."""
Ranked = list[tuple[CapacityAd, ScoreParts]]


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A script to run on a provider, its arguments and input files, and its needs."""

    script: str | os.PathLike[str]
    _: dataclasses.KW_ONLY
    args: Sequence[str] = ()
    files: Sequence[str | os.PathLike[str]] = ()
    gpus: int = 0
    cpus: int = 1
    memory_gb: float = 2.0
    disk_gb: float = 1.0
    timeout: int | None = None
    """Wall-clock seconds on the provider; None: requester.toml's, else 600."""
    max_price: float | None = None
    """Most credits the job may cost; None: requester.toml's cap, if any."""
    runtime: str | None = None
    where: str | None = None
    """An `offload offers --where` filter, e.g. 'gpu.memory >= 24'."""
    provider: str | None = None
    python: str | None = None
    """Only providers whose runtime runs this Python ("3.11"), as @remote needs."""
    redundancy: int = 1
    verify: Verify = "none"
    tolerance: float | None = None
    deadline: float | None = None
    """Seconds for the whole placement, retries included (default 2 x timeout + 60)."""
    gflop: float | None = None
    hold: float | None = None
    """verify="adaptive": seconds an unchecked result's payment is held (default 600)."""
    output_cap: int = 0
    """Most bytes of stdout (and of stderr) the result carries; 0: the provider's cap."""
    full_output: bool = False
    """The whole stdout and stderr also come back as files in out/."""
    include: Sequence[str | os.PathLike[str]] = ()
    """Local modules (.py) and package folders that travel with the job (include.py)."""
    packages: Sequence[str] = ()
    """Packages the provider's runtime must have ("torch", "numpy>=2"), else NeedsUnmet."""


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    ad: CapacityAd
    score: ScoreParts
    banned: bool = False

    @property
    def peer_id(self) -> str:
        return self.ad.peer_id


@dataclasses.dataclass(frozen=True, slots=True)
class Offers:
    """Offers best first, and what the search missed (None if it saw everything)."""

    offers: list[Offer]
    shortfall: str | None = None
    cached_at: float | None = None
    """Set when the offers came from the offer cache: when it was last searched (unix s)."""


def where_filter(expression: str | None, *, prefix: str = "") -> Any:
    """The parsed `where` expression (None for none); UserError names the option."""
    from scheduler import FilterError, parse

    if expression is None:
        return None
    try:
        return parse(expression)
    except FilterError as exc:
        raise UserError(f"{prefix}where: {exc}") from None


def build_request(job: Job, settings: RequesterSettings, *, prefix: str = "") -> JobRequest:
    """The job as the exchange sees it, with requester.toml's defaults."""
    timeout = job.timeout if job.timeout is not None else settings.timeout_s
    if timeout < 1:
        raise UserError(f"{prefix}timeout must be at least 1 second")
    script, args = Path(job.script), tuple(str(a) for a in job.args)
    files = tuple(Path(f) for f in job.files)
    if job.include:
        from node.requester.include import launcher, pack

        shipped = pack(job.include)
        files += tuple(shipped)
        if any(p.suffix == ".zip" for p in shipped):
            script, args, files = launcher(), (script.name, *args), (script, *files)
    return JobRequest(
        script=script, args=args, files=files,
        resources=Resources(gpus=job.gpus, cpus=job.cpus, max_seconds=timeout,
                            memory_mb=max(1, int(job.memory_gb * 1024)),
                            disk_mb=max(1, int(job.disk_gb * 1024))),
        max_price=(round(job.max_price * MICRO) if job.max_price is not None
                   else settings.max_price),
        runtime=job.runtime or settings.runtime, caps=settings.caps,
        output_cap=job.output_cap, full_output=job.full_output)


async def sweep_orphans(ledger: Ledger, home: Path, identity: Identity) -> Swept:
    """Settle escrows that dead processes on this home left locked (escrows.py), asking
    their providers on a short-lived host only when there are some."""
    import logging

    import trio

    from node.requester.escrows import find_orphans
    from node.requester.payments import Payments, close_dead_free

    if not await trio.to_thread.run_sync(lambda: find_orphans(ledger, home)):
        await trio.to_thread.run_sync(lambda: close_dead_free(ledger, home))
        return Swept()
    from node.net.client import client_listen
    from node.net.host import open_host

    try:
        async with open_host(identity, client_listen()) as host:
            return await Payments(ledger, host).sweep(home)
    except (OSError, NodeError) as exc:
        logging.getLogger(__name__).warning(
            "cannot ask providers about orphaned escrows now: %s", exc)
        return await Payments(ledger, None).sweep(home)


class Session:
    """A requester's session: `async with Session(...) as s`, then offers, place, map, plan.

    On the way in, escrows that dead processes on this home left locked are swept
    (`swept`) and held payments due settle; on the way out held payments settle (those
    refused because their provider was caught are in `suspect`) and escrows still open
    are refunded. Receipts are gossiped, and those of others kept as reputation.
    """

    identity: Identity
    host: Host
    disc: Discovery
    payments: Payments

    def __init__(self, *, home: Path, bootstrap: Sequence[str], settings: RequesterSettings,
                 emit: Emit = ignore, ledger: bool = True, prefix: str = "",
                 clock: Callable[[], float] = time.time, fresh: bool = False) -> None:
        self.home = home
        self.fresh = fresh
        """Search the DHT for the first job instead of trusting the offer cache."""
        self.bootstrap = list(bootstrap)
        self.settings = settings
        self.emit = emit
        self.prefix = prefix
        self.clock = clock
        self._use_ledger = ledger
        self._peers: PeerBook | None = None
        self._stack: AsyncExitStack | None = None
        self._source: OfferSource | None = None
        self._due = True
        self.swept = Swept()
        """Escrows that dead processes on this home had left locked, settled at start."""
        self.suspect: list[Hold] = []
        """Held payments refused when the session closed (their providers were caught)."""

    # the job description --------------------------------------------------------------
    @property
    def peers(self) -> PeerBook:
        if self._peers is None:
            from node.net.peers import PeerBook

            self._peers = PeerBook.load(self.home)
        return self._peers

    def where(self, expression: str | None) -> Any:
        return where_filter(expression, prefix=self.prefix)

    def request(self, job: Job) -> JobRequest:
        return build_request(job, self.settings, prefix=self.prefix)

    def requirements(self, job: Job) -> Requirements:
        from scheduler import Requirements
        from scheduler.requirements import package_spec

        try:
            packages = tuple(package_spec(p) for p in job.packages)
        except ValueError as exc:
            raise UserError(f"{self.prefix}packages: {exc}") from None
        return Requirements(cpus=1, gpus=job.gpus, runtime=job.runtime or self.settings.runtime,
                            where=self.where(job.where), packages=packages)

    def gflop(self, job: Job) -> float:
        from node.requester.plan import script_hints

        return job.gflop if job.gflop is not None else script_hints(Path(job.script)).get(
            "gflop", 0.0)

    def policy(self, job: Job) -> Policy:
        """How the result is checked; UserError for a bad redundancy or tolerance."""
        from node.requester.placement import verification_policy

        if job.verify == "sample":
            raise UserError(f"{self.prefix}verify='sample' is for @remote classes (sessions);"
                            " jobs use redundancy, 'adaptive' or 'canary'")
        policy = verification_policy(job.redundancy, job.verify, self.peers.trust,
                                     what=f"{self.prefix}redundancy")
        if job.tolerance is not None and not 0 <= job.tolerance < 1:
            raise UserError(f"{self.prefix}tolerance is relative: give a number like 1e-6, "
                            "below 1")
        return policy

    def hold_s(self, job: Job) -> float:
        from node.requester.placement import hold_seconds

        hold_s = hold_seconds(job.redundancy, job.verify, job.hold)
        if hold_s < 0:
            raise UserError(f"{self.prefix}hold must be 0 or more seconds")
        return hold_s

    def check(self, job: Job) -> JobRequest:
        """Every local check of `job` (before a host opens): its request."""
        return self._checked(job)[0]

    def _checked(self, job: Job) -> tuple[JobRequest, Policy, float]:
        """`job`'s request, verification policy and hold, checked in that order."""
        request = self.request(job)
        self.requirements(job)
        return request, self.policy(job), self.hold_s(job)

    # opening --------------------------------------------------------------------------
    async def __aenter__(self) -> Session:
        from node.net.client import open_client
        from node.net.gossip import open_gossip, recorder
        from node.requester.holds import HoldBook
        from node.requester.payments import Payments

        self.identity, _ = init_identity(self.home)
        peers = self.peers
        async with AsyncExitStack() as stack:
            ledger = lease = None
            if self._use_ledger:
                from node.requester.escrows import Lease

                ledger = stack.enter_context(open_ledger(self.home, self.identity))
                lease = Lease.open(self.home)
            self.host, self.disc = await stack.enter_async_context(
                open_client(self.identity, self.bootstrap, clock=self.clock))
            gossip = await stack.enter_async_context(
                open_gossip(self.host, on_receipt=recorder(ledger)))
            self.payments = Payments(ledger, self.host, emit=self.emit,
                                     publish=gossip.publish, holds=HoldBook.load(self.home),
                                     lease=lease)
            # receipts go out beside the next job; closed (after the last) before the host
            self.payments.background = await stack.enter_async_context(trio.open_nursery())
            stack.callback(self.payments.close)
            stack.push_async_callback(self._settle_holds)
            stack.push_async_callback(self.payments.settle_all)
            self.swept = await self.payments.sweep(self.home)
            await self.payments.settle_holds(time.time(), peers.trust.strikes)
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)
            nursery.start_soon(self.source.refresh_forever)
            self._stack = stack.pop_all()
        return self

    async def _settle_holds(self) -> None:
        self.suspect = await self.payments.settle_holds(time.time(), self.peers.trust.strikes)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        return await stack.__aexit__(kind, exc, tb)

    @property
    def peer_id(self) -> str:
        return str(self.identity.peer_id)

    @property
    def source(self) -> OfferSource:
        """The offer cache over this session's DHT client (loaded from the home)."""
        if self._source is None:
            from node.home import Home
            from node.requester.offers import OfferCache, OfferSource

            path = Home(self.home).offers
            cache = OfferCache.load(path, clock=self.disc.clock)
            self._source = OfferSource(self.disc, cache, path=path, fresh=self.fresh)
        return self._source

    def cached_offers(self, where: str | None = None, *, cpus: int = 1, gpus: int = 0,
                      timeout: int = 600, limit: int = 50) -> Offers | None:
        """`offers` from the home's offer cache, with no network (None if it holds no fresh
        ad, or `fresh`); `cached_at` says when it was searched."""
        from node.home import Home
        from node.net.addrs import check_bootstrap
        from node.requester.offers import OfferCache

        check_bootstrap(self.bootstrap)  # a command that could not refresh is refused
        if self.fresh:
            return None
        cache = OfferCache.load(Home(self.home).offers, clock=self.clock)
        ads = cache.fresh()
        self._due = cache.due()
        if not ads:
            return None
        reputation: dict[str, float] = {}
        if self._use_ledger and Home(self.home).ledger.exists():
            self.identity, _ = init_identity(self.home)
            with open_ledger(self.home, self.identity) as ledger:
                reputation = ledger.reputations()
        found = self._rank([a.message for a in ads], where, cpus=cpus, gpus=gpus,
                           timeout=timeout, limit=limit, reputation=reputation,
                           now_ms=int(self.clock() * 1000))
        return dataclasses.replace(found, cached_at=cache.searched_at)

    def offers_due(self) -> bool:
        """Whether the cache `cached_offers` answered from should be searched again."""
        return self._due

    def _rank(self, ads: list[CapacityAd], where: str | None, *, cpus: int, gpus: int,
              timeout: int, limit: int, reputation: dict[str, float],
              now_ms: int) -> Offers:
        from scheduler.scoring import JobEstimate, rank

        check = self.where(where)
        ads = [a for a in ads if check is None or check(a, now_ms=now_ms)]
        estimate = JobEstimate(resources=Resources(cpus=cpus, gpus=gpus, max_seconds=timeout))
        ranked = rank(ads, estimate, self.peers.observations(reputation), now_ms=now_ms)[:limit]
        self._found(ranked)
        return Offers([Offer(ad, parts, self.peers.trust.is_blacklisted(ad.peer_id,
                                                                         now_ms / 1000))
                       for ad, parts in ranked])

    @property
    def paid(self) -> int:
        """Micro-credits released to providers in this session."""
        return int(self.payments.paid)

    def _reputation(self) -> dict[str, float]:
        return self.payments.reputations()

    def _found(self, ranked: Ranked) -> None:
        for ad, p in ranked:
            self.emit(events.OfferFound(provider=ad.peer_id, score=p.total,
                                        cost_credits=p.cost_credits, seconds=p.seconds))

    # work -----------------------------------------------------------------------------
    async def offers(self, where: str | None = None, *, cpus: int = 1, gpus: int = 0,
                     timeout: int = 600, limit: int = 50) -> Offers:
        """Providers found through the DHT that match `where`, ranked with reputation (a
        search: the offer cache is refreshed and written, providers that vanished stay out)."""
        self.where(where)
        search = await self.source.search(limit=limit)
        ads = [a.message for a in self.source.cache.fresh()]
        found = self._rank(ads, where, cpus=cpus, gpus=gpus, timeout=timeout, limit=limit,
                           reputation=self._reputation(),
                           now_ms=int(self.source.clock() * 1000))
        return dataclasses.replace(found, shortfall=search.shortfall())

    async def candidates(self, job: Job) -> Ranked:
        """Offers that can run `job`, not banned, best first (with reputation)."""
        from node.requester.placement import find_candidates, job_estimate

        request = self.request(job)
        ranked = await find_candidates(self.source, self.requirements(job),
                                       job_estimate(request, gflop=self.gflop(job)),
                                       self.peers, provider=job.provider,
                                       reputation=self._reputation())
        if job.python is not None:
            ranked = [(ad, p) for ad, p in ranked if _runs_python(ad, request.runtime,
                                                                  job.python)]
            if not ranked:
                raise UserError(f"no provider's {request.runtime} runtime runs Python "
                                f"{job.python}, which this function needs; run it with "
                                f"Python {job.python} providers offer (see `offload offers "
                                "--json`, runtimes)")
        self._found(ranked)
        return ranked

    async def place(self, job: Job, out: Path) -> Placement:
        """Run `job` on the best provider (elsewhere if one fails; on several by its
        redundancy); the verified result's files land in `out`."""
        from node.requester.agreement import exact, numeric
        from node.requester.placement import Placer

        request, policy, hold_s = self._checked(job)
        ranked = await self.candidates(job)
        deadline = job.deadline or 2.0 * request.resources.max_seconds + 60.0
        placer = Placer(host=self.host, peers=self.peers, policy=policy,
                        same=exact if job.tolerance is None else numeric(job.tolerance),
                        canary=job.verify == "canary", rng=random.Random(),
                        replicas=job.redundancy, emit=self.emit, payments=self.payments,
                        hold_s=hold_s, on_gone=self.source.drop)
        placement = await placer.place(ranked, request, out, deadline_s=deadline)
        await self.payments.placed(placement.outcome.result.job_id, placement.outcome.out_dir)
        return placement

    async def place_under(self, job: Job, root: Path) -> Placement:
        """`place`, with the files moved to root/<job id[:12]> (outcome.out_dir)."""
        pending = root / f".pending-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            placement = await self.place(job, pending)
            final = root / placement.outcome.result.job_id[:12]
            if final.exists():
                shutil.rmtree(final)
            pending.rename(final)
            await self.payments.placed(placement.outcome.result.job_id, final)
        finally:
            shutil.rmtree(pending, ignore_errors=True)
        return dataclasses.replace(
            placement, outcome=dataclasses.replace(placement.outcome, out_dir=final))

    async def map(self, jobs: Sequence[Job], root: Path, *, workers: int = 4,
                  per_provider: int = 2) -> MapReport:
        """Run jobs that differ only in args and files across providers; item i's files
        go to root/i."""
        from node.requester.mapper import run_map

        if not jobs:
            raise UserError("a map needs at least one job")
        first = jobs[0]
        shape = dataclasses.replace(first, args=(), files=())
        for job in jobs[1:]:
            if dataclasses.replace(job, args=(), files=()) != shape:
                raise UserError("a map's jobs must differ only in args and files; submit "
                                "jobs with other needs separately")
        if first.redundancy > 1 or first.verify != "none":
            raise UserError("a map does not replicate or verify items yet; use submit for "
                            "redundancy or canaries")
        requests = [self.request(j) for j in jobs]
        ranked = await self.candidates(first)
        report = await run_map(self.host, ranked, requests, root, peers=self.peers,
                               max_workers=max(1, workers), per_provider=max(1, per_provider),
                               emit=self.emit, payments=self.payments)
        for item in report.items:
            if item.outcome is not None:
                await self.payments.placed(item.outcome.result.job_id, item.outcome.out_dir)
        return report

    async def plan(self, job: Job, *, items: int = 1) -> tuple[Plan, Ranked]:
        """Whether `job` (of `items` independent items) should run here, away, or split,
        and the ranked offers (with reputation) the decision was made from."""
        from node.requester.placement import job_estimate
        from node.requester.plan import local_capacity, make_plan
        from scheduler import meets

        if items < 1:
            raise UserError(f"{self.prefix}items must be at least 1")
        request = self.request(job)
        requirements = self.requirements(job)
        local = await local_capacity(self.home)
        ads = [a.message for a in await self.source.ads()]
        now_ms = int(self.source.clock() * 1000)
        ads = [a for a in ads if meets(a, requirements, now_ms=now_ms)
               and not self.peers.trust.is_blacklisted(a.peer_id, now_ms / 1000)]
        return make_plan(job_estimate(request, gflop=self.gflop(job)), local, ads,
                         self.peers.observations(self._reputation()), items=items,
                         now_ms=now_ms)


def _runs_python(ad: CapacityAd, runtime: str, python: str) -> bool:
    want = python.split(".")[:2]
    return any(rt.name == runtime and rt.version.split(".")[:2] == want for rt in ad.runtimes)


__all__ = ["Job", "Offer", "Offers", "Session", "build_request", "sweep_orphans",
           "where_filter"]
