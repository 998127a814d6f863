"""The offload decision with real inputs: this node's benchmark, the job's hints, offers.

A script may declare its size in a comment near the top, which `--gflop` / `--items`
override:

    # offload: gflop=5000 items=100

A script that declares none is measured here (`measure_gflop`: one run, bounded by the
job's timeout and MEASURE_CAP_S). This node's benchmark is kept under the home; when it
cannot run (a busy host) the plan uses the last one, else FALLBACK_CPU_GFLOPS, and says so.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from node import benchmark
from node.errors import UserError
from node.home import Home
from protocol import CapacityAd
from scheduler.decide import LocalCapacity, Plan, decide, gflop_estimate
from scheduler.requirements import Requirements, holds
from scheduler.scoring import JobEstimate, Observations, ScoreParts, rank

log = logging.getLogger(__name__)
BENCHMARK_MAX_AGE_S = 7 * 86_400.0
BENCHMARK_BUDGET_S = 3.0
MEASURE_CAP_S = 10.0
"""Longest a script without a size hint runs here to be measured for `plan`."""
FALLBACK_CPU_GFLOPS = 10.0
"""This node's assumed speed per cpu when its benchmark cannot run and none is stored."""
_HINT = re.compile(r"^#\s*offload:\s*(.*)$")
_PAIR = re.compile(r"(gflop|items)\s*=\s*([0-9]+(?:\.[0-9]*)?(?:[eE][0-9]+)?)")


def script_hints(script: Path) -> dict[str, float]:
    """`gflop` and `items` from a `# offload:` comment in the first 20 lines."""
    hints: dict[str, float] = {}
    try:
        with script.open(encoding="utf-8", errors="replace") as f:
            lines = [f.readline() for _ in range(20)]
    except OSError:
        return hints
    for line in lines:
        m = _HINT.match(line.strip())
        if m:
            hints.update((k, float(v)) for k, v in _PAIR.findall(m.group(1)))
    return hints


def capacity_from(report: benchmark.BenchmarkReport) -> LocalCapacity:
    cpu = report.device("cpu")
    gpus = tuple(d.fp32_tflops * 1000.0 for d in report.devices if d.device != "cpu")
    return LocalCapacity(cpu_gflops=cpu.fp32_tflops * 1000.0 if cpu else 0.0,
                         cpus=os.cpu_count() or 1, gpu_gflops=gpus, memory_mb=_memory_mb())


async def local_capacity(home: Path, *, clock: Any = time.time,
                         python: Path | None = None) -> LocalCapacity:
    """This node's throughput: its stored benchmark, measured now if missing or old; a
    benchmark that cannot run (a busy host) never fails the plan: the stored one, else
    FALLBACK_CPU_GFLOPS, with a warning."""
    path = Home(home).local_benchmark
    report = benchmark.load(path)
    if benchmark.is_stale(report, now=clock(), interval_s=BENCHMARK_MAX_AGE_S,
                          runtime_digest="local"):
        try:
            fresh = await trio.to_thread.run_sync(lambda: benchmark.run_benchmark(
                python or Path(sys.executable), runtime_digest="local", budget_s=BENCHMARK_BUDGET_S,
                clock=clock))
        except benchmark.BenchmarkFailed as exc:
            log.warning("cannot measure this node's speed now (%s); the plan uses %s", exc,
                        "its last benchmark" if report else
                        f"{FALLBACK_CPU_GFLOPS:g} GFLOP/s per cpu")
        else:
            benchmark.save(fresh, path)
            report = fresh
    if report is None:
        cpus = os.cpu_count() or 1
        return LocalCapacity(cpu_gflops=FALLBACK_CPU_GFLOPS * cpus, cpus=cpus, gpu_gflops=(),
                             memory_mb=_memory_mb())
    return capacity_from(report)


def _memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))


@dataclasses.dataclass(frozen=True, slots=True)
class Measured:
    """One run of a script here: its GFLOP as wall time x this node's rate."""

    gflop: float
    seconds: float
    finished: bool
    """False when it was stopped at the bound: `gflop` is then a lower bound."""


def measure_gflop(script: Path, args: Sequence[str], files: Sequence[Path],
                  local: LocalCapacity, *, cpus: int, gpus: int, timeout_s: float,
                  cap_s: float = MEASURE_CAP_S) -> Measured:
    """Run `script` once here, in a scratch folder with its files beside it and its output
    discarded, for at most min(timeout_s, cap_s) seconds (its interpreter's start is not
    counted): how much work it is at this node's speed."""
    bound = max(0.1, min(float(timeout_s), cap_s))
    rate = local.throughput(cpus, gpus) or local.cpu_gflops or FALLBACK_CPU_GFLOPS
    with tempfile.TemporaryDirectory(prefix="offload-plan-") as tmp:
        for path in (script, *files):
            shutil.copy2(path, Path(tmp) / path.name)
        base = _run_for(Path(tmp), [sys.executable, "-c", "pass"], bound)[0]
        took, finished = _run_for(Path(tmp), [sys.executable, script.name, *args], bound)
    seconds = max(took - base, 0.001) if finished else bound
    return Measured(gflop=seconds * rate, seconds=seconds, finished=finished)


def _run_for(cwd: Path, argv: list[str], bound_s: float) -> tuple[float, bool]:
    started = time.monotonic()
    try:
        subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=bound_s, check=False)
    except subprocess.TimeoutExpired:
        return bound_s, False
    return time.monotonic() - started, True


def make_plan(job: JobEstimate, local: LocalCapacity, ads: list[CapacityAd],
              obs: Observations, *, items: int = 1, now_ms: int,
              value_of_time: float = 0.001) -> tuple[Plan, list[tuple[CapacityAd, ScoreParts]]]:
    """The decision and the ranked offers it was made from (scored for the same job)."""
    res = job.resources
    needs = Requirements(cpus=res.cpus, memory_mb=res.memory_mb, gpus=res.gpus)
    ads = [a for a in ads if holds(a, needs)]  # an ad that cannot hold the job is no option
    gflop, assumed = gflop_estimate(job, local)
    sized = JobEstimate(resources=job.resources, gflop=gflop, input_digests=job.input_digests,
                        input_bytes_by_digest=job.input_bytes_by_digest)
    ranked = rank(ads, sized, obs, now_ms=now_ms)
    try:
        plan = decide(sized, local, ranked, items=items, gflop_assumed=assumed,
                      value_of_time_credits_per_s=value_of_time)
    except ValueError as exc:
        raise UserError(f"{exc}; ask for fewer GPUs or less memory, or find more "
                        "providers with `offload offers`") from None
    return plan, ranked


def _credits(amount: float) -> str:
    return f"{amount:.6f}"


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as JSON; costs in credits as decimal strings, like the ledger's."""
    def option(o: Any) -> dict[str, Any]:
        return {"kind": o.kind, "seconds": round(o.seconds, 4),
                "cost_credits": _credits(o.cost_credits), "objective": round(o.objective, 6),
                "parts": [{"peer": p.peer, "items": p.items, "seconds": round(p.seconds, 4),
                           "cost_credits": _credits(p.cost_credits)} for p in o.parts]}

    return {"decision": plan.decision, "reason": plan.reason, "gflop": round(plan.gflop, 3),
            "gflop_assumed": plan.gflop_assumed, "items": plan.items,
            "chosen": option(plan.chosen), "options": [option(o) for o in plan.options]}
