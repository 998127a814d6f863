"""Dispatch overhead: a trivial job through one real provider vs. the same script run locally.

Usage: .venv/bin/python bench/bench_dispatch.py [--jobs N]
Starts one provider process on loopback, connects once, then times N sequential trivial jobs
(sign spec, upload, run, signed result, verify) against N local `python3 script` runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from node.api.requester import Job, Requester
from node.localnet import local_providers
from node.requester.exchange import run_job


def local_runs(script: Path, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-u", "-s", str(script)], check=True,
                       capture_output=True, cwd=script.parent)
        times.append(time.perf_counter() - t)
    return times


async def remote_runs(bootstrap: str, script: Path, n: int, out: Path) -> list[float]:
    """The provider placement ranks first (the requester's own path), then n exchanges."""
    times = []
    async with Requester(home=out / "req", bootstrap=[bootstrap], ledger=False) as r:
        job = Job(script)
        request = r.request(job)
        ad = (await r.candidates(job))[0][0]
        for i in range(n):
            t = time.perf_counter()
            outcome = await run_job(r.core.host, ad, request, out / str(i))
            assert outcome.result.exit_code == 0
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "trivial.py"
        script.write_text("print(sum(range(1000)))\n")
        local = local_runs(script, args.jobs)
        with local_providers(1, root) as ready:
            remote = trio.run(remote_runs, ready[0].addr, script, args.jobs, root / "o")
    lm, rm = statistics.median(local), statistics.median(remote)
    print(json.dumps({"jobs": args.jobs, "local_median_ms": round(lm * 1000, 1),
                      "offload_median_ms": round(rm * 1000, 1),
                      "offload_p90_ms": round(sorted(remote)[int(0.9 * len(remote))] * 1000, 1),
                      "ratio_offload_to_local": round(rm / lm, 2),
                      "overhead_ms": round((rm - lm) * 1000, 1)}))


if __name__ == "__main__":
    main()
