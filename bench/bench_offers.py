"""`offload offers` as a whole process, against `offload --help` in the same run.

N providers in a chain (node/localnet); then, each REPEAT times in a fresh process:
`offload --help` (baseline), `offload offers --fresh --json` (a DHT search, cold), and
`offload offers --json` from a warm home (the offer cache under the home, no network).
Prints the median wall of each, the ratios to --help, and how many providers each found.

Usage (root): .venv/bin/python bench/bench_offers.py [--providers 10] [--repeat 5] [--json]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.localnet import LocalNet


def timed(net: LocalNet, home: Path, *args: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(net.command(home, *args), capture_output=True, text=True,
                          env=net.env, cwd=net.root, timeout=300, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"offload {' '.join(args)} failed:\n{proc.stderr}")
    return wall, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--providers", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-offers-"))
    rows: dict[str, list[float]] = {"help": [], "cold": [], "warm": []}
    found: dict[str, list[int]] = {"cold": [], "warm": []}
    with LocalNet(root, env={"OMP_NUM_THREADS": "1"}, grace_s=0) as net:
        providers = net.chain(a.providers)
        ids = {x.peer_id for x in providers}
        boot = providers[0].addr
        home = root / "requester"
        for _ in range(a.repeat):
            rows["help"].append(timed(net, home, "--help")[0])
            for kind, extra in (("cold", ["--fresh"]), ("warm", [])):
                wall, out = timed(net, home, "offers", "--bootstrap", boot, "--json", *extra)
                rows[kind].append(wall)
                found[kind].append(len({d["peer_id"] for d in json.loads(out)} & ids))
    med = {k: statistics.median(v) for k, v in rows.items()}
    doc: dict[str, Any] = {
        "providers": a.providers, "repeat": a.repeat,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "ratio_to_help": {k: round(med[k] / med["help"], 2) for k in ("cold", "warm")},
        "found": found}
    if a.json:
        print(json.dumps(doc))
        return
    print(f"{a.providers} providers, median of {a.repeat} processes each")
    print("| what | wall | x `offload --help` | providers found |")
    print("| --- | --- | --- | --- |")
    print(f"| `offload --help` | {med['help']:.3f} s | 1.00 | |")
    for kind, label in (("cold", "`offload offers --fresh` (DHT search)"),
                        ("warm", "`offload offers`, warm home (offer cache)")):
        print(f"| {label} | {med[kind]:.3f} s | {med[kind] / med['help']:.2f} | "
              f"{min(found[kind])}-{max(found[kind])} of {a.providers} |")


if __name__ == "__main__":
    main()
