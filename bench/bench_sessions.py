"""Sessions, with their baselines in the same run: a trivial session call (median, p90)
against a Ray actor method call and a local call; the time to open a session (cold: each
starts its own sandbox); tokens/s streamed from examples/chat.py's model against
generating here with the same weights; and 100 sessions opened and closed, with the
provider's descriptors, memory and sandboxes before and after. Prints one JSON document,
ratios included.

Usage (root, after `make setup`; Ray: `sh bench/setup_ray.sh` once, else its column is
skipped with a note):
    .venv/bin/python bench/bench_sessions.py [--calls 200] [--opens 5] [--churn 100]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_interactive import PRICED, deposit, ray_calls, summary  # noqa: E402

from node.api.remote import remote  # noqa: E402
from node.api.requester import Requester  # noqa: E402
from node.localnet import LocalNet  # noqa: E402

RAY_ACTOR = """
import json, sys, time
import ray
ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
@ray.remote
class Counter:
    def __init__(self): self.n = 0
    def add(self, k):
        self.n += k
        return self.n
c = Counter.remote()
for i in range(5):
    ray.get(c.add.remote(1))
ms = []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    ray.get(c.add.remote(1))
    ms.append((time.perf_counter() - t) * 1000)
print(json.dumps({"ms": ms, "version": ray.__version__}))
"""


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def items(self, n: int) -> Iterator[int]:
        yield from range(n)


def local_calls(n: int) -> dict[str, float]:
    c, ms = _Counter(), []
    for _ in range(max(n, 1000)):
        t = time.perf_counter()
        c.add(1)
        ms.append((time.perf_counter() - t) * 1000)
    return summary(ms)


def _chat() -> Any:
    spec = importlib.util.spec_from_file_location("chat", HERE.parent / "examples" / "chat.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chat"] = module
    spec.loader.exec_module(module)
    return module


def provider_footprint(pid: int) -> dict[str, int]:
    """Open descriptors, resident memory, and child processes (each live sandbox has its
    launcher's watchdog among them)."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) // 1024
    children = sum(len(Path(t, "children").read_text().split())
                   for t in Path(f"/proc/{pid}/task").iterdir())
    return {"fds": fds, "rss_mb": rss, "children": children}


WARM_REFILL_S = 6.0
"""A warm worker boots (torch imported) in about 2-4 s once the provider is quiet."""


async def measure(addr: str, warm_addr: str, home: Path,
                  args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"home": home, "bootstrap": [addr], "config": os.devnull,
                                "echo": False, "max_price": 1.0}
    Counter = remote(cpus=1, idle_timeout=120, max_duration=600, **settings)(_Counter)
    out: dict[str, Any] = {}

    async def opens_of(rc: Any, pause: float) -> dict[str, float]:
        ms = []
        for _ in range(args.opens):
            await trio.sleep(pause)
            t = time.perf_counter()
            async with rc.session.aio() as c:
                ms.append((time.perf_counter() - t) * 1000)
                await c.add.aio(1)
        return summary(ms)

    # without an open Requester each session starts its own (host, DHT, ledger)
    out["open_cold_new_requester"] = await opens_of(Counter, 0.0)
    async with Requester(home=home, bootstrap=[addr], config=os.devnull):
        out["open_cold"] = await opens_of(Counter, 0.0)
    if warm_addr:
        Warm = remote(cpus=1, idle_timeout=120, max_duration=600,
                      **(settings | {"bootstrap": [warm_addr]}))(_Counter)
        async with Requester(home=home, bootstrap=[warm_addr], config=os.devnull):
            out["open_warm"] = await opens_of(Warm, WARM_REFILL_S)
    async with Requester(home=home, bootstrap=[addr], config=os.devnull):
        return out | await _calls(Counter, settings, args)


async def _calls(Counter: Any, settings: dict[str, Any],
                 args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Counter.session.aio() as c:
        for _ in range(5):
            await c.add.aio(1)
        ms = []
        for _ in range(args.calls):
            t = time.perf_counter()
            await c.add.aio(1)
            ms.append((time.perf_counter() - t) * 1000)
        out["session_call"] = summary(ms)
        t = time.perf_counter()
        n = sum(1 for _ in [x async for x in c.items.aio(args.items)])
        out["items_per_s"] = round(n / (time.perf_counter() - t), 1)

    chat = _chat()
    weights = chat.train(2.0)
    model = chat.TinyLM(len(chat.VOCAB))
    model.load_state_dict(weights)
    model.eval()
    torch.set_num_threads(1)  # as the session's model runs
    "".join(chat.generate(model, "the ", 5))
    t = time.perf_counter()
    here = "".join(chat.generate(model, "the dog ", args.tokens))
    local_tps = args.tokens / (time.perf_counter() - t)
    Chat = remote(cpus=1, idle_timeout=120, max_duration=600, **settings)(chat.Chat.cls)
    async with Chat.session.aio(weights) as c:
        await c.reply.aio("the ", 5)
        t = time.perf_counter()
        got = "".join([tok async for tok in c.stream.aio("the dog ", args.tokens)])
        remote_tps = args.tokens / (time.perf_counter() - t)
    out["chat_tokens_per_s"] = {"session": round(remote_tps, 1), "local": round(local_tps, 1),
                                "same_text": got == here}
    return out


async def churn(addr: str, home: Path, n: int) -> float:
    settings: dict[str, Any] = {"home": home, "bootstrap": [addr], "config": os.devnull,
                                "echo": False, "max_price": 1.0}
    Counter = remote(cpus=1, idle_timeout=60, max_duration=120, **settings)(_Counter)
    t = time.perf_counter()
    async with Requester(home=home, bootstrap=[addr], config=os.devnull):
        for _ in range(n):
            async with Counter.session.aio() as c:
                await c.add.aio(1)
    return round(time.perf_counter() - t, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--opens", type=int, default=5)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--churn", type=int, default=100)
    args = parser.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "local_call": local_calls(args.calls),
                           "ray_actor": ray_calls(args.calls, RAY_ACTOR)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with LocalNet(root, grace_s=10) as net:
            p = net.start("one", extra=("--warm", "0", "--slots", "2"), config=PRICED)
            # its own network: each requester finds only the provider it bootstraps from
            warm = net.start("warm", extra=("--warm", "1", "--slots", "2"), config=PRICED)
            home = root / "req"
            deposit(HERE.parent, home)
            out.update(trio.run(measure, p.addr, warm.addr, home, args))
            if args.churn:
                time.sleep(1.0)
                before = provider_footprint(p.proc.pid)
                out["churn_s"] = trio.run(churn, p.addr, home, args.churn)
                time.sleep(2.0)
                after = provider_footprint(p.proc.pid)
                out["churn"] = {"sessions": args.churn, "before": before, "after": after}
    ray_ms = out["ray_actor"].get("median_ms")
    call = out["session_call"]["median_ms"]
    out["ratios"] = {"session_call_to_local": round(call / out["local_call"]["median_ms"], 1),
                     "chat_session_to_local": round(out["chat_tokens_per_s"]["session"]
                                                    / out["chat_tokens_per_s"]["local"], 2)}
    if ray_ms:
        out["ratios"]["session_call_to_ray_actor"] = round(call / ray_ms, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
