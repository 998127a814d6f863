"""Split inference, Neurosurgeon-style: for each (bandwidth, RTT) cell, the real end-to-end
latency of every cut of a CNN, the cut `split()` chose, and the speed-up against all-here
and all-remote; then a pipeline over 3 providers: tokens/s, and the time to recover when
the middle provider is killed.

    sudo .venv/bin/python bench/bench_split.py [--calls 8] [--mbit 5 20 100] [--rtt-ms 0 20 80]

The device (the requester) is a weak one: one torch thread, stated. It and the provider
are network namespaces this benchmark creates and removes (tests/e2e/nat/netns.py), on a
bridge; bandwidth is `tc tbf` on both ends' eth0 (egress), and RTT a delaying TCP proxy
in the device's namespace that nftables redirects the provider's port to (netem is not
available here), each direction delayed by half the RTT (the 0 ms cells go through it
too, undelayed, so every cell pays the same proxy). The split is planned afresh in
every cell, so its measurements see that cell's link.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.localnet import LocalNet  # noqa: E402
from tests.e2e.nat.netns import Node, Topology, available  # noqa: E402

PORT = 4001
PROXY_PORT = 4999
MARK = 0x1B
"""The proxy's own connections carry this mark, so the redirect skips them."""

PROXY = r'''
import socket, sys, threading, time

prov_ip, prov_port = sys.argv[1], int(sys.argv[2])
proxy_port, mark = int(sys.argv[3]), int(sys.argv[4])
delay = float(sys.argv[5]) / 2000.0  # each direction: half the RTT, in seconds

def pump(src, dst):
    """src -> dst, each chunk released `delay` seconds after it arrived, in order."""
    q, cv, done = [], threading.Condition(), [False]
    def reader():
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            with cv:
                q.append((time.monotonic() + delay, data))
                cv.notify()
            if not data:
                return
    threading.Thread(target=reader, daemon=True).start()
    while True:
        with cv:
            while not q:
                cv.wait()
            due, data = q.pop(0)
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        try:
            dst.sendall(data)
        except OSError:
            return

def serve():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", proxy_port))
    ls.listen(64)
    while True:
        c, _ = ls.accept()
        u = socket.socket()
        u.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        u.connect((prov_ip, prov_port))
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()


serve()
'''
"""A delaying TCP proxy (its own process, outside the device's CPU quota)."""

CELL = r'''
import json, os, socket, statistics, sys, threading, time
import heapq
import torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from node import split

calls, bootstrap = int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)  # the weak device: one thread, in a cgroup of a quarter core

def model():
    """~0.85 GFLOP a call: big early activations (1 MiB), small late ones (8 kB)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(128 * 16, 10)).eval()

net, x = model(), torch.randn(1, 3, 64, 64)
t = time.perf_counter()
sm = split(net, x, bootstrap=[bootstrap], config=os.devnull, max_price=1.0)
open_s = time.perf_counter() - t
chosen = sm.plan.chosen.k
predicted = {c.k: c.latency_s for c in sm.plan.cuts}
probed, reason = dict(sm.measured_s), sm.plan.reason
measured = {}
for k in range(len(net) + 1):
    sm.force(k)
    sm(x)
    runs = []
    for _ in range(calls):
        t = time.perf_counter()
        sm(x)
        runs.append(time.perf_counter() - t)
    measured[k] = statistics.median(runs)
sm.close()
print(json.dumps({"chosen": chosen, "measured_s": measured, "predicted_s": predicted,
                  "probed_s": probed, "reason": reason,
                  "split_open_s": open_s, "link": {"rtt_s": sm.link.rtt_s,
                                                    "bytes_per_s": sm.link.bytes_per_s}}))
'''


def shape(node: Node, mbit: float | None) -> None:
    node.run("tc", "qdisc", "del", "dev", "eth0", "root")
    if mbit is not None:
        burst = max(16_000, int(mbit * 1250))  # bytes: 10 ms at the rate
        node.run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", f"{mbit}mbit",
                 "burst", str(burst), "latency", "400ms", check=True)


def redirect(node: Node, prov_ip: str) -> None:
    rules = (f"table ip splitbench {{\n chain out {{\n"
             f"  type nat hook output priority -100;\n"
             f"  meta mark != {MARK} ip daddr {prov_ip} tcp dport {PORT} "
             f"redirect to :{PROXY_PORT}\n }}\n}}\n")
    node.run("nft", "-f", "-", input=rules, check=True)


WEAK = Path("/sys/fs/cgroup/cpu/offload-splitbench")
"""cgroup v1 cpu controller: the device gets `--device-share` of one core."""


def weak_device(share: float) -> None:
    WEAK.mkdir(exist_ok=True)
    # a 10 ms period: a call of tens of milliseconds is throttled within itself
    (WEAK / "cpu.cfs_period_us").write_text("10000")
    (WEAK / "cpu.cfs_quota_us").write_text(str(int(10000 * share)))


def cells(args: argparse.Namespace, t: Topology, net: LocalNet, root: Path) -> list[Any]:
    prov, dev = t.public("prov"), t.public("dev")
    p = net.start("prov", wrap=prov.wrap, listen=f"/ip4/{prov.ip}/tcp/{PORT}",
                  extra=["--warm", "0"], benchmark=True)  # its ad carries its speed
    redirect(dev, prov.ip)
    script = root / "cell.py"
    script.write_text(CELL)
    out = []
    for mbit in args.mbit:
        for rtt in args.rtt_ms:
            shape(dev, mbit)
            shape(prov, mbit)
            home = root / f"dev-{mbit}-{rtt}"
            home.mkdir()
            env = {**os.environ, "OFFLOAD_HOME": str(home), "OMP_NUM_THREADS": "1"}
            proxy = dev.spawn(sys.executable, "-c", PROXY, prov.ip, str(PORT),
                              str(PROXY_PORT), str(MARK), str(rtt))
            time.sleep(0.5)
            argv = [sys.executable, str(script), str(ROOT), str(args.calls), p.addr]
            res = dev.run("sh", "-c", f'echo $$ > {WEAK}/cgroup.procs && exec "$@"', "cell",
                          *argv, timeout=900, env=env)
            t.stop(proxy, grace_s=0.5)
            if res.returncode != 0:
                out.append({"mbit": mbit, "rtt_ms": rtt, "error": res.stderr[-1500:]})
                continue
            doc = json.loads(res.stdout.strip().splitlines()[-1])
            m = {int(k): v for k, v in doc["measured_s"].items()}
            best = min(m, key=lambda k: m[k])
            n = max(m)
            chosen = doc["chosen"]
            out.append({"mbit": mbit, "rtt_ms": rtt, "chosen": chosen, "best": best,
                        "chosen_ms": round(m[chosen] * 1e3, 2),
                        "best_ms": round(m[best] * 1e3, 2),
                        "chosen_over_best": round(m[chosen] / m[best], 3),
                        "speedup_vs_local": round(m[n] / m[chosen], 2),
                        "speedup_vs_remote": round(m[0] / m[chosen], 2),
                        "measured_ms": {k: round(v * 1e3, 2) for k, v in m.items()},
                        "predicted_ms": {int(k): round(v * 1e3, 2)
                                         for k, v in doc["predicted_s"].items()},
                        "probed_ms": {int(k): round(v * 1e3, 2)
                                      for k, v in doc["probed_s"].items()},
                        "reason": doc["reason"],
                        "link": doc["link"]})
            print(json.dumps(out[-1]), file=sys.stderr)
    shape(dev, None)
    shape(prov, None)
    return out


PIPE = r'''
import json, os, signal, sys, time
import torch
from torch import nn
sys.path.insert(0, sys.argv[1])
from node import split
from node.errors import UserError

VOCAB, DIM, LAYERS = 96, 1024, 6  # ~50 MB of weights a layer: 300 MB in all

class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(VOCAB, DIM), nn.Embedding(64, DIM)
    def forward(self, ids):
        return self.tok(ids) + self.pos(torch.arange(ids.shape[1]))

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(DIM, 8, 4 * DIM, dropout=0.0, batch_first=True)
    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.layer(x, src_mask=mask, is_causal=True)

def model():
    torch.manual_seed(0)
    return nn.Sequential(Embed(), *(Block() for _ in range(LAYERS)), nn.LayerNorm(DIM),
                         nn.Linear(DIM, VOCAB)).eval()

def generate(run, ids, n):
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(run(torch.tensor([ids[-64:]]))[0, -1].argmax()))
    return ids

torch.set_num_threads(1)
net, prompt = model(), [ord(c) - 32 for c in "offload: "]
opts = dict(bootstrap=[sys.argv[2]], config=os.devnull, max_price=1.0, passes=1,
            memory_gb=float(sys.argv[4]))
pids = json.loads(sys.argv[3])
try:
    split(net, torch.tensor([prompt]), stages=1, **opts).close()
    one = "fits one provider"
except UserError as exc:
    one = str(exc)
with split(net, torch.tensor([prompt]), stages="auto", **opts) as pipe:
    generate(pipe, prompt, 2)
    t = time.perf_counter()
    out = generate(pipe, prompt, 16)
    tokens_s = 16 / (time.perf_counter() - t)
    middle = pipe.providers[1]
    os.killpg(pids[middle], signal.SIGKILL)
    t = time.perf_counter()
    after = generate(pipe, out, 1)
    recover_s = time.perf_counter() - t
    t = time.perf_counter()
    generate(pipe, prompt, 8)
    tokens_s_after = 8 / (time.perf_counter() - t)
    here = generate(net, prompt, 17)
    print(json.dumps({"stages": pipe.bounds, "one_provider": one, "tokens_per_s": tokens_s,
                      "recover_s": recover_s, "tokens_per_s_after": tokens_s_after,
                      "recovered": pipe.recovered, "same_tokens": after == here}))
'''


def pipeline(root: Path, memory_gb: float) -> dict[str, Any]:
    """A transformer of 300 MB of weights, stages of `memory_gb` each: split("auto")."""
    with LocalNet(root / "pipe", tree=ROOT, env={"OMP_NUM_THREADS": "1"}, grace_s=5) as net:
        (root / "pipe").mkdir(exist_ok=True)
        provs = net.chain(4, extra=("--warm", "0"))
        pids = {p.peer_id: p.proc.pid for p in provs}
        script = root / "pipe.py"
        script.write_text(PIPE)
        env = {**os.environ, "OFFLOAD_HOME": str(root / "pipe-req"), "OMP_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, str(script), str(ROOT), provs[0].addr,
                              json.dumps(pids), str(memory_gb)], capture_output=True,
                             text=True, timeout=900, env=env)
        if res.returncode != 0:
            return {"error": res.stderr[-1500:]}
        doc: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return doc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--mbit", type=float, nargs="+", default=[5.0, 20.0, 100.0])
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.0, 20.0, 80.0])
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--stage-memory-gb", type=float, default=0.85,
                        help="each pipeline stage's memory (its sandbox's limit)")
    parser.add_argument("--device-share", type=float, default=0.25,
                        help="the device's CPU: this share of one core (cgroup quota)")
    args = parser.parse_args()
    why = available()
    if why:
        raise SystemExit(f"bench_split: {why}")
    weak_device(args.device_share)
    out: dict[str, Any] = {"device": f"requester: one torch thread, {args.device_share:g} "
                                     "of a core (cgroup cpu quota); provider: 1 cpu",
                           "cpus": os.cpu_count()}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, Topology("split") as t:
        root = Path(tmp)
        net = LocalNet(root, tree=ROOT, env={"OMP_NUM_THREADS": "1"})
        try:
            out["cells"] = cells(args, t, net, root)
        finally:
            net.close()
        if not args.skip_pipeline:
            out["pipeline"] = pipeline(root, args.stage_memory_gb)
    ok = [c for c in out["cells"] if "error" not in c]
    out["within_10pct"] = sum(c["chosen_over_best"] <= 1.10 for c in ok)
    out["cells_measured"] = len(ok)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    WEAK.rmdir()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
