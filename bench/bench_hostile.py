"""A burst of submits at a 1-slot provider, and a connection flood: outcomes and descriptors.

Usage (root, after `make setup`): .venv/bin/python bench/bench_hostile.py [--submits 40]
    [--connections 50]

Burst: `--submits` concurrent `offload submit` processes, each its own home (identity),
at one provider with 1 slot and a queue of 8; every process must end in a result or a
named `busy` (after its own retries), never a reset stream, a traceback or "no provider".
Flood: `--connections` hosts with fresh identities connect to a provider whose per-IP cap
is 8 (loopback not exempt); its descriptors are counted before, during and after.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.localnet import LocalNet
from node.net.host import open_host
from protocol.identity import Identity

FLOODS = 10


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    if done.returncode == 0:
        return "result"
    err = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
    if "Traceback" in done.stderr:
        return "traceback"
    for key in ("busy", "no provider", "closed the stream", "timeout", "within"):
        if key in err:
            return key
    return f"other: {err[:80]}"


def burst(root: Path, n: int) -> dict[str, Any]:
    net = LocalNet(root)
    provider = net.start("burst", config="[capacity]\nslots = 1\nqueue = 8\n")
    proc = provider.proc
    script = root / "burst.py"
    script.write_text("print('done')\n")
    try:
        started = time.monotonic()
        procs = [net.spawn(net.command(root / f"req{i}", "submit", str(script), "--bootstrap",
                                       provider.addr, "--timeout", "60", "--json"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(n)]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            results.append(outcome(subprocess.CompletedProcess(p.args, p.returncode, out, err)))
        wall = time.monotonic() - started
        log = (root / "burst.log").read_text(errors="replace")
        return {"outcomes": dict(collections.Counter(results)), "wall_s": round(wall, 1),
                "provider_alive": proc.poll() is None,
                "provider_tracebacks": log.count("Traceback")}
    finally:
        net.close()


def flood(root: Path, n: int) -> dict[str, Any]:
    net = LocalNet(root)
    p = net.start("flood", config="[limits]\nconnections_per_ip = 8\nexempt = []\n")
    proc = p.proc

    def fds() -> int:
        return len(os.listdir(f"/proc/{proc.pid}/fd"))

    def rss_mb() -> float:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    time.sleep(2)
    counts: dict[str, Any] = {"before": fds(), "self_before": len(os.listdir("/proc/self/fd")),
                              "rss_mb_before": rss_mb()}

    async def run() -> None:
        done = trio.Event()
        up = 0

        async def fresh() -> None:
            nonlocal up
            async with open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as h:
                try:
                    await h.connect(p.addr)
                except Exception:
                    pass
                up += 1
                await done.wait()

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(fresh)
            while up < n:
                await trio.sleep(0.1)
            await trio.sleep(2)
            counts["during"] = fds()
            counts["rss_mb_during"] = rss_mb()
            done.set()

    try:
        trio.run(run)
        time.sleep(3)
        counts["after_3s"] = fds()
        counts["rss_mb_after_3s"] = rss_mb()
        for _ in range(FLOODS - 1):  # more floods: does memory keep growing?
            trio.run(run)
        time.sleep(3)
        counts[f"after_{FLOODS}_floods"] = fds()
        counts[f"rss_mb_after_{FLOODS}_floods"] = rss_mb()
        counts["self_after"] = len(os.listdir("/proc/self/fd"))
        return counts
    finally:
        net.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--submits", type=int, default=40)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--only", choices=("burst", "flood"))
    ns = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    report: dict[str, Any] = {}
    if ns.only != "flood":
        report["burst"] = burst(root, ns.submits)
    if ns.only != "burst":
        report["flood"] = flood(root, ns.connections)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
