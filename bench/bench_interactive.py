"""Interactive speed, with its baselines in the same run: a warm `@remote` trivial call
(median, p90) against a Ray task call and a plain local call; `offload submit` whole
process against `offload --help`; trivial jobs/s through one warm provider; and a warm
call on a 10-provider localnet (discovery included). Prints one JSON document, ratios
included, and where the milliseconds of a warm call go (`phases_ms`, medians).

Usage (root, after `make setup`; Ray: `sh bench/setup_ray.sh` once, else its column is
skipped with a note):
    .venv/bin/python bench/bench_interactive.py [--calls 20] [--jobs 40] [--network 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import trio

from node.api import sync
from node.api.remote import remote
from node.api.requester import Job, Requester
from node.api.warm import sessions_of
from node.localnet import LocalNet
from node.requester import events, placement
from node.requester.payments import Payments
from node.requester.session import Session

HERE = Path(__file__).resolve().parent
RAY_PYTHON = HERE / ".venv-ray" / "bin" / "python"
RAY_SCRIPT = """
import json, sys, time
import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
         log_to_driver=False)
@ray.remote
def plus_one(x):
    return x + 1
for i in range(5):
    ray.get(plus_one.remote(i))
ms = []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    assert ray.get(plus_one.remote(i)) == i + 1
    ms.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": ms, "version": ray.__version__}))
"""
WARMUP = 3
PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"
"""Priced like tests/e2e/test_api.py, so escrow and settlement are on the measured path."""


def plus_one(x: int) -> int:
    return x + 1


def summary(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"n": len(s), "median_ms": round(statistics.median(s), 5),
            "p90_ms": round(s[min(len(s) - 1, int(0.9 * len(s)))], 5),
            "min_ms": round(s[0], 5)}


def local_calls(n: int) -> dict[str, float]:
    ms = []
    for i in range(max(n, 1000)):
        t = time.perf_counter()
        plus_one(i)
        ms.append((time.perf_counter() - t) * 1000)
    return summary(ms)


def ray_calls(n: int, script: str = RAY_SCRIPT) -> dict[str, Any]:
    """`script` in the Ray venv: it prints {"ms": [...], "version"} for `n` calls."""
    if not RAY_PYTHON.exists():
        return {"skipped": f"no {RAY_PYTHON}: run `sh bench/setup_ray.sh` for this column"}
    proc = subprocess.run([str(RAY_PYTHON), "-c", script, str(n)], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        return {"skipped": f"ray failed: {proc.stderr.strip()[-300:]}"}
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"ray": doc["version"], **summary(doc["ms"])}


class Phases:
    """Where a warm call's milliseconds go: the exchange's own `Timing` events, and wraps
    of the placement steps around it (this process only; restored on exit)."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = defaultdict(list)

    def listen(self, event: events.Event) -> None:
        if isinstance(event, events.Timing):
            self.ms[f"exchange.{event.phase}"].append(event.ms)

    @contextmanager
    def wrapping(self) -> Iterator[None]:
        targets: list[tuple[Any, str, str]] = [
            (Session, "candidates", "candidates (discovery, ranking)"),
            (placement, "measure", "ping (RTT)"),
            (placement, "run_job", "exchange (all)"),
            (Payments, "accept", "settle (ledger, gossip, receipt)"),
            (Payments, "_tell", "settle.tell (gossip + settle stream)"),
            (Session, "place", "place (all)"),
        ]
        saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
        for obj, name, label in targets:
            setattr(obj, name, self._timed(getattr(obj, name), label))
        try:
            yield
        finally:
            for obj, name, fn in saved:
                setattr(obj, name, fn)

    def _timed(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @wraps(fn)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.ms[label].append((time.perf_counter() - t) * 1000)
        return timed

    def medians(self, skip: int) -> dict[str, float]:
        return {k: round(statistics.median(v[skip:] or v), 3) for k, v in self.ms.items()}


def deposit(tree: Path, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "node", "--home", str(home), "ledger", "deposit",
                    "100"], check=True, env={**os.environ, "PYTHONPATH": str(tree)},
                   stdout=subprocess.DEVNULL, timeout=120)


def remote_calls(addr: str, home: Path, n: int) -> dict[str, Any]:
    """`n` warm `@remote` calls through the sync facade (as a script calls them), after
    WARMUP calls that open the session and fill the provider's cache."""
    deposit(HERE.parent, home)
    fn = remote(timeout=60, echo=False, home=str(home), bootstrap=(addr,),
                config=os.devnull, out=str(home / "out"))(plus_one)
    phases = Phases()
    ms = []
    with phases.wrapping():
        for i in range(WARMUP):
            assert fn.remote(i) == i + 1
        r = sync.portal().run(sync.session_for, fn.options.session())
        assert r is not None
        r.subscribe(phases.listen)
        phases.ms.clear()
        sandbox = []
        for i in range(n):
            t = time.perf_counter()
            result = fn.call(i)
            ms.append((time.perf_counter() - t) * 1000)
            assert result.value == i + 1 and result.signed is not None
            sandbox.append(result.signed.message.usage.wall_s * 1000)
        phases.ms["provider: job wall in its sandbox (usage.wall_s)"] = sandbox
    sync.close()
    sync._set_portal(sync.Portal())  # a fresh loop for the next network
    total = summary(ms)
    accounted = phases.medians(0)
    if "place (all)" in accounted:
        accounted["@remote outside place (pickling, staging, thread hop, decoding)"] = round(
            total["median_ms"] - accounted["place (all)"], 3)
    return {**total, "phases_ms": accounted}


def kept_warm_calls(addr: str, home: Path, n: int, items: int) -> dict[str, Any]:
    """`n` calls of a `@remote(keep_warm=60)` function (one session on the provider, the
    sync facade), then a map of `items` calls through it (concurrency 4): calls/s."""
    deposit(HERE.parent, home)
    fn = remote(timeout=60, echo=False, home=str(home), bootstrap=(addr,), keep_warm=60,
                concurrency=4, config=os.devnull, out=str(home / "out"))(plus_one)
    for i in range(WARMUP):
        assert fn.remote(i) == i + 1
    ms = []
    for i in range(n):
        t = time.perf_counter()
        assert fn.remote(i) == i + 1
        ms.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    got = list(fn.map(range(items)))
    wall = time.perf_counter() - t
    assert got == [i + 1 for i in range(items)]
    r = sync.portal().run(sync.session_for, fn.options.session())
    opened = sessions_of(r).opened if r is not None else -1
    sync.close()
    sync._set_portal(sync.Portal())
    return {**summary(ms), "map_items": items, "map_calls_per_s": round(items / wall, 1),
            "sessions_opened": opened}


def whole_process(net: LocalNet, addr: str, home: Path, script: Path,
                  n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(net.tree), "OFFLOAD_REQUESTER_CONFIG": os.devnull}

    def wall(*args: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "node", "--home", str(home), *args], check=True,
                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=home, timeout=120)
        return (time.perf_counter() - t) * 1000

    # An installed offload has bytecode caches; this environment sets PYTHONDONTWRITEBYTECODE,
    # so without this every run would compile the tree again. Only the caching is given.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "node", "protocol", "scheduler",
                    "ledger"], cwd=net.tree, check=True, stdout=subprocess.DEVNULL)
    deposit(net.tree, home)
    wall("submit", str(script), "--bootstrap", addr, "--timeout", "60")  # identity, cache
    helps = [wall("--help") for _ in range(n)]
    submits = [wall("submit", str(script), "--bootstrap", addr, "--timeout", "60")
               for _ in range(n)]
    h, s = summary(helps), summary(submits)
    return {"help": h, "submit": s,
            "ratio_submit_to_help": round(s["median_ms"] / h["median_ms"], 2)}


async def jobs_per_second(addr: str, home: Path, script: Path, n: int) -> dict[str, Any]:
    deposit(HERE.parent, home)
    async with Requester(home=home, bootstrap=[addr], config=os.devnull,
                         out=home / "out", workers=8) as r:
        await r.submit(Job(script, timeout=60))  # warm: connection, cache, sandbox pool
        t = time.perf_counter()
        results = await r.map([Job(script, args=[str(i)], timeout=60) for i in range(n)],
                              workers=8)
        wall = time.perf_counter() - t
    ok = sum(1 for x in results if not isinstance(x, Exception) and x.status == "ok")
    return {"jobs": n, "ok": ok, "wall_s": round(wall, 2), "jobs_per_s": round(n / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--submits", type=int, default=5)
    parser.add_argument("--network", type=int, default=10,
                        help="providers of the discovery-inclusive run (0: skip it)")
    parser.add_argument("--only", default="", help="comma list: remote,warm,ray,cli,jobs,network")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))

    def want(part: str) -> bool:
        return not only or part in only

    out: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "trivial.py"
        script.write_text("print(sum(range(1000)))\n")
        out["local"] = local_calls(args.calls)
        if want("ray"):
            out["ray_task"] = ray_calls(args.calls)
        with LocalNet(root, grace_s=10) as net:
            addr = net.start("one", extra=("--warm", "2", "--slots", "2"),
                             config=PRICED).addr
            time.sleep(2.0)  # let the warm pool fill
            if want("remote"):
                out["remote_warm"] = remote_calls(addr, root / "req-remote", args.calls)
            if want("warm"):
                out["remote_keep_warm"] = kept_warm_calls(addr, root / "req-warm",
                                                          args.calls, args.jobs * 5)
            if want("cli"):
                out["cli"] = whole_process(net, addr, root / "req-cli", script, args.submits)
            if want("jobs"):
                out["jobs_per_s"] = trio.run(jobs_per_second, addr, root / "req-jobs",
                                             script, args.jobs)
        if want("network") and args.network > 0:
            with LocalNet(root / "net", grace_s=10) as net:
                (root / "net").mkdir(exist_ok=True)
                first = net.chain(args.network, extra=("--warm", "1"), config=PRICED)[0]
                time.sleep(3.0)
                out[f"remote_warm_{args.network}_providers"] = remote_calls(
                    first.addr, root / "req-net", args.calls)
    ray_ms = out.get("ray_task", {}).get("median_ms")
    warm = out.get("remote_warm", {}).get("median_ms")
    ratios: dict[str, float] = {}
    if warm is not None:
        ratios["remote_to_local"] = round(warm / out["local"]["median_ms"], 1)
        if ray_ms:
            ratios["remote_to_ray"] = round(warm / ray_ms, 2)
    kept = out.get("remote_keep_warm", {}).get("median_ms")
    if kept is not None and ray_ms:
        ratios["keep_warm_to_ray"] = round(kept / ray_ms, 2)
    out["ratios"] = ratios
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
