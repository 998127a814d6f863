"""Sandbox start-up, cold and warm, against a plain subprocess measured in the same run.

Usage (root, after `make setup`): .venv/bin/python bench/bench_sandbox.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import trio

from node.provider.sandbox import runtime, users
from node.provider.sandbox.cgroups import detect_usable
from node.provider.sandbox.pool import WarmPool, warm_pool
from node.provider.sandbox.runner import JobLimits, Sandbox, job_env

TRIVIAL = "pass\n"
TORCH = "import torch\nprint(float(torch.ones(64, 64).sum()))\n"
LIMITS = JobLimits(wall_s=60)


def plain(python: str, code: str) -> float:
    t = time.perf_counter()
    subprocess.run([python, "-s", "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t


async def cold(sandbox: Sandbox, code: str) -> float:
    t = time.perf_counter()
    async with sandbox.job(f"job-bench-{os.urandom(4).hex()}", LIMITS) as job:
        job.input_path("b.py").write_text(code)
        job.expose_input("b.py")
        r = await job.run([str(sandbox.runtime.interpreter), "-s", "b.py"], job_env(LIMITS))
    assert r.process.status == "ok", r.process.stderr
    return time.perf_counter() - t


async def warm(pool: WarmPool, code: str) -> float:
    with trio.fail_after(120):
        while pool.ready < 1:
            await trio.sleep(0.01)
    worker = pool.take()
    assert worker is not None
    t = time.perf_counter()
    try:
        worker.job.input_path("b.py").write_text(code)
        worker.job.expose_input("b.py")
        r = await worker.run("b.py", [], LIMITS, job_env(LIMITS))
    finally:
        worker.done()
    assert r.process.status == "ok", r.process.stderr
    return time.perf_counter() - t


async def median_of(n: int, fn: Callable[[], Awaitable[float]]) -> float:
    return statistics.median([await fn() for _ in range(n)])


async def main(runs: int) -> None:
    cgroups = detect_usable(base=f"offload-bench-{os.getpid()}")
    sandbox = Sandbox(users=users.UserPool(users.lookup()), cgroups=cgroups,
                      runtime=runtime.describe())
    py = str(sandbox.runtime.interpreter)
    out: dict[str, float] = {}
    try:
        for label, code in (("trivial", TRIVIAL), ("torch", TORCH)):
            p = statistics.median([plain(py, code) for _ in range(runs)])
            c = await median_of(runs, lambda code=code: cold(sandbox, code))
            out[f"{label}_plain_ms"] = round(p * 1000, 1)
            out[f"{label}_cold_sandbox_ms"] = round(c * 1000, 1)
            out[f"{label}_cold_ratio"] = round(c / p, 2)
        async with warm_pool(sandbox, 1) as pool:
            w = await median_of(runs, lambda: warm(pool, TORCH))
        out["torch_warm_sandbox_ms"] = round(w * 1000, 1)
        out["torch_warm_ratio"] = round(w / (out["torch_plain_ms"] / 1000), 2)
    finally:
        cgroups.cleanup_stale()
        cgroups.remove_bases()
    print(json.dumps({"runs": runs, **out}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    trio.run(main, parser.parse_args().runs)
