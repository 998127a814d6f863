"""The provider daemon: advertise capacity, accept signed jobs, run them, return signed results."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import trio

from ledger import Ledger
from node.benchmark import BenchmarkFailed, BenchmarkReport, benchmark_forever
from node.benchmark import summary as benchmark_summary
from node.home import Home, HomeLock, write_ready_file
from node.net.discovery import AD_LIFETIME_S, AD_REFRESH_S, Discovery, ad_key, open_discovery
from node.net.gossip import Gossip, recorder, run_gossip
from node.net.host import Host, Stream, open_host
from node.net.limits import Limits, PeerErrors
from node.net.peers import PeerBook
from node.net.proximity import probe_forever
from node.net.reach import Reachability, ReachState
from node.net.relay import provide_relay_forever
from node.provider import exchange, sessions
from node.provider.admission import Admission
from node.provider.board import JobBoard
from node.provider.cache import InputCache
from node.provider.executor import Executor, ExecutorSetup, SandboxExecutor, open_executor
from node.provider.kept import KeptJobs
from node.provider.metrics import ProviderMetrics, serve_metrics
from node.provider.replies import (
    busy_stream,
)
from node.provider.results import HeldOutputs, RecentResults
from node.provider.status import publish_forever
from node.provider.telemetry import HostSample, Telemetry, cpu_model, memory_mb
from protocol import (
    CapacityAd,
    Device,
    JobSpec,
    Price,
    Quote,
    sign,
    wire,
)
from protocol.identity import Identity
from protocol.replay import ReplayGuard
from scheduler.pricing import max_charge
from scheduler.vivaldi import MAX_ERROR, to_ad

log = logging.getLogger(__name__)

MAX_INPUT_BYTES = 512 * 1024 * 1024
HEARTBEAT_S = 2.0
SETTLE_IDLE_S = 10.0
VERSION = importlib.metadata.version("offload")
FIRST_FRAME_S = 10.0
"""A stream that sends no job spec within this is closed (silent streams hold shares)."""
SPEC_WINDOW_MS = 5 * 60 * 1000


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderConfig:
    home: Path
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: Sequence[str] = ()
    ready_file: Path | None = None
    slots: int = 2
    max_seconds: int = 3600
    price: Price = dataclasses.field(default_factory=Price)
    region: str = ""
    ad_refresh_s: float = AD_REFRESH_S
    ad_lifetime_s: float = AD_LIFETIME_S
    warm: int = 1
    queue: int = 8
    quote_hold_s: float = 30.0
    drain_timeout_s: float = 60.0
    metrics_listen: str = "127.0.0.1:0"
    benchmark_interval_s: float | None = 86400.0   # None: never benchmark; 0: once
    cache_dir: Path | None = None
    cache_max_bytes: int = 10 * 10**9
    unsafe_no_sandbox: bool = False
    sandbox_tiers: tuple[Literal["A", "B"], ...] = ("A", "B")
    limits: Limits = dataclasses.field(default_factory=Limits)
    jobs_per_peer: int | None = None
    detached_keep_s: float = 86400.0
    """How long a detached job's result and outputs are kept after it ends (0: no detach)."""
    detached_max_bytes: int = 5 * 10**9
    """Disk for detached jobs' outputs, all together (each reserves its disk limit)."""
    relay_service: bool = False
    """Relay for NATed peers too (circuit relay v2 hop), as `offload relay` does."""
    max_relays: int = 2
    reachability: Literal["auto", "public", "private"] = "auto"
    """auto: ask AutoNAT; public or private: as the operator says."""
    """Relays to hold reservations on when AutoNAT says we are private."""


class Provider:
    """Serves `/offload/job/1.0.0` on a host; one instance per daemon."""

    def __init__(self, config: ProviderConfig, identity: Identity, *,
                 clock: Callable[[], float], setup: ExecutorSetup, ledger: Ledger,
                 cache: InputCache, telemetry: Telemetry, gossip: Gossip) -> None:
        self.config = config
        self.setup = setup
        self.executor: Executor | None = setup.executor
        self.identity = identity
        self.clock = clock
        self.ledger = ledger
        self.cache = cache
        self.telemetry = telemetry
        self.gossip = gossip
        self.replay = ReplayGuard(window_ms=2 * SPEC_WINDOW_MS + 60_000)
        self.admission = Admission(slots=config.slots, queue=config.queue,
                                   max_streams=config.slots + config.queue + 64,
                                   per_peer=config.jobs_per_peer)
        self.running = 0
        self.last_job_end = 0.0
        self.draining = False
        self.metrics = ProviderMetrics()
        self.metrics.slots_total.set(config.slots)
        self.metrics_url = ""
        self.benchmark: BenchmarkReport | None = None
        self.readvertise = trio.Event()
        self.addrs: list[str] = []
        self.peers = PeerBook.load(config.home)
        self.peer_errors = PeerErrors()
        self.results = RecentResults(Home(config.home).results)  # for handle_settle
        self.held_outputs = HeldOutputs()
        self.board = JobBoard()
        self.kept = KeptJobs(Home(config.home).kept, keep_s=config.detached_keep_s,
                             max_bytes=config.detached_max_bytes, clock=clock)
        self.reach = ReachState()
        self.sessions = sessions.Live()

    def gpu_devices(self, sample: HostSample | None = None) -> list[Device]:
        """One Device per GPU jobs here can be given (none without a sandbox), with its
        live telemetry and measured throughput."""
        if not isinstance(self.executor, SandboxExecutor):
            return []
        live = {g.index: g for g in (sample.gpus if sample else ())}
        devices = []
        for g in self.executor.sandbox.gpus:
            t = live.get(g.index)
            devices.append(Device(
                kind="cuda", model=g.name[:128], memory_mb=g.memory_mb,
                compute_capability=g.compute_capability, count=1, driver=g.driver[:32],
                utilization=t.utilization if t else 0.0,
                temperature_c=t.temperature_c if t else 0.0, power_w=t.power_w if t else 0.0,
                **_throughput(self.measured(f"cuda:{g.index}"))))
        return devices

    def measured(self, device: str) -> tuple[float, float, float, float]:
        """fp32, fp16, bf16 GFLOP/s and memory GB/s of `device`; zeros until measured."""
        b = self.benchmark.device(device) if self.benchmark else None
        if b is None:
            return (0.0, 0.0, 0.0, 0.0)
        return (round(b.fp32_tflops * 1000, 1), round((b.fp16_tflops or 0.0) * 1000, 1),
                round((b.bf16_tflops or 0.0) * 1000, 1), round(b.mem_gbps, 1))

    def quiet(self, for_s: float = 1.0) -> bool:
        """No job running, and none finished within `for_s`: a good time to refill warm
        workers without slowing a burst of jobs."""
        return self.running == 0 and time.monotonic() - self.last_job_end >= for_s

    def wake_advertiser(self) -> None:
        """Re-advertise now (the ad changed), not at the next scheduled refresh."""
        self.readvertise.set()

    def on_benchmark(self, report: BenchmarkReport) -> None:
        self.benchmark = report
        log.info("benchmark: %s", benchmark_summary(report))
        self.wake_advertiser()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def build_ad(self, addrs: Sequence[str]) -> CapacityAd:
        now = self.now_ms()
        sample = self.telemetry.sample()
        cpu = Device(kind="cpu", model=cpu_model(), memory_mb=memory_mb(),
                     compute_capability="", count=1,
                     utilization=sample.cpu_load if sample else 0.0,
                     **_throughput(self.measured("cpu")))
        return CapacityAd(
            peer_id=self.identity.peer_id, addrs=tuple(addrs),
            devices=(cpu, *self.gpu_devices(sample)),
            cpus=os.cpu_count() or 1, memory_mb=memory_mb(), runtimes=(self.setup.runtime,),
            price=self.config.price,
            sandbox_tier=self.executor.tier if self.executor else "none",
            region=self.config.region,
            coords=to_ad(self.peers.coord) if self.peers.coord.error < MAX_ERROR else (),
            cached=self.cache.summary(64),
            load=min(1.0, self.admission.in_use / self.config.slots),
            seq=now, expires=now + int(self.config.ad_lifetime_s * 1000))

    async def advertise_forever(self, host: Host, disc: Discovery, *,
                                task_status: Any = trio.TASK_STATUS_IGNORED
                                ) -> None:
        first = True
        while True:
            signed = sign(self.build_ad(host.addrs()), self.identity)
            try:
                await disc.advertise(signed, ["cpu"])
            except Exception:
                log.warning("advertising failed; retrying in %.0f s", self.config.ad_refresh_s,
                            exc_info=True)
            if first:
                task_status.started()
                first = False
            with trio.move_on_after(self.config.ad_refresh_s):
                await self.readvertise.wait()
            self.readvertise = trio.Event()

    async def handle_settle(self, stream: Stream) -> None:
        await exchange.handle_settle(self, stream)

    async def handle_job(self, stream: Stream) -> None:
        await exchange.handle_job(self, stream)

    async def handle_session(self, stream: Stream) -> None:
        await sessions.handle_session(self, stream)

    def status(self) -> dict[str, Any]:
        """What `offload status` shows; published to the home every few seconds."""
        self.metrics.queue_depth.set(self.admission.queued)
        self.metrics.slots_in_use.set(self.admission.in_use)
        pool = getattr(self.executor, "pool", None)
        self.metrics.warm_ready.set(pool.ready if pool is not None else 0)
        self.metrics.warm_parked.set(pool.parked if pool is not None else 0)
        self.metrics.warm_reuses.set(pool.reused if pool is not None else 0)
        return self.metrics.snapshot() | {
            "peer_id": self.identity.peer_id, "addrs": self.addrs,
            "tier": self.executor.tier if self.executor else "refusing",
            "draining": self.draining, "metrics_url": self.metrics_url,
            "sessions": self.sessions.doc(trio.current_time()),
            "detached_running": self.board.detached(),
            "kept_bytes": self.kept.used} | self.reach.doc()

    async def benchmark_forever(self) -> None:
        """Measure what jobs here get (the job runtime's torch), now and on a schedule."""
        runtime = getattr(self.executor, "sandbox", None)
        python = runtime.runtime.interpreter if runtime is not None else Path(sys.executable)
        interval = self.config.benchmark_interval_s or 0.0
        try:
            await benchmark_forever(python, Home(self.config.home).benchmark,
                                    runtime_digest=self.setup.runtime.digest,
                                    interval_s=interval, clock=self.clock,
                                    on_report=self.on_benchmark,
                                    gpus=isinstance(self.executor, SandboxExecutor)
                                    and bool(self.executor.sandbox.gpus))
        except BenchmarkFailed as exc:
            log.warning("benchmark failed; advertising no throughput: %s", exc)

    async def drain(self, host: Host, disc: Discovery, signals: Any) -> None:
        """Refuse new jobs, withdraw the ad, let running and queued jobs finish up to the
        drain timeout; a second signal stops at once."""
        self.draining = True
        log.info("draining: %d running, %d queued; up to %.0f s (signal again to stop now)",
                 self.running, self.admission.queued, self.config.drain_timeout_s)
        withdrawn = dataclasses.replace(self.build_ad(host.addrs()), load=1.0,
                                        expires=self.now_ms() + 1000)
        with trio.move_on_after(5):
            try:
                await disc.dht.put_value(ad_key(self.identity.peer_id),
                                         sign(withdrawn, self.identity).raw)
            except Exception:
                log.warning("withdrawing the ad failed; it expires on its own", exc_info=True)

        async def idle() -> None:
            while self.running or self.admission.queued:
                await trio.sleep(0.1)

        async def second_signal() -> None:
            async for _ in signals:
                log.info("second signal: stopping now")
                return

        async with trio.open_nursery() as nursery:
            async def first_wins(fn: Callable[[], Awaitable[None]]) -> None:
                await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first_wins, idle)
            nursery.start_soon(first_wins, second_signal)
            nursery.cancel_scope.deadline = trio.current_time() + self.config.drain_timeout_s

    def quote(self, spec: JobSpec, job_id: str) -> Quote:
        inputs = sum(f.size for f in spec.inputs)
        return Quote(job_id=job_id, provider=self.identity.peer_id, requester=spec.requester,
                     price=self.config.price,
                     max_charge=max_charge(self.config.price, spec.resources, input_bytes=inputs),
                     expires=self.now_ms() + int(self.config.quote_hold_s * 1000))


def _throughput(m: tuple[float, float, float, float]) -> dict[str, Any]:
    return {"gflops": m[0], "fp16_gflops": m[1], "bf16_gflops": m[2], "mem_gbps": m[3]}


async def serve(config: ProviderConfig, identity: Identity, *,
                clock: Callable[[], float] = time.time,
                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run until SIGINT/SIGTERM (or cancelled): lock the home, reap what a previous run
    left, listen, open the ledger, cache and telemetry, bootstrap, join gossip, then serve
    jobs and advertise. `task_status.started(provider)` once all of it is up (with
    `nursery.start`); the ready file, if configured, is written at the same moment."""
    # the lock comes first: nothing touches the sandbox, cgroups or warm pool without it
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            HomeLock(config.home) as home_lock:
        home = Home(config.home)
        async with open_executor(jobs_dir=home.jobs, key_file=home.identity,
                                 slots=config.slots, warm=config.warm,
                                 unsafe_no_sandbox=config.unsafe_no_sandbox,
                                 cgroup_base=f"offload-{identity.peer_id[-12:]}",
                                 tiers=config.sandbox_tiers,
                                 home_lock=home_lock.path) as setup, \
                open_host(identity, config.listen, limits=config.limits,
                          relay_service=config.relay_service) as host, \
                open_discovery(host, server=True, clock=clock) as disc:
            tier = setup.executor.tier if setup.executor else None
            if tier is None:
                log.error("refusing remote jobs and not advertising: %s. Fix it, or pass "
                          "--unsafe-no-sandbox to run jobs without isolation", setup.reason)
            else:
                log.info("sandbox tier %s (%s)", tier, setup.reason)
            cache = await trio.to_thread.run_sync(partial(
                InputCache, config.cache_dir or Home(config.home).cache,
                max_bytes=config.cache_max_bytes))
            ledger = Ledger.open(Home(config.home).ledger, identity)
            telemetry = Telemetry()
            try:
                await disc.bootstrap(config.bootstrap)
                async with trio.open_nursery() as nursery:
                    gossip = await nursery.start(partial(
                        run_gossip, host, on_receipt=recorder(ledger, host.peer_errors)))
                    provider = Provider(config, identity, clock=clock, setup=setup,
                                        ledger=ledger, cache=cache, telemetry=telemetry,
                                        gossip=gossip)
                    reach = Reachability(host, disc, bootstrap=config.bootstrap,
                                         max_relays=config.max_relays,
                                         forced=config.reachability,
                                         on_change=partial(_on_reach, provider, host))
                    provider.reach = reach.state
                    await nursery.start(reach.run)
                    if config.relay_service:
                        await nursery.start(provide_relay_forever, disc)
                    await _run_provider(provider, host, disc, nursery, signals, task_status)
            finally:
                telemetry.close()
                ledger.close()


def _on_reach(provider: Provider, host: Host, state: ReachState) -> None:
    """Our addresses changed (relays taken or lost, reachability flipped): re-advertise."""
    provider.addrs = host.addrs()
    provider.reach = state
    provider.wake_advertiser()


async def _run_provider(provider: Provider, host: Host, disc: Discovery,
                        nursery: trio.Nursery, signals: Any,
                        task_status: Any) -> None:
    """Everything is built: serve, advertise, report ready, and wait for a signal."""
    config, identity, setup = provider.config, provider.identity, provider.setup
    tier = setup.executor.tier if setup.executor else None
    pool = getattr(setup.executor, "pool", None)
    if pool is not None:
        pool.may_refill = provider.quiet
    provider.peer_errors = host.peer_errors
    host.peer_errors.on_count = provider.metrics.count_peer_error
    host.handle(wire.JOB_PROTOCOL, provider.handle_job, refuse=busy_stream)
    host.handle(wire.SETTLE_PROTOCOL, provider.handle_settle, refuse=busy_stream)
    host.handle(wire.SESSION_PROTOCOL, provider.handle_session, refuse=busy_stream)
    ads = trio.CancelScope()
    if setup.executor is not None:
        await nursery.start(_in_scope, ads, provider.advertise_forever, host, disc)
    provider.addrs = host.addrs()
    if config.benchmark_interval_s is not None and setup.executor is not None:
        nursery.start_soon(provider.benchmark_forever)
    if setup.executor is not None:
        nursery.start_soon(partial(probe_forever, host, disc, provider.peers,
                                   on_moved=provider.wake_advertiser))
    provider.metrics.info.info({"peer_id": identity.peer_id, "tier": tier or "refusing",
                                "version": VERSION})
    if config.metrics_listen:
        mhost, _, mport = config.metrics_listen.rpartition(":")
        port = await nursery.start(serve_metrics, provider.metrics, mhost, int(mport))
        provider.metrics_url = f"http://{mhost}:{port}/metrics"
    nursery.start_soon(partial(publish_forever, config.home, provider.status,
                               clock=provider.clock))
    nursery.start_soon(prune_forever, provider)
    if config.ready_file is not None:
        write_ready_file(config.ready_file, identity.peer_id, host.addrs())
    log.info("provider %s listening on %s", identity.peer_id, host.addrs())
    task_status.started(provider)
    async for signum in signals:
        log.info("signal %d: stopping", signum)
        break
    if provider.running or provider.admission.queued:
        ads.cancel()
        await provider.drain(host, disc, signals)
    nursery.cancel_scope.cancel()


async def prune_forever(provider: Provider, every_s: float = 300.0) -> None:
    """Drop detached jobs whose time to be fetched ran out (at start, then every few
    minutes)."""
    while True:
        n = await trio.to_thread.run_sync(provider.kept.prune)
        if n:
            log.info("dropped %d detached job(s) nobody fetched in time", n)
        await trio.sleep(every_s)


async def _in_scope(scope: trio.CancelScope, fn: Callable[..., Awaitable[None]], *args: Any,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await fn(*args, task_status=task_status)

