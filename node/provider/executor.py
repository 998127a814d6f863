"""Where a provider's jobs run: the tier-A sandbox (warm or cold), or a plain subprocess when
the operator passed --unsafe-no-sandbox. Both give the provider the same `Slot` interface."""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Literal, Protocol

import trio

from node.provider import runner
from node.provider.sandbox import runtime as runtime_mod
from node.provider.sandbox import users as users_mod
from node.provider.sandbox.check import CheckReport
from node.provider.sandbox.errors import SandboxError, SandboxUnavailable
from node.provider.sandbox.gpu import Gpu
from node.provider.sandbox.pool import WarmPool, warm_pool
from node.provider.sandbox.runner import JobLimits, Sandbox, SandboxJob, job_env, sandbox_root
from protocol import JobSpec, Runtime, SandboxProfile
from protocol.messages import Limit, SandboxTier

PIDS_LIMIT = 256
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Execution:
    process: runner.ProcessResult
    limits_hit: tuple[Limit, ...]
    profile: SandboxProfile


class Interactive:
    """A long-lived process of a slot (a session host): `stdin` and `stdout` are pipes the
    caller drives; stderr is kept (capped, `stderr_tail`). `cpu_s()` and `peak_memory_mb`
    are its usage so far; the slot's `interactive()` kills it on exit and leaves the final
    usage here."""

    def __init__(self, process: trio.Process, usage: Callable[[], tuple[float, int]]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.stdin: trio.abc.SendStream = process.stdin
        self.stdout: trio.abc.ReceiveStream = process.stdout
        self.started = time.monotonic()
        self._usage = usage
        self.final: tuple[float, int] | None = None
        self._stderr = bytearray()

    def cpu_s(self) -> float:
        return (self.final or self._usage())[0]

    @property
    def peak_memory_mb(self) -> int:
        return (self.final or self._usage())[1]

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stderr_tail(self, n: int = 500) -> str:
        return bytes(self._stderr[-n:]).decode("utf-8", "replace")

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """Its stderr kept (the last MAX_STDERR_KEPT bytes) while the caller talks to it."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain_stderr)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def _drain_stderr(self) -> None:
        stream = self.process.stderr
        if stream is None:
            return
        while chunk := await stream.receive_some(65536):
            self._stderr += chunk
            del self._stderr[:-MAX_STDERR_KEPT]


MAX_STDERR_KEPT = 64 * 1024


class Slot(Protocol):
    def input_path(self, name: str) -> Path: ...
    def expose_input(self, name: str) -> None: ...
    @property
    def out_dir(self) -> Path: ...
    async def run(self) -> Execution: ...
    def interactive(self) -> AbstractAsyncContextManager[Interactive]:
        """The spec's entrypoint, started with stdin and stdout pipes, in the job's cwd."""
        ...


class Executor(Protocol):
    tier: SandboxTier

    def slot(self, spec: JobSpec, job_id: str) -> AbstractAsyncContextManager[Slot]: ...


def limits_for(spec: JobSpec) -> JobLimits:
    r = spec.resources
    return JobLimits(wall_s=float(r.max_seconds), memory_mb=r.memory_mb, cpus=float(r.cpus),
                     pids=PIDS_LIMIT, disk_mb=r.disk_mb)


class PlainSlot:
    """No isolation at all: a subprocess in a fresh directory (tier `none`)."""

    def __init__(self, spec: JobSpec, work: Path) -> None:
        self.spec = spec
        self.work = work

    def input_path(self, name: str) -> Path:
        return self.work / name

    def expose_input(self, name: str) -> None:
        pass

    @property
    def out_dir(self) -> Path:
        return self.work / "out"

    async def run(self) -> Execution:
        self.out_dir.mkdir(exist_ok=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.work),
               "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": str(self.spec.resources.cpus)}
        argv = [sys.executable, "-u", "-s", self.spec.entrypoint, *self.spec.args]
        proc = await runner.run_process(argv, cwd=self.work, env=env,
                                        timeout_s=self.spec.resources.max_seconds)
        hit: tuple[Limit, ...] = ("wall",) if proc.status == "timeout" else ()
        profile = SandboxProfile(
            tier="none", wall_limit_s=self.spec.resources.max_seconds, memory_limit_mb=0,
            cpu_limit=0.0, pids_limit=0, disk_limit_mb=0, network="host", runtime="python3",
            runtime_digest="", warm=False)
        return Execution(process=proc, limits_hit=hit, profile=profile)

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.work),
                "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": str(self.spec.resources.cpus)}

    @asynccontextmanager
    async def interactive(self) -> AsyncIterator[Interactive]:
        self.out_dir.mkdir(exist_ok=True)
        argv = [sys.executable, "-u", "-s", self.spec.entrypoint, *self.spec.args]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = await trio.lowlevel.open_process(
            argv, cwd=str(self.work), env=self._env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

        def usage() -> tuple[float, int]:
            return _proc_cpu_s(proc.pid), 0

        it = Interactive(proc, usage)
        try:
            async with it.serving():
                yield it
        finally:
            with trio.CancelScope(shield=True):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                await proc.wait()
                await _close_pipes(proc)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            it.final = (max(0.0, (after.ru_utime + after.ru_stime)
                            - (before.ru_utime + before.ru_stime)), after.ru_maxrss // 1024)


def _proc_cpu_s(pid: int) -> float:
    """User and system CPU of a live process so far (Linux /proc); 0.0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _close_pipes(proc: trio.Process) -> None:
    for s in (proc.stdin, proc.stdout, proc.stderr):
        if s is not None:
            await s.aclose()


class PlainExecutor:
    tier: SandboxTier = "none"

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir

    @asynccontextmanager
    async def slot(self, spec: JobSpec, job_id: str) -> AsyncIterator[Slot]:
        work = self.jobs_dir / job_id[:16]
        work.mkdir(parents=True)
        try:
            yield PlainSlot(spec, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


class SandboxSlot:
    def __init__(self, executor: SandboxExecutor, spec: JobSpec, job: SandboxJob,
                 worker: object | None) -> None:
        self.executor = executor
        self.spec = spec
        self.job = job
        self.worker = worker

    def input_path(self, name: str) -> Path:
        return self.job.input_path(name)

    def expose_input(self, name: str) -> None:
        self.job.expose_input(name)

    @property
    def out_dir(self) -> Path:
        return self.job.work_dir / "out"

    async def run(self) -> Execution:
        from node.provider.sandbox.pool import Worker

        self.job.make_out_dir()
        limits = limits_for(self.spec)
        env = job_env(limits)
        if isinstance(self.worker, Worker):
            result = await self.worker.run(self.spec.entrypoint, self.spec.args, limits, env)
        else:
            argv = [str(self.executor.sandbox.runtime.interpreter), "-u", "-s",
                    self.spec.entrypoint, *self.spec.args]
            result = await self.job.run(argv, env)
        runtime = self.executor.sandbox.runtime
        profile = SandboxProfile(
            tier=self.executor.tier, wall_limit_s=self.spec.resources.max_seconds,
            memory_limit_mb=limits.memory_mb, cpu_limit=limits.cpus, pids_limit=limits.pids,
            disk_limit_mb=limits.disk_mb, network="none", runtime=runtime.name,
            runtime_digest=runtime.digest, warm=result.warm)
        hit = tuple(h for h in result.limits_hit if h in ("wall", "memory", "pids", "disk",
                                                          "cpu"))
        return Execution(process=result.process, limits_hit=hit, profile=profile)  # type: ignore[arg-type]

    @asynccontextmanager
    async def interactive(self) -> AsyncIterator[Interactive]:
        """The entrypoint in this sandbox under the job's limits: handed to the warm
        worker when the slot has one, else started cold; the caller enforces the wall
        limit. Usage is the cgroup's (from the handover, for a warm worker)."""
        from node.provider.sandbox.pool import Worker

        job = self.job
        job.make_out_dir()
        limits = limits_for(self.spec)
        env = job_env(limits)
        baseline = 0.0
        if isinstance(self.worker, Worker):
            proc = await self.worker.start_interactive(self.spec.entrypoint, limits, env)
            baseline = self.worker.cpu_at_ready
        else:
            argv = [str(self.executor.sandbox.runtime.interpreter), "-u", "-s",
                    self.spec.entrypoint, *self.spec.args]
            proc = await job.start(argv, env, stdin=subprocess.PIPE)

        def usage() -> tuple[float, int]:
            if job.cgroup is None:
                return 0.0, 0
            u = job.cgroup.usage()
            return max(0.0, u.cpu_s - baseline), u.peak_memory_bytes >> 20

        it = Interactive(proc, usage)
        try:
            async with it.serving():
                yield it
        finally:
            with trio.CancelScope(shield=True):
                if job.cgroup is not None:
                    await trio.to_thread.run_sync(job._kill_quietly)
                proc.kill()
                await proc.wait()
                await _close_pipes(proc)
                job._read_status()  # closes bwrap's status pipe
                it.final = await trio.to_thread.run_sync(usage)


class GpuAllocator:
    """Whole GPUs, each assigned to one job at a time."""

    def __init__(self, gpus: Sequence[Gpu]) -> None:
        self._free = list(gpus)
        self.total = len(gpus)

    @property
    def free(self) -> int:
        return len(self._free)

    def take(self, n: int) -> list[Gpu]:
        if n > len(self._free):
            raise SandboxUnavailable(f"{n} GPU(s) asked, {len(self._free)} free")
        taken, self._free = self._free[:n], self._free[n:]
        return taken

    def give_back(self, gpus: Sequence[Gpu]) -> None:
        self._free.extend(g for g in gpus if g not in self._free)
        self._free.sort(key=lambda g: g.index)


class SandboxExecutor:
    def __init__(self, sandbox: Sandbox, pool: WarmPool | None) -> None:
        self.tier: SandboxTier = sandbox.tier
        self.gpus = GpuAllocator(sandbox.gpus)
        self.sandbox = sandbox
        self.pool = pool

    @asynccontextmanager
    async def slot(self, spec: JobSpec, job_id: str) -> AsyncIterator[Slot]:
        """A sandbox for `spec`: a warm worker (parked for its requester, or ready) when the
        pool has one, else one booted now without preloads; cold for GPU jobs."""
        worker = None
        if self.pool is not None and spec.resources.gpus == 0:
            worker = self.pool.take(spec.requester) or await self.pool.boot()
        if worker is not None:
            assert self.pool is not None
            try:
                yield SandboxSlot(self, spec, worker.job, worker)
            finally:
                await self.pool.finish(worker, spec.requester)
            return
        name = f"job-{job_id[:16]}-{os.urandom(2).hex()}"
        gpus = self.gpus.take(spec.resources.gpus)
        try:
            async with self.sandbox.job(name, limits_for(spec), gpus=gpus) as job:
                yield SandboxSlot(self, spec, job, None)
        finally:
            self.gpus.give_back(gpus)


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutorSetup:
    executor: Executor | None      # None: remote jobs are refused
    runtime: Runtime
    report: CheckReport | None
    reason: str                    # why the tier is what it is


def plain_runtime() -> Runtime:
    info = runtime_mod.from_interpreter(Path(sys.executable))
    return Runtime(name=info.name, version=info.python, packages=info.packages,
                   digest=info.digest)


async def prove_tier(*, key_file: Path, slots: int, warm: int, cgroup_base: str,
                     runtime_name: str, tiers: Sequence[Literal["A", "B"]],
                     home_lock: Path | None = None, root: Path | None = None
                     ) -> tuple[Sandbox | None, CheckReport | None, str]:
    """The first of `tiers` whose quick escape self-test passes on this host, after reaping
    what a previous run with this cgroup base left (the caller holds `home_lock`)."""
    from node.provider.sandbox.cgroups import CgroupError, detect_usable
    from node.provider.sandbox.check import check
    from node.provider.sandbox.errors import SandboxError
    from node.provider.sandbox.gpu import discover
    from node.provider.sandbox.reap import reap_stale

    reasons = []
    root = root or sandbox_root()
    try:
        if os.geteuid() != 0:
            raise SandboxUnavailable("isolation needs the daemon to run as root (it drops "
                                     "every job to a dedicated user)")
        user_list = users_mod.lookup(slots + warm)
        cgroups = await trio.to_thread.run_sync(lambda: detect_usable(base=cgroup_base))
        await trio.to_thread.run_sync(reap_stale, cgroups, root)
        info = runtime_mod.describe(runtime_name)
        gpus = await trio.to_thread.run_sync(discover)
    except (SandboxError, CgroupError, OSError) as exc:
        return None, None, str(exc)
    report = None
    for tier in tiers:
        if tier == "A" and shutil.which("bwrap") is None:
            reasons.append("tier A: bubblewrap is missing (apt-get install bubblewrap)")
            continue
        sandbox = Sandbox(users=users_mod.UserPool(user_list), cgroups=cgroups, runtime=info,
                          gpus=gpus, tier=tier, root=root, home_lock=home_lock)
        try:
            report = await check(sandbox, key_file=key_file, quick=True)
        except (SandboxError, CgroupError, OSError) as exc:
            reasons.append(f"tier {tier}: {exc}")
            continue
        if report.tier == tier:
            return sandbox, report, f"tier {tier} escape self-test passed"
        reasons.append(f"tier {tier}: {', '.join(report.escaped)} escaped")
    return None, report, "; ".join(reasons)


@asynccontextmanager
async def open_executor(*, jobs_dir: Path, key_file: Path, slots: int, warm: int,
                        unsafe_no_sandbox: bool, cgroup_base: str,
                        runtime_name: str = "python3",
                        tiers: Sequence[Literal["A", "B"]] = ("A", "B"),
                        home_lock: Path | None = None
                        ) -> AsyncIterator[ExecutorSetup]:
    """Prove the best tier with the quick escape self-test; else fall back as allowed.

    Hold the home lock (`home_lock` is its file) around this: at start it reaps what a
    previous run left, and at exit it removes our job groups, job dirs and base folders."""
    from node.provider.sandbox.reap import remove_own

    sandbox, report, reason = await prove_tier(
        key_file=key_file, slots=slots, warm=warm, cgroup_base=cgroup_base,
        runtime_name=runtime_name, tiers=tiers, home_lock=home_lock)
    if sandbox is not None:
        runtime = Runtime(name=sandbox.runtime.name, version=sandbox.runtime.python,
                          packages=sandbox.runtime.packages, digest=sandbox.runtime.digest)
        try:
            if warm > 0:
                async with warm_pool(sandbox, warm) as pool:
                    yield ExecutorSetup(SandboxExecutor(sandbox, pool), runtime, report,
                                        reason)
            else:
                yield ExecutorSetup(SandboxExecutor(sandbox, None), runtime, report, reason)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await trio.to_thread.run_sync(remove_own, sandbox.cgroups, sandbox.root)
                except (SandboxError, OSError) as exc:
                    log.warning("could not remove every cgroup and job dir: %s", exc)
        return
    if unsafe_no_sandbox:
        yield ExecutorSetup(PlainExecutor(jobs_dir), plain_runtime(), report,
                            f"--unsafe-no-sandbox: {reason}")
    else:
        yield ExecutorSetup(None, plain_runtime(), report, reason)
