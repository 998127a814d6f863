"""Distributed map through real provider processes vs running the items here, same run.

Usage (root, after `make setup`): .venv/bin/python bench/bench_map.py [--items N] [--work S]

Each item is a Python loop of about `--work` CPU-seconds. Baseline: the same script run
once per item here, one after another (what a user does without offload). Then
`offload map` over 2 local providers with 1 and with 2 jobs at a time per provider. All
processes share this machine's cores, so the ratios show dispatch overhead and
parallelism on one host, not a real network's speedup.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.localnet import local_providers

ITEM = """import sys, time
n = int(sys.argv[-1])
end = time.process_time() + {work}
x = 0
while time.process_time() < end:
    x += n
print(n, x > 0)
"""


def offload(root: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "node", "--home", str(root / "req"), *args],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"offload {' '.join(args)} failed:\n{done.stderr}")
    doc = json.loads(done.stdout)
    assert doc["failed"] == 0, doc
    return time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--work", type=float, default=0.5)
    ns = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-map-"))
    script = root / "item.py"
    script.write_text(ITEM.format(work=ns.work))
    items = root / "items.txt"
    items.write_text("\n".join(str(i) for i in range(ns.items)) + "\n")

    started = time.monotonic()
    for i in range(ns.items):
        subprocess.run([sys.executable, str(script), str(i)], check=True, capture_output=True)
    local = time.monotonic() - started

    rows = [("here, one after another (baseline)", local)]
    with local_providers(2, root) as ready:
        boot = ["--bootstrap", ready[0].addr]
        for per in (1, 2):
            wall = offload(root, "map", str(script), "--items", str(items), "--out",
                           str(root / f"out{per}"), *boot, "--json",
                           "--per-provider", str(per))
            rows.append((f"offload map, 2 providers x {per} at a time", wall))
    cores = Path("/proc/cpuinfo").read_text().count("processor")
    print(f"{ns.items} items of {ns.work:g} CPU-s each, {cores} cores")
    print(f"| {'what':44} | wall s | vs baseline |")
    print(f"| {'-' * 44} | ------ | ----------- |")
    for name, wall in rows:
        print(f"| {name:44} | {wall:6.2f} | {wall / local:11.2f} |")


if __name__ == "__main__":
    main()
