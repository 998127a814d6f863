"""The requester's Python API: one async session that finds offers, submits, maps, plans.

    async with Requester(bootstrap=["/ip4/.../p2p/12D3KooW..."]) as r:
        for offer in await r.offers(where="cpus >= 2"):
            print(offer.peer_id, offer.score.cost_credits)
        result = await r.submit(Job("examples/square.py", args=["7"]))
        print(result.stdout, result.outputs)

A thin face over the requester core (node.requester.session), which the `offload` verbs
drive too. Settings come from arguments, else OFFLOAD_HOME / OFFLOAD_BOOTSTRAP /
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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import trio

from node.errors import JobFailed as JobFailed
from node.errors import MapItemFailed as MapItemFailed
from node.errors import RemoteError, UserError
from node.home import resolve_home
from node.requester.events import Emit, Event
from node.requester.exchange import JobOutcome
from node.requester.payments import Swept
from node.requester.placement import Attempt, Replica
from node.requester.session import Job, Offer, Session, Verify
from protocol import CapacityAd, JobResult, Signed
from scheduler.decide import Plan
from scheduler.scoring import ScoreParts

if TYPE_CHECKING:
    from node.requester.exchange import JobRequest

CURRENT: contextvars.ContextVar[Requester | None] = contextvars.ContextVar(
    "offload_requester", default=None)
"""The innermost open Requester of this task (and of the tasks it starts)."""
_counter = itertools.count()


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


class Requester:
    """A requester session: a libp2p host, a DHT client, this node's peers and ledger."""

    def __init__(self, *, home: str | os.PathLike[str] | None = None,
                 bootstrap: Sequence[str] | None = None,
                 config: str | os.PathLike[str] | None = None,
                 out: str | os.PathLike[str] = "offload-out", workers: int = 4,
                 ledger: bool = True, fresh: bool = False) -> None:
        from node.config import load_requester, resolve, resolve_list

        config = resolve(config, "OFFLOAD_REQUESTER_CONFIG")
        self.settings = load_requester(Path(config) if config else None)
        self.home = resolve_home(None if home is None else Path(home))
        self.bootstrap = resolve_list(bootstrap, "OFFLOAD_BOOTSTRAP", self.settings.bootstrap)
        self.out = Path(out)
        self.workers = max(1, workers)
        self.core = Session(home=self.home, bootstrap=self.bootstrap, settings=self.settings,
                            emit=self.emit, ledger=ledger, fresh=fresh)
        self._listeners: list[Emit] = []
        self._channels: list[trio.MemorySendChannel[Event]] = []
        self._stack: AsyncExitStack | None = None
        self._token: contextvars.Token[Requester | None] | None = None
        self.dropped_events = 0
        self.swept = Swept()
        """Escrows that dead processes on this home had left locked, settled at start."""
        self.closed = trio.Event()
        """Set once the session has closed."""
        self.background: trio.Nursery | None = None
        """Tasks that live as long as the session (kept-warm sessions: node.api.warm)."""
        self.at_close: list[Callable[[], None]] = []
        """Called first when the session closes, before `background` is waited for."""

    # session --------------------------------------------------------------------------
    async def __aenter__(self) -> Requester:
        if not self.bootstrap:
            raise UserError("no bootstrap peer: pass bootstrap=[\"/ip4/.../tcp/N/p2p/ID\"], "
                            "set OFFLOAD_BOOTSTRAP, or list peers under [network] in "
                            "requester.toml (OFFLOAD_REQUESTER_CONFIG)")
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.core)
            self.swept = self.core.swept
            self.background = await stack.enter_async_context(trio.open_nursery())
            stack.callback(self._closing)
            self._stack = stack.pop_all()
        self._token = CURRENT.set(self)
        return self

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

    def _closing(self) -> None:
        for fn in self.at_close:
            fn()

    @property
    def peer_id(self) -> str:
        return self.core.peer_id

    @property
    def identity(self) -> Any:
        return self.core.identity

    @property
    def peers(self) -> Any:
        return self.core.peers

    @property
    def payments(self) -> Any:
        return self.core.payments

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
        found = await self.core.offers(where, cpus=cpus, gpus=gpus, timeout=timeout,
                                       limit=limit)
        return found.offers

    def request(self, job: Job) -> JobRequest:
        """The job as the placement layer sees it, with requester.toml's defaults."""
        return self.core.request(job)

    async def candidates(self, job: Job) -> list[tuple[CapacityAd, ScoreParts]]:
        """Offers that can run `job`, not banned, best first (as `offload submit` ranks)."""
        return await self.core.candidates(job)

    async def plan(self, job: Job, *, items: int = 1) -> Plan:
        """Whether `job` (of `items` independent items) should run here, away, or split."""
        plan, _ = await self.core.plan(job, items=items)
        return plan

    async def submit(self, job: Job | str | os.PathLike[str]) -> Result:
        """Run `job` on the best provider (retried elsewhere if one fails; replicated by
        its redundancy) and return the verified result; its files are in result.out_dir."""
        job = job if isinstance(job, Job) else Job(job)
        placement = await self.core.place_under(job, self.out)
        return self._result(placement.outcome, verification=placement.verification,
                            replicas=placement.replicas, retries=placement.attempts)

    async def detach(self, job: Job | str | os.PathLike[str]) -> str:
        """Start `job` on the best provider that takes it detached and return its id at
        once; `result` (from this or any later Requester on the home) fetches it."""
        from node.requester.detach import submit_detached

        job = job if isinstance(job, Job) else Job(job)
        return (await submit_detached(self.core, job)).job_id

    async def result(self, job_id: str, *, wait: bool = True) -> Result:
        """The verified result of a detached job (waiting for it unless `wait` is False:
        then NotFinished while it runs), paid, its files in result.out_dir."""
        from node.requester.detach import fetch_result, find_job

        ledger = self.core.payments.ledger
        if ledger is None:
            raise UserError("this Requester keeps no ledger, so it has no detached jobs")
        record = find_job(ledger.records(), job_id)
        started = time.monotonic()
        got = await fetch_result(self.core, record, self.out / record.job_id[:12], wait=wait)
        r = got.signed.message
        return Result(
            job_id=r.job_id, provider=r.provider, status=r.status, exit_code=r.exit_code,
            stdout=r.stdout, stderr=r.stderr, out_dir=got.out_dir,
            outputs={o.name: got.out_dir / o.name for o in r.outputs},
            charged=r.price_charged, quoted=record.max_charge,
            wall_s=time.monotonic() - started, limits_hit=tuple(r.limits_hit),
            verification="none", signed=got.signed)

    async def map(self, jobs: Iterable[Job], *, workers: int | None = None,
                  return_exceptions: bool = False) -> list[Result | RemoteError]:
        """Run jobs that differ only in args and files across providers; results in
        input order. A failed item raises MapItemFailed, or with return_exceptions its
        error takes the item's place."""
        batch = list(jobs)
        if not batch:
            return []
        root = self.out / f"map-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{next(_counter)}"
        report = await self.core.map(batch, root, workers=workers or self.workers)
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


def current() -> Requester | None:
    """The innermost Requester open in this task, if any."""
    return CURRENT.get()


__all__ = ["CURRENT", "Job", "JobFailed", "MapItemFailed", "Offer", "Requester", "Result",
           "Verify", "current"]
