"""The provider daemon: advertise capacity, accept signed jobs, run them, return signed results."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
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

from ledger import Ledger, ReceiptRefused, RemoteLedgerError
from node.benchmark import BenchmarkFailed, BenchmarkReport, benchmark_forever
from node.benchmark import summary as benchmark_summary
from node.cli.ledger import LEDGER_FILE
from node.home import KEY_FILE, HomeLock
from node.net.discovery import AD_LIFETIME_S, AD_REFRESH_S, Discovery, ad_key, open_discovery
from node.net.gossip import Gossip, recorder, run_gossip
from node.net.host import Host, Stream, open_host
from node.net.limits import Limits, PeerErrors
from node.net.peers import PeerBook
from node.net.proximity import probe_forever
from node.net.transfer import send_file, transfer_deadline
from node.provider.admission import Admission, Busy, Ticket
from node.provider.cache import InputCache
from node.provider.executor import Executor, ExecutorSetup, SandboxExecutor, open_executor
from node.provider.jobio import collect_outputs, receive_inputs
from node.provider.live import LIVE_BACKLOG, forward_output, offer
from node.provider.metrics import ProviderMetrics, serve_metrics
from node.provider.replies import (
    REFUSAL_OUTCOME,
    busy_stream,
    error_code,
    error_text,
    refuse,
    try_send,
)
from node.provider.results import FOLDER as RESULTS_FOLDER
from node.provider.results import RecentResults
from node.provider.runner import output_sink
from node.provider.sandbox.errors import LaunchFailed
from node.provider.status import publish_forever
from node.provider.telemetry import HostSample, Telemetry, cpu_model, memory_mb
from protocol import (
    BadSignature,
    CapacityAd,
    Device,
    Expired,
    FrameTooLarge,
    JobResult,
    JobSpec,
    MalformedMessage,
    Price,
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
from protocol.identity import Identity
from protocol.messages import clip_text
from protocol.replay import ReplayGuard
from scheduler.pricing import charge, credits, max_charge
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


class Provider:
    """Serves `/offload/job/1.0.0` on a host; one instance per daemon."""

    def __init__(self, config: ProviderConfig, identity: Identity, *,
                 clock: Callable[[], float], setup: ExecutorSetup) -> None:
        self.config = config
        self.setup = setup
        self.executor: Executor | None = setup.executor
        self.identity = identity
        self.clock = clock
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
        self.telemetry: Telemetry | None = None
        self.cache: InputCache | None = None
        self.benchmark: BenchmarkReport | None = None
        self.readvertise = trio.Event()
        self.addrs: list[str] = []
        self.peers = PeerBook.load(config.home)
        self.ledger: Ledger | None = None
        self.gossip: Gossip | None = None
        self.peer_errors = PeerErrors()
        self.results = RecentResults(config.home / RESULTS_FOLDER)  # for handle_settle

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
        sample = self.telemetry.sample() if self.telemetry else None
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
            cached=self.cache.summary(64) if self.cache else (),
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
        """A requester's receipt for one of our jobs, and its cheque when it paid; or its
        question for the signed result of a job it lost (`result_query`)."""
        try:
            frame = await stream.receive_within(SETTLE_IDLE_S, "a settle frame")
            if isinstance(frame, wire.ResultQuery):
                await self.results.answer(stream, frame.job_id)
                return
            frame = wire.expect(frame, wire.Settle)
            receipt = check_receipt(frame.receipt, self.now_ms())
            if receipt.provider != self.identity.peer_id or \
                    receipt.requester != stream.remote_peer:
                raise ReceiptRefused("the receipt is not about a job this peer gave us")
            if self.ledger is not None:
                ledger = self.ledger
                if frame.cheque:
                    await trio.to_thread.run_sync(ledger.accept_cheque, frame.cheque)
                await trio.to_thread.run_sync(ledger.record_receipt, frame.receipt)
            if self.gossip is not None:  # the requester gossips it too; we stay online
                await self.gossip.publish(frame.receipt)
        except (ProtocolError, RemoteLedgerError) as exc:
            self.peer_errors.failed("settle exchange", stream.remote_peer, exc)
            await refuse(stream, "too_large" if isinstance(exc, FrameTooLarge) else "payment",
                         str(exc))
            return
        except Exception as exc:  # e.g. the ledger's disk: the peer hears a named error
            self.peer_errors.failed("settle exchange", stream.remote_peer, exc)
            await try_send(stream, wire.ErrorReply(code=error_code(exc),
                                                   message=error_text(exc)))
            return
        log.info("job %s settled by %s: %s, charge %s", receipt.job_id[:12],
                 receipt.requester[:16], receipt.outcome, credits(receipt.charge))
        await try_send(stream, wire.SettleAck(job_id=receipt.job_id))

    async def handle_job(self, stream: Stream) -> None:
        """One job exchange; every failure ends in a named error frame, never a traceback."""
        if not self.admission.open_stream():
            await try_send(stream, wire.ErrorReply(
                code="busy", message="too many open job streams",
                retry_after_s=self.admission.retry_after_s))
            return
        try:
            await self._serve(stream)
        except Exception as exc:  # the boundary: the peer hears a named error, we go on
            self.peer_errors.failed("job exchange", stream.remote_peer, exc)
            await try_send(stream, wire.ErrorReply(code=error_code(exc),
                                                    message=error_text(exc)))
        finally:
            self.admission.close_stream()

    def status(self) -> dict[str, Any]:
        """What `offload status` shows; published to the home every few seconds."""
        self.metrics.queue_depth.set(self.admission.queued)
        self.metrics.slots_in_use.set(self.admission.in_use)
        pool = getattr(self.executor, "pool", None)
        self.metrics.warm_ready.set(pool.ready if pool is not None else 0)
        return self.metrics.snapshot() | {
            "peer_id": self.identity.peer_id, "addrs": self.addrs,
            "tier": self.executor.tier if self.executor else "refusing",
            "draining": self.draining, "metrics_url": self.metrics_url}

    async def _serve(self, stream: Stream) -> None:
        frame = wire.expect(await stream.receive_within(FIRST_FRAME_S, "job"), wire.SubmitJob)
        try:
            signed = open_signed(frame.spec, JobSpec)
        except ProtocolError as exc:
            await refuse(stream, "bad_signature" if isinstance(exc, BadSignature)
                          else "bad_request", str(exc))
            return
        spec, job_id = signed.message, signed.digest
        refusal = self._check_spec(spec, stream.remote_peer)
        if refusal:
            self.metrics.jobs_total.labels(outcome=REFUSAL_OUTCOME.get(refusal[0],
                                                                      "refused")).inc()
            await refuse(stream, *refusal)
            return
        try:
            check_spec_fresh(spec, now_ms=self.now_ms())
            self.replay.check_and_remember(job_id, now_ms=self.now_ms())
        except Expired as exc:
            await refuse(stream, "expired", str(exc))
            return
        except Replayed as exc:
            await refuse(stream, "replayed", str(exc))
            return
        if self.draining:
            await refuse(stream, "draining", "this provider is shutting down; use another")
            return
        try:
            quote = self.quote(spec, job_id)
        except ValueOutOfRange:
            await refuse(stream, "price", "price: this job could cost more than any ledger "
                         "holds; ask for less time or fewer resources")
            return
        if spec.max_price is not None and quote.max_charge > spec.max_price:
            self.metrics.jobs_total.labels(outcome="price").inc()
            await refuse(stream, "price", f"price: this job can cost up to "
                          f"{credits(quote.max_charge)} credits here, above your cap of "
                          f"{credits(spec.max_price)}")
            return
        try:
            ticket = self.admission.admit(stream.remote_peer)
        except Busy as exc:
            self.metrics.jobs_total.labels(outcome="busy").inc()
            await try_send(stream, wire.ErrorReply(code="busy", message=str(exc),
                                                    retry_after_s=exc.retry_after_s))
            return
        try:
            await stream.send(wire.QuoteOffer(quote=sign(quote, self.identity).raw))
            answer = await stream.receive_within(self.config.quote_hold_s, "quote acceptance")
            if isinstance(answer, wire.ErrorReply):
                log.info("job %s: quote declined (%s)", job_id[:12], answer.message)
                return
            if wire.expect(answer, wire.QuoteAccept).job_id != job_id:
                raise MalformedMessage("the quote acceptance names another job")
            await self._queue(stream, ticket)
            self.running += 1
            try:
                await self._run(stream, spec, job_id, quote)
            except* LaunchFailed as group:  # e.g. EAGAIN from the kernel: try elsewhere
                self.metrics.jobs_total.labels(outcome="busy").inc()
                await refuse(stream, "busy", f"the job's sandbox could not start here "
                              f"({group.exceptions[0]}); try again or another provider")
            finally:
                self.running -= 1
                self.last_job_end = time.monotonic()
        finally:
            self.admission.release(ticket)

    async def _queue(self, stream: Stream, ticket: Ticket) -> None:
        """Wait for the ticket's slot, telling the requester its place every few seconds."""
        if ticket.has_slot:
            return

        async def tell(pos: int) -> None:
            await stream.send(wire.Queued(position=pos))

        async with trio.open_nursery() as nursery:
            async def keep_telling() -> None:
                while True:
                    await trio.sleep(HEARTBEAT_S)
                    await stream.send(wire.Queued(position=max(1, self.admission.position(
                        ticket))))

            nursery.start_soon(keep_telling)
            await self.admission.wait(ticket, tell)
            nursery.cancel_scope.cancel()

    async def benchmark_forever(self) -> None:
        """Measure what jobs here get (the job runtime's torch), now and on a schedule."""
        runtime = getattr(self.executor, "sandbox", None)
        python = runtime.runtime.interpreter if runtime is not None else Path(sys.executable)
        interval = self.config.benchmark_interval_s or 0.0
        try:
            await benchmark_forever(python, self.config.home / "benchmark.json",
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

    def _check_spec(self, spec: JobSpec, peer: str) -> tuple[wire.ErrorCode, str] | None:
        if self.executor is None:
            return ("no_sandbox", f"this provider runs no remote jobs: {self.setup.reason}")
        if spec.provider != self.identity.peer_id:
            return ("wrong_provider", "this job spec is addressed to another provider")
        if spec.requester != peer:
            return ("bad_request", "the job spec was signed by a peer other than the sender")
        if spec.runtime != self.setup.runtime.name:
            return ("bad_request", f"runtime {spec.runtime!r} is not offered here")
        free_gpus = self.executor.gpus.free if isinstance(self.executor, SandboxExecutor) else 0
        if spec.resources.gpus > free_gpus:
            return ("busy" if self.gpu_devices() else "bad_request",
                    f"{spec.resources.gpus} GPU(s) asked, {free_gpus} free here")
        if spec.resources.max_seconds > self.config.max_seconds:
            return ("bad_request", f"max_seconds above this provider's {self.config.max_seconds}")
        if sum(f.size for f in spec.inputs) > MAX_INPUT_BYTES:
            return ("too_large", f"inputs exceed {MAX_INPUT_BYTES} bytes")
        return None

    async def _run(self, stream: Stream, spec: JobSpec, job_id: str, quote: Quote) -> None:
        assert self.executor is not None
        async with self.executor.slot(spec, job_id) as slot:
            await receive_inputs(stream, spec, job_id, slot, cache=self.cache,
                                 metrics=self.metrics, on_cached=self.wake_advertiser)
            log.info("job %s from %s: running %s", job_id[:12], spec.requester[:16],
                     spec.entrypoint)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_heartbeat, stream)
                send, recv = trio.open_memory_channel[tuple[str, bytes]](LIVE_BACKLOG)
                async with trio.open_nursery() as forwarding:
                    forwarding.start_soon(forward_output, stream, recv)
                    with send:
                        token = output_sink.set(partial(offer, send))
                        try:
                            ex = await slot.run()
                        finally:
                            output_sink.reset(token)
                    forwarding.cancel_scope.deadline = trio.current_time() + 2.0
                # heartbeats go on while outputs are hashed (large outputs, slow disks)
                outputs = await trio.to_thread.run_sync(collect_outputs, slot.out_dir)
                nursery.cancel_scope.cancel()
            proc = ex.process
            price_charged = charge(
                self.config.price, spec.resources, cpu_s=proc.cpu_s, wall_s=proc.wall_s,
                bytes_in=sum(f.size for f in spec.inputs),
                bytes_out=sum(o.size for o, _ in outputs), quoted=quote.max_charge)
            stdout, out_clipped = clip_text(proc.stdout)
            stderr, err_clipped = clip_text(proc.stderr)
            result = JobResult(
                job_id=job_id, provider=self.identity.peer_id, requester=spec.requester,
                status=proc.status, exit_code=proc.exit_code, stdout=stdout, stderr=stderr,
                stdout_truncated=proc.stdout_truncated or out_clipped,
                stderr_truncated=proc.stderr_truncated or err_clipped,
                outputs=tuple(o for o, _ in outputs), limits_hit=ex.limits_hit,
                usage=Usage(wall_s=round(proc.wall_s, 3), cpu_s=round(proc.cpu_s, 3),
                            gpu_s=0.0, peak_memory_mb=proc.peak_memory_mb),
                sandbox=ex.profile, price_charged=price_charged, finished_at=self.now_ms())
            signed = sign(result, self.identity)
            await trio.to_thread.run_sync(self.results.put, job_id, signed.raw)
            m = self.metrics
            m.jobs_total.labels(outcome=proc.status).inc()
            m.job_seconds.observe(proc.wall_s)
            m.earnings_total.inc(price_charged)
            await stream.send(wire.ResultReady(result=signed.raw))
            with transfer_deadline(sum(o.size for o, _ in outputs), f"the outputs of job "
                                   f"{job_id[:12]}"):
                for out, path in outputs:
                    await send_file(stream, out.name, path)
                    m.bytes_out_total.inc(out.size)
        log.info("job %s: %s (exit %d%s) in %.2f s", job_id[:12], proc.status, proc.exit_code,
                 f", hit {','.join(ex.limits_hit)}" if ex.limits_hit else "", proc.wall_s)


async def _heartbeat(stream: Stream) -> None:
    started = time.monotonic()
    while True:
        await trio.sleep(HEARTBEAT_S)
        await stream.send(wire.Running(elapsed_s=round(time.monotonic() - started, 3)))


def _throughput(m: tuple[float, float, float, float]) -> dict[str, Any]:
    return {"gflops": m[0], "fp16_gflops": m[1], "bf16_gflops": m[2], "mem_gbps": m[3]}


async def serve(config: ProviderConfig, identity: Identity, *,
                clock: Callable[[], float] = time.time) -> None:
    """Run until SIGINT/SIGTERM: lock the home, reap what a previous run left, listen,
    bootstrap, advertise, serve jobs."""
    # the lock comes first: nothing touches the sandbox, cgroups or warm pool without it
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, \
            HomeLock(config.home) as home_lock:
        async with open_executor(jobs_dir=config.home / "jobs", key_file=config.home / KEY_FILE,
                                 slots=config.slots, warm=config.warm,
                                 unsafe_no_sandbox=config.unsafe_no_sandbox,
                                 cgroup_base=f"offload-{identity.peer_id[-12:]}",
                                 tiers=config.sandbox_tiers,
                                 home_lock=home_lock.path) as setup, \
                open_host(identity, config.listen, limits=config.limits) as host, \
                open_discovery(host, server=True, clock=clock) as disc:
            provider = Provider(config, identity, clock=clock, setup=setup)
            pool = getattr(setup.executor, "pool", None)
            if pool is not None:
                pool.may_refill = provider.quiet
            tier = setup.executor.tier if setup.executor else None
            if tier is None:
                log.error("refusing remote jobs and not advertising: %s. Fix it, or pass "
                          "--unsafe-no-sandbox to run jobs without isolation", setup.reason)
            else:
                log.info("sandbox tier %s (%s)", tier, setup.reason)
            provider.peer_errors = host.peer_errors
            host.peer_errors.on_count = provider.metrics.count_peer_error
            host.handle(wire.JOB_PROTOCOL, provider.handle_job, refuse=busy_stream)
            host.handle(wire.SETTLE_PROTOCOL, provider.handle_settle, refuse=busy_stream)
            provider.ledger = Ledger.open(config.home / LEDGER_FILE, identity)
            await disc.bootstrap(config.bootstrap)
            async with trio.open_nursery() as nursery:
                ads = trio.CancelScope()
                provider.gossip = await nursery.start(
                    partial(run_gossip, host, on_receipt=recorder(provider.ledger,
                                                                   host.peer_errors)))
                if setup.executor is not None:
                    await nursery.start(_in_scope, ads, provider.advertise_forever, host, disc)
                provider.addrs = host.addrs()
                provider.telemetry = Telemetry()
                provider.cache = await trio.to_thread.run_sync(partial(
                    InputCache, config.cache_dir or config.home / "cache",
                    max_bytes=config.cache_max_bytes))
                if config.benchmark_interval_s is not None and setup.executor is not None:
                    nursery.start_soon(provider.benchmark_forever)
                if setup.executor is not None:
                    nursery.start_soon(partial(probe_forever, host, disc, provider.peers,
                                               on_moved=provider.wake_advertiser))
                provider.metrics.info.info({"peer_id": identity.peer_id,
                                            "tier": tier or "refusing", "version": VERSION})
                if config.metrics_listen:
                    mhost, _, mport = config.metrics_listen.rpartition(":")
                    port = await nursery.start(serve_metrics, provider.metrics, mhost,
                                               int(mport))
                    provider.metrics_url = f"http://{mhost}:{port}/metrics"
                nursery.start_soon(partial(publish_forever, config.home, provider.status,
                                           clock=clock))
                if config.ready_file is not None:
                    write_ready_file(config.ready_file, identity.peer_id, host.addrs())
                log.info("provider %s listening on %s", identity.peer_id, host.addrs())
                async for signum in signals:
                    log.info("signal %d: stopping", signum)
                    break
                if provider.running or provider.admission.queued:
                    ads.cancel()
                    await provider.drain(host, disc, signals)
                nursery.cancel_scope.cancel()
            provider.ledger.close()


async def _in_scope(scope: trio.CancelScope, fn: Callable[..., Awaitable[None]], *args: Any,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with scope:
        await fn(*args, task_status=task_status)


def write_ready_file(path: Path, peer_id: str, addrs: Sequence[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"peer_id": peer_id, "addrs": list(addrs)}))
    tmp.replace(path)
