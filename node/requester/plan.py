"""The offload decision with real inputs: this node's benchmark, the job's hints, offers.

A script may declare its size in a comment near the top, which `--gflop` / `--items`
override:

    # offload: gflop=5000 items=100
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import trio

from node import benchmark
from node.errors import UserError
from node.home import Home
from protocol import CapacityAd
from scheduler.decide import LocalCapacity, Plan, decide, gflop_estimate
from scheduler.scoring import JobEstimate, Observations, ScoreParts, rank

log = logging.getLogger(__name__)
BENCHMARK_MAX_AGE_S = 7 * 86_400.0
BENCHMARK_BUDGET_S = 3.0
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
                         cpus=os.cpu_count() or 1, gpu_gflops=gpus,
                         memory_mb=int(os.sysconf("SC_PAGE_SIZE")
                                       * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)))


async def local_capacity(home: Path, *, clock: Any = time.time) -> LocalCapacity:
    """This node's throughput: its stored benchmark, measured now if missing or old."""
    path = Home(home).local_benchmark
    report = benchmark.load(path)
    if benchmark.is_stale(report, now=clock(), interval_s=BENCHMARK_MAX_AGE_S,
                          runtime_digest="local"):
        try:
            report = await trio.to_thread.run_sync(lambda: benchmark.run_benchmark(
                Path(sys.executable), runtime_digest="local", budget_s=BENCHMARK_BUDGET_S,
                clock=clock))
        except benchmark.BenchmarkFailed as exc:
            raise UserError(f"cannot measure this node's speed for the plan: {exc}") from None
        benchmark.save(report, path)
    assert report is not None
    return capacity_from(report)


def make_plan(job: JobEstimate, local: LocalCapacity, ads: list[CapacityAd],
              obs: Observations, *, items: int = 1, now_ms: int,
              value_of_time: float = 0.001) -> tuple[Plan, list[tuple[CapacityAd, ScoreParts]]]:
    """The decision and the ranked offers it was made from (scored for the same job)."""
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


def plan_json(plan: Plan) -> dict[str, Any]:
    def option(o: Any) -> dict[str, Any]:
        return {"kind": o.kind, "seconds": round(o.seconds, 4),
                "cost_credits": round(o.cost_credits, 6), "objective": round(o.objective, 6),
                "parts": [{"peer": p.peer, "items": p.items, "seconds": round(p.seconds, 4),
                           "cost_credits": round(p.cost_credits, 6)} for p in o.parts]}

    return {"decision": plan.decision, "reason": plan.reason, "gflop": round(plan.gflop, 3),
            "gflop_assumed": plan.gflop_assumed, "items": plan.items,
            "chosen": option(plan.chosen), "options": [option(o) for o in plan.options]}
