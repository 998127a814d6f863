"""Discovery under a burst: N provider processes in a chain, then M searches at once;
prints the outcome table (answers with every provider / partial / empty / failed) and
p50/p95 latency, against searches one at a time on the same network (baseline, same run).

The M searches are DHT clients like `offers` (open_client, then a search), W worker
processes of M/W clients each, all connected first and released together, so the burst
lands on the providers' DHT rather than on 2 cores starting M Pythons. `--cli` adds a row
of M real `offload offers --json` processes started at once (on a small machine that row
measures process start-up contention as much as discovery). `--compare REV` runs it all
again with the code of git revision REV (`git archive`), for a before/after.

Usage (root): .venv/bin/python bench/bench_discovery_burst.py [--providers 10] [--burst 100]
              [--workers 4] [--cli] [--compare a2420fe] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.localnet import LocalNet

REPO = Path(__file__).resolve().parents[1]


def network(tree: Path, root: Path) -> LocalNet:
    """Provider, worker and `offers` processes of one code tree (PYTHONPATH=tree). Imported
    here: a worker must import `node` from its own tree, not this one."""
    sys.path.insert(0, str(REPO))
    from node.localnet import LocalNet

    return LocalNet(root, tree=tree, env={"OMP_NUM_THREADS": "1"}, ready_timeout_s=120,
                    grace_s=0)


def offers(net: LocalNet, bootstrap: str, home: str) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = net.spawn(
        net.command(net.root / home, "offers", "--bootstrap", bootstrap, "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def worker(clients: int, boots: list[str], ready: Path, go: Path, repeat: int) -> None:
    """One worker process: `clients` DHT clients, connected, then searching together."""
    import trio

    from node.net.client import open_client
    from protocol import Identity


    async def main() -> None:
        out: list[dict[str, Any]] = []
        async with AsyncExitStack() as stack:
            discs = []
            for i in range(clients):
                _, disc = await stack.enter_async_context(
                    open_client(Identity.generate(), [boots[i % len(boots)]]))
                discs.append(disc)
            ready.write_text("ready")
            while not go.exists():
                await trio.sleep(0.01)

            async def one(disc: Any) -> None:
                t = time.monotonic()
                try:
                    if hasattr(disc, "search"):  # this tree
                        found = await disc.search("cpu")
                        peers = [a.message.peer_id for a in found.ads]
                        said = found.shortfall() is not None
                        why = {"found": found.found, "unreachable": len(found.unreachable),
                               "dht_failed": found.dht_failed, "cut": found.lookup_cut}
                    else:  # an older tree
                        peers = [a.message.peer_id for a in await disc.find_ads("cpu")]
                        said, why = False, {}
                except Exception as exc:  # a failed search is an outcome, not a crash
                    out.append({"error": repr(exc), "latency": time.monotonic() - t})
                    return
                out.append({"peers": peers, "said": said, "latency": time.monotonic() - t,
                            **why})

            for _ in range(repeat):
                async with trio.open_nursery() as nursery:
                    for disc in discs:
                        nursery.start_soon(one, disc)
        print(json.dumps(out))

    trio.run(main)


def pool(net: LocalNet, boots: list[str], workers: int, clients: int, repeat: int,
         tag: str) -> list[dict[str, Any]]:
    """Start the workers, wait until every client is connected, release them together."""
    go = net.root / f"{tag}.go"
    readies = [net.root / f"{tag}.{w}.ready" for w in range(workers)]
    procs = []
    for w, ready in enumerate(readies):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(clients),
               "--boots", ",".join(boots[w:] + boots[:w]), "--ready", str(ready),
               "--go", str(go), "--repeat", str(repeat)]
        procs.append(net.spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True))
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in readies):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"a worker did not get ready (see {net.root})")
        time.sleep(0.05)
    go.write_text("go")
    out: list[dict[str, Any]] = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=600)
        out.extend(json.loads(stdout or "[]"))
    return out


def cli_outcome(proc: subprocess.Popen[str], started: float,
                timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": "timeout", "latency": time.monotonic() - started}
    latency = time.monotonic() - started
    if proc.returncode != 0:
        return {"error": err.strip()[-200:], "latency": latency}
    return {"peers": [o["peer_id"] for o in json.loads(out)], "latency": latency,
            "said": "offload: warning" in err}


def why_line(results: list[dict[str, Any]]) -> str:
    """Where the incomplete answers of a burst of DHT clients lost providers."""
    ok = [r for r in results if "found" in r]
    if not ok:
        return "no search detail (an older tree)"
    return (f"providers named by the lookup: median {statistics.median(r['found'] for r in ok)}"
            f"; lookups cut by their deadline {sum(r['cut'] for r in ok)}"
            f"; DHT requests failed {sum(r['dht_failed'] for r in ok)}"
            f"; ads unreachable {sum(r['unreachable'] for r in ok)}")


def table_row(label: str, results: list[dict[str, Any]], everyone: set[str],
              idle: list[dict[str, Any]]) -> dict[str, Any]:
    def kind(r: dict[str, Any]) -> str:
        if "error" in r:
            return "failed"
        got = set(r["peers"])
        return "all" if got >= everyone else "empty" if not got else "partial"

    kinds = [kind(r) for r in results]
    lat = sorted(r["latency"] for r in results)
    return {
        "label": label, "searches": len(results),
        "all": kinds.count("all"), "partial": kinds.count("partial"),
        "empty": kinds.count("empty"), "failed": kinds.count("failed"),
        "incomplete_and_said_so": sum(1 for k, r in zip(kinds, results, strict=True)
                                      if k != "all" and r.get("said")),
        "p50_s": round(statistics.median(lat), 2),
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
        "idle_all": sum(1 for r in idle if kind(r) == "all"), "idle_n": len(idle),
        "idle_p50_s": round(statistics.median(r["latency"] for r in idle), 2),
    }


def run(tree: Path, providers: int, burst: int, workers: int, cli: bool,
        label: str) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="bench-disc-"))
    net = network(tree, root)
    rows = []
    try:
        t = time.monotonic()
        chain = [p.info for p in net.chain(providers)]
        print(f"[{label}] {providers} providers up in {time.monotonic() - t:.0f} s",
              file=sys.stderr, flush=True)
        everyone = {p["peer_id"] for p in chain}
        boots = [p["addrs"][0] for p in chain]
        time.sleep(2)
        idle = pool(net, boots, 1, 1, 5, "idle")  # baseline: one search at a time
        out = pool(net, boots, workers, burst // workers, 1, "burst")
        rows.append(table_row(f"{label}: {len(out)} DHT clients at once", out, everyone, idle))
        print(f"[{label}] burst: " + why_line(out), file=sys.stderr, flush=True)
        if cli:
            start = time.monotonic()
            procs = [offers(net, boots[i % providers], f"r{i}") for i in range(burst)]
            out = [cli_outcome(p, start, 600 - (time.monotonic() - start)) for p in procs]
            rows.append(table_row(f"{label}: {burst} `offers` processes at once", out,
                                  everyone, idle))
    finally:
        net.close()
    return rows


def export(rev: str) -> Path:
    tree = Path(tempfile.mkdtemp(prefix=f"bench-disc-{rev}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--providers", type=int, default=10)
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--cli", action="store_true", help="also a burst of `offers` processes")
    p.add_argument("--compare", metavar="REV", help="also run git revision REV (before)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--boots", help=argparse.SUPPRESS)
    p.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.boots.split(","), args.ready, args.go, args.repeat)
        return
    rows = run(REPO, args.providers, args.burst, args.workers, args.cli, "this tree")
    if args.compare:
        rows += run(export(args.compare), args.providers, args.burst, args.workers, args.cli,
                    args.compare)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{args.burst} searches at once against {args.providers} providers in a chain")
    print("| what | all providers | partial | empty | failed | incomplete, said so | "
          "p50 s | p95 s | one at a time: p50 s (baseline) | p50 vs baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['label']} | {r['all']} | {r['partial']} | {r['empty']} | {r['failed']} "
              f"| {r['incomplete_and_said_so']} | {r['p50_s']} | {r['p95_s']} | "
              f"{r['idle_p50_s']} ({r['idle_all']}/{r['idle_n']} complete) | "
              f"{r['p50_s'] / max(r['idle_p50_s'], 1e-9):.1f}x |")


if __name__ == "__main__":
    main()
