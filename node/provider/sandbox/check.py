"""`offload sandbox check`: run every escape probe in the sandbox and judge it on the host."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from node.provider.sandbox.probes import (
    DONE,
    EPILOGUE,
    PRELUDE,
    PROBES,
    RESOURCE_LIMITS,
    Probe,
    ProbeContext,
    ProbeRun,
    leftover_processes,
)
from node.provider.sandbox.runner import JobLimits, Sandbox, job_env

TIER_B_EXEMPT = frozenset({"network_interfaces"})
"""Tier B has no network namespace: the host's interfaces are visible, though unreachable."""


@dataclasses.dataclass(frozen=True, slots=True)
class CheckReport:
    tier: str
    probes: dict[str, str]
    startup_ms: float
    details: dict[str, str]

    @property
    def escaped(self) -> list[str]:
        return [name for name, verdict in self.probes.items() if verdict == "escaped"]

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.tier, "probes": self.probes, "startup_ms": self.startup_ms}


def probe_source(probe: Probe) -> str:
    return PRELUDE + probe.code + EPILOGUE


def verdict(probe: Probe, ctx: ProbeContext, run: ProbeRun) -> tuple[str, str]:
    """Judge on the host; a probe that did not run to its end proves nothing: escaped."""
    if not probe.resource and DONE not in run.stdout:
        return "escaped", f"the probe did not finish ({run.status}); treated as an escape"
    escaped = probe.judge(ctx, run)
    detail = f"{run.status}, limits hit: {','.join(run.limits_hit) or '-'}"
    return ("escaped" if escaped else "blocked"), detail


def probe_limits(probe: Probe) -> JobLimits:
    if probe.resource:
        r = RESOURCE_LIMITS
        return JobLimits(wall_s=r["wall_s"], memory_mb=int(r["memory_mb"]), pids=int(r["pids"]),
                         cpus=r["cpus"], disk_mb=int(r["disk_mb"]))
    return JobLimits(wall_s=10.0, memory_mb=512, pids=64, cpus=1.0, disk_mb=16)


async def run_sandboxed(sandbox: Sandbox, probe: Probe, ctx: ProbeContext) -> ProbeRun:
    limits = probe_limits(probe)
    name = f"job-probe-{probe.name.replace('_', '-')}-{ctx.tag[:6]}-{os.urandom(3).hex()}"
    async with sandbox.job(name, limits) as job:
        job.input_path("probe.py").write_text(probe_source(probe))
        job.expose_input("probe.py")
        argv = [str(sandbox.runtime.interpreter), "-s", "-u", "probe.py",
                json.dumps(ctx.params())]
        result = await job.run(argv, job_env(limits))
        leftover = len(leftover_processes(ctx.tag, job.user.uid))
    p = result.process
    return ProbeRun(stdout=p.stdout.decode("utf-8", "replace"), status=p.status,
                    wall_s=p.wall_s, cpu_s=p.cpu_s, limits_hit=result.limits_hit,
                    leftover=leftover)


def run_plain(probe: Probe, ctx: ProbeContext, *, python: str = sys.executable,
              cwd: Path | None = None) -> ProbeRun:
    """The canary: the same probe with no sandbox at all, as this (root) process's user."""
    limits = probe_limits(probe)
    started = time.monotonic()
    before = os.times()
    proc = subprocess.Popen([python, "-c", probe_source(probe), json.dumps(ctx.params())],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd,
                            start_new_session=True)
    status = "ok"
    try:
        out, _ = proc.communicate(timeout=limits.wall_s + 1)
    except subprocess.TimeoutExpired:
        status = "still running"
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
    after = os.times()
    leftover = leftover_processes(ctx.tag)
    run = ProbeRun(stdout=out.decode("utf-8", "replace"), status=status,
                   wall_s=time.monotonic() - started,
                   cpu_s=(after.children_user + after.children_system)
                   - (before.children_user + before.children_system),
                   limits_hit=(), leftover=len(leftover))
    for pid in leftover:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    return run


async def check(sandbox: Sandbox, *, key_file: Path | None, quick: bool = False) -> CheckReport:
    """Run the probes (all, or the fast ones for a daemon's start-up) and judge each."""
    probes = [p for p in PROBES if not (quick and p.resource)]
    verdicts: dict[str, str] = {}
    details: dict[str, str] = {}
    ctx = await trio.to_thread.run_sync(lambda: ProbeContext(
        key_file=key_file, runtime_dir=sandbox.runtime.path, daemon_pid=os.getpid()))
    try:
        started = time.monotonic()
        trivial = Probe("startup", "pass\n", lambda c, r: False)
        await run_sandboxed(sandbox, trivial, ctx)
        startup_ms = (time.monotonic() - started) * 1000
        limiter = trio.CapacityLimiter(max(1, min(2, sandbox.users.free)))

        async def one(probe: Probe) -> None:
            async with limiter:
                try:
                    run = await run_sandboxed(sandbox, probe, ctx)
                except Exception as exc:  # a probe that breaks the sandbox counts as escaped
                    verdicts[probe.name] = "escaped"
                    details[probe.name] = f"probe failed to run: {exc}"
                    return
            verdicts[probe.name], details[probe.name] = verdict(probe, ctx, run)

        async with trio.open_nursery() as nursery:
            for probe in probes:
                nursery.start_soon(one, probe)
    finally:
        ctx.close()
    ordered = {p.name: verdicts[p.name] for p in probes}
    required = [v for n, v in ordered.items()
                if sandbox.tier == "A" or n not in TIER_B_EXEMPT]
    tier = sandbox.tier if all(v == "blocked" for v in required) else "none"
    return CheckReport(tier=tier, probes=ordered, startup_ms=round(startup_ms, 1),
                       details=details)
