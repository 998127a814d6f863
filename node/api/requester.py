"""The requester's Python API: one async session that finds offers, submits, maps, plans.

    async with Requester(bootstrap=["/ip4/.../p2p/12D3KooW..."]) as r:
        for offer in await r.offers(where="cpus >= 2"):
            print(offer.peer_id, offer.score.cost_credits)
        result = await r.submit(Job("examples/square.py", args=["7"]))
        print(result.stdout, result.outputs)

Settings come from arguments, else OFFLOAD_HOME / OFFLOAD_BOOTSTRAP /
OFFLOAD_REQUESTER_CONFIG, else requester.toml, like the CLI's flags. Every step emits a
typed event (node.requester.events) to `subscribe`d listeners and `events()` channels. Results are
verified (signature, output digests) before they are returned, and paid through the
node's ledger only once accepted.
"""

from __future__ import annotations

import contextvars
import dataclasses
import itertools
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import trio

from node.errors import NodeError, RemoteError, UserError
from node.home import init_identity, resolve_home
from node.requester import events
from node.requester.events import Emit, Event
from node.requester.exchange import JobOutcome, JobRequest
from node.requester.placement import Attempt, Replica
from protocol import CapacityAd, JobResult, Resources, Signed
from scheduler.decide import Plan
from scheduler.scoring import ScoreParts

Verify = Literal["none", "adaptive", "canary"]
CURRENT: contextvars.ContextVar[Requester | None] = contextvars.ContextVar(
    "offload_requester", default=None)
"""The innermost open Requester of this task (and of the tasks it starts)."""
_counter = itertools.count()


class JobFailed(NodeError):
    """A verified job did not succeed (non-zero exit, timeout, limit); `result` has why."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


class MapItemFailed(RemoteError):
    """An item of a map failed on every provider it was tried on."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """A verified result: its signature and every output's digest were checked."""

    job_id: str
    provider: str
    status: str
    exit_code: int
    stdout: str
    stderr: str
    out_dir: Path
    outputs: Mapping[str, Path]
    """Output name (as written under ./out/ on the provider) -> local file."""
    charged: int
    """Micro-credits the provider charged."""
    quoted: int
    wall_s: float
    limits_hit: tuple[str, ...] = ()
    verification: str = "none"
    replicas: tuple[Replica, ...] = ()
    retries: tuple[Attempt, ...] = ()
    signed: Signed[JobResult] | None = dataclasses.field(default=None, repr=False)
    value: Any = None
    """A @remote function's return value."""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.exit_code == 0

    def check(self) -> Result:
        """This result if the job succeeded, else JobFailed."""
        if not self.ok:
            hit = f", limits hit: {', '.join(self.limits_hit)}" if self.limits_hit else ""
            fix = ("give it more (timeout=, memory_gb=, disk_gb=)" if self.limits_hit
                   else "see its stderr")
            raise JobFailed(f"job {self.job_id[:12]} on {self.provider[:16]} ended "
                            f"{self.status} (exit {self.exit_code}{hit}); {fix}", self)
        return self


@dataclasses.dataclass(frozen=True, slots=True)
class Offer:
    ad: CapacityAd
    score: ScoreParts
    banned: bool = False

    @property
    def peer_id(self) -> str:
        return self.ad.peer_id


def _env_list(name: str) -> list[str]:
    return [v for v in os.environ.get(name, "").replace(",", " ").split() if v]


def where_filter(expression: str | None) -> Any:
    from scheduler import FilterError, parse

    if expression is None:
        return None
    try:
        return parse(expression)
    except FilterError as exc:
        raise UserError(f"where: {exc}") from None


class Requester:
    """A requester session: a libp2p host, a DHT client, this node's peers and ledger."""

    def __init__(self, *, home: str | os.PathLike[str] | None = None,
                 bootstrap: Sequence[str] | None = None,
                 config: str | os.PathLike[str] | None = None,
                 out: str | os.PathLike[str] = "offload-out", workers: int = 4,
                 ledger: bool = True) -> None:
        from node.config import load_requester

        config = config if config is not None else os.environ.get("OFFLOAD_REQUESTER_CONFIG")
        self.settings = load_requester(Path(config) if config else None)
        self.home = resolve_home(None if home is None else Path(home))
        self.bootstrap = list(bootstrap or _env_list("OFFLOAD_BOOTSTRAP")
                              or self.settings.bootstrap)
        self.out = Path(out)
        self.workers = max(1, workers)
        self._use_ledger = ledger
        self._listeners: list[Emit] = []
        self._channels: list[trio.MemorySendChannel[Event]] = []
        self._stack: AsyncExitStack | None = None
        self._token: contextvars.Token[Requester | None] | None = None
        self.dropped_events = 0
        self.closed = trio.Event()
        """Set once the session has closed."""

    # session --------------------------------------------------------------------------
    async def __aenter__(self) -> Requester:
        from node.net.client import open_client
        from node.net.peers import PeerBook
        from node.requester.holds import HoldBook
        from node.requester.payments import Payments

        if not self.bootstrap:
            raise UserError("no bootstrap peer: pass bootstrap=[\"/ip4/.../tcp/N/p2p/ID\"], "
                            "set OFFLOAD_BOOTSTRAP, or list peers under [network] in "
                            "requester.toml (OFFLOAD_REQUESTER_CONFIG)")
        self.identity, _ = init_identity(self.home)
        self.peers = PeerBook.load(self.home)
        async with AsyncExitStack() as stack:
            self.host, self.disc = await stack.enter_async_context(
                open_client(self.identity, self.bootstrap))
            ledger = lease = None
            if self._use_ledger:
                from node.cli.ledger import open_ledger
                from node.requester.escrows import Lease

                ledger = stack.enter_context(open_ledger(self.home, self.identity))
                lease = Lease.open(self.home)
            self.payments = Payments(ledger, self.host, emit=self.emit,
                                     holds=HoldBook.load(self.home), lease=lease)
            stack.callback(self.payments.close)
            stack.push_async_callback(self._settle_holds)
            stack.push_async_callback(self.payments.settle_all)
            self.swept = await self.payments.sweep(self.home)
            """Escrows that dead processes on this home had left locked, settled at start."""
            await self.payments.settle_holds(time.time(), self.peers.trust.strikes)
            self._stack = stack.pop_all()
        self._token = CURRENT.set(self)
        return self

    async def _settle_holds(self) -> None:
        await self.payments.settle_holds(time.time(), self.peers.trust.strikes)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        if self._token is not None:
            CURRENT.reset(self._token)
            self._token = None
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        stack, self._stack = self._stack, None
        try:
            if stack is None:
                return None
            return await stack.__aexit__(kind, exc, tb)
        finally:
            self.closed.set()

    @property
    def peer_id(self) -> str:
        return str(self.identity.peer_id)

    # events ---------------------------------------------------------------------------
    def subscribe(self, listener: Emit) -> Callable[[], None]:
        """Call `listener(event)` for every event; returns a function that unsubscribes.
        Listeners run inline in the session's trio thread and must not block."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def events(self, max_buffer: int = 1024) -> trio.MemoryReceiveChannel[Event]:
        """A channel of every event from now on; it ends when the session closes. A
        consumer that falls `max_buffer` behind loses events (counted in dropped_events)."""
        send, receive = trio.open_memory_channel[Event](max_buffer)
        self._channels.append(send)
        return receive

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)
        for channel in list(self._channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped_events += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._channels.remove(channel)

    # work -----------------------------------------------------------------------------
    async def offers(self, where: str | None = None, *, cpus: int = 1, gpus: int = 0,
                     timeout: int = 600, limit: int = 50) -> list[Offer]:
        """Providers found through the DHT that match `where`, best first."""
        from scheduler.scoring import JobEstimate, rank

        check = where_filter(where)
        ads = [a.message for a in await self.disc.find_ads("cpu", limit=limit)]
        now_ms = int(self.disc.clock() * 1000)
        ads = [a for a in ads if check is None or check(a, now_ms=now_ms)]
        job = JobEstimate(resources=Resources(cpus=cpus, gpus=gpus, max_seconds=timeout))
        ranked = rank(ads, job, self.peers.observations(self.payments.reputations()),
                      now_ms=now_ms)
        found = [Offer(ad, parts, self.peers.trust.is_blacklisted(ad.peer_id, now_ms / 1000))
                 for ad, parts in ranked]
        for o in found:
            self.emit(events.OfferFound(provider=o.peer_id, score=o.score.total,
                                        cost_credits=o.score.cost_credits,
                                        seconds=o.score.seconds))
        return found

    def request(self, job: Job) -> JobRequest:
        """The job as the placement layer sees it, with requester.toml's defaults."""
        s = self.settings
        timeout = job.timeout if job.timeout is not None else s.timeout_s
        if timeout < 1:
            raise UserError("timeout must be at least 1 second")
        return JobRequest(
            script=Path(job.script), args=tuple(str(a) for a in job.args),
            files=tuple(Path(f) for f in job.files),
            resources=Resources(gpus=job.gpus, cpus=job.cpus, max_seconds=timeout,
                                memory_mb=max(1, int(job.memory_gb * 1024)),
                                disk_mb=max(1, int(job.disk_gb * 1024))),
            max_price=(round(job.max_price * 1_000_000) if job.max_price is not None
                       else s.max_price),
            runtime=job.runtime or s.runtime, caps=s.caps)

    def _gflop(self, job: Job) -> float:
        from node.requester.plan import script_hints

        return job.gflop if job.gflop is not None else script_hints(Path(job.script)).get(
            "gflop", 0.0)

    async def candidates(self, job: Job) -> list[tuple[CapacityAd, ScoreParts]]:
        """Offers that can run `job`, not banned, best first (as `offload submit` ranks)."""
        from node.requester.placement import find_candidates, job_estimate
        from scheduler import Requirements

        request = self.request(job)
        requirements = Requirements(cpus=1, gpus=job.gpus, runtime=request.runtime,
                                    where=where_filter(job.where))
        ranked = await find_candidates(self.disc, requirements,
                                       job_estimate(request, gflop=self._gflop(job)),
                                       self.peers, provider=job.provider,
                                       reputation=self.payments.reputations())
        if job.python is not None:
            ranked = [(ad, p) for ad, p in ranked if _runs_python(ad, request.runtime,
                                                                  job.python)]
            if not ranked:
                raise UserError(f"no provider's {request.runtime} runtime runs Python "
                                f"{job.python}, which this function needs; run it with "
                                f"Python {job.python} providers offer (see `offload offers "
                                "--json`, runtimes)")
        for ad, p in ranked:
            self.emit(events.OfferFound(provider=ad.peer_id, score=p.total,
                                        cost_credits=p.cost_credits, seconds=p.seconds))
        return ranked

    async def plan(self, job: Job, *, items: int = 1) -> Plan:
        """Whether `job` (of `items` independent items) should run here, away, or split."""
        from node.requester.placement import job_estimate
        from node.requester.plan import local_capacity, make_plan
        from scheduler import Requirements, meets

        if items < 1:
            raise UserError("items must be at least 1")
        request = self.request(job)
        requirements = Requirements(cpus=1, gpus=job.gpus, runtime=request.runtime,
                                    where=where_filter(job.where))
        local = await local_capacity(self.home)
        ads = [a.message for a in await self.disc.find_ads("cpu", limit=50)]
        now_ms = int(self.disc.clock() * 1000)
        ads = [a for a in ads if meets(a, requirements, now_ms=now_ms)
               and not self.peers.trust.is_blacklisted(a.peer_id, now_ms / 1000)]
        plan, _ = make_plan(job_estimate(request, gflop=self._gflop(job)), local, ads,
                            self.peers.observations(), items=items, now_ms=now_ms)
        return plan

    async def submit(self, job: Job | str | os.PathLike[str]) -> Result:
        """Run `job` on the best provider (retried elsewhere if one fails; replicated by
        its redundancy) and return the verified result; its files are in result.out_dir."""
        from node.requester.agreement import exact, numeric
        from node.requester.placement import Placer, hold_seconds

        job = job if isinstance(job, Job) else Job(job)
        request = self.request(job)
        if job.tolerance is not None and not 0 <= job.tolerance < 1:
            raise UserError("tolerance is relative: give a number like 1e-6, below 1")
        policy = self._policy(job)
        ranked = await self.candidates(job)
        deadline = job.deadline or 2.0 * request.resources.max_seconds + 60.0
        pending = self.out / f".pending-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        placer = Placer(host=self.host, peers=self.peers, policy=policy,
                        same=exact if job.tolerance is None else numeric(job.tolerance),
                        canary=job.verify == "canary", rng=random.Random(),
                        replicas=job.redundancy, emit=self.emit, payments=self.payments,
                        hold_s=hold_seconds(job.redundancy, job.verify))
        try:
            placement = await placer.place(ranked, request, pending, deadline_s=deadline)
            final = self.out / placement.outcome.result.job_id[:12]
            if final.exists():
                shutil.rmtree(final)
            pending.rename(final)
        finally:
            shutil.rmtree(pending, ignore_errors=True)
        outcome = dataclasses.replace(placement.outcome, out_dir=final)
        return self._result(outcome, verification=placement.verification,
                            replicas=placement.replicas, retries=placement.attempts)

    async def map(self, jobs: Iterable[Job], *, workers: int | None = None,
                  return_exceptions: bool = False) -> list[Result | RemoteError]:
        """Run jobs that differ only in args and files across providers; results in
        input order. A failed item raises MapItemFailed, or with return_exceptions its
        error takes the item's place."""
        from node.requester.mapper import run_map

        batch = list(jobs)
        if not batch:
            return []
        first = batch[0]
        shape = dataclasses.replace(first, args=(), files=())
        for job in batch[1:]:
            if dataclasses.replace(job, args=(), files=()) != shape:
                raise UserError("a map's jobs must differ only in args and files; submit "
                                "jobs with other needs separately")
        if first.redundancy > 1 or first.verify != "none":
            raise UserError("a map does not replicate or verify items yet; use submit for "
                            "redundancy or canaries")
        requests = [self.request(j) for j in batch]
        ranked = await self.candidates(first)
        root = self.out / f"map-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_counter)}"
        report = await run_map(self.host, ranked, requests, root, peers=self.peers,
                               max_workers=workers or self.workers, emit=self.emit,
                               payments=self.payments)
        out: list[Result | RemoteError] = []
        for item in report.items:
            if item.outcome is not None:
                out.append(self._result(item.outcome, verification="none"))
                continue
            err = MapItemFailed(f"map item {item.index} failed after {item.attempts} "
                                f"attempt(s): {item.error}", item.index)
            if not return_exceptions:
                raise err
            out.append(err)
        return out

    # helpers --------------------------------------------------------------------------
    def _policy(self, job: Job) -> Any:
        from node.requester.placement import verification_policy

        return verification_policy(job.redundancy, job.verify, self.peers.trust)

    def _result(self, outcome: JobOutcome, *, verification: str,
                replicas: tuple[Replica, ...] = (),
                retries: tuple[Attempt, ...] = ()) -> Result:
        from node.requester.verify import safe_join

        r = outcome.result
        return Result(
            job_id=r.job_id, provider=r.provider, status=r.status, exit_code=r.exit_code,
            stdout=r.stdout, stderr=r.stderr, out_dir=outcome.out_dir,
            outputs={o.name: safe_join(outcome.out_dir, o.name) for o in r.outputs},
            charged=r.price_charged, quoted=outcome.quote.max_charge, wall_s=outcome.wall_s,
            limits_hit=tuple(r.limits_hit), verification=verification, replicas=replicas,
            retries=retries, signed=outcome.signed)


def _runs_python(ad: CapacityAd, runtime: str, python: str) -> bool:
    want = python.split(".")[:2]
    return any(rt.name == runtime and rt.version.split(".")[:2] == want for rt in ad.runtimes)


def current() -> Requester | None:
    """The innermost Requester open in this task, if any."""
    return CURRENT.get()
