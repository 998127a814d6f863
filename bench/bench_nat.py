"""NAT traversal numbers, in network namespaces this benchmark creates and removes (root).

    sudo .venv/bin/python bench/bench_nat.py [--mib 16] [--pings 20] [--jobs 3]

A relay and a public requester on a bridge (198.51.100.0/24), a home node and a second
requester behind cone NATs. Measured in one run:
- reservation time (home -> relay), and the time to a circuit connection;
- RTT (libp2p ping) and MiB/s over the relayed connection, then over the direct one DCUtR
  punches, and the time from the relayed connection to the direct one;
- `offload submit` whole process (cold CLI) to a provider behind a NAT (relayed, then
  hole-punched) against the same to a public provider: time to first job through a relay.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.localnet import LocalNet  # noqa: E402
from tests.e2e.nat.netns import Node, Topology, available  # noqa: E402

PEER = r'''
import json, os, sys, time
import trio
from node.net.host import open_host
from node.net.nat import circuit_addr
from protocol.identity import Identity

SINK = "/offload/bench-sink/1"

async def home(relay_addr: str, ready: str) -> None:
    async with open_host(Identity.generate(), [f"/ip4/{sys.argv[3]}/tcp/4002"]) as h:
        t0 = time.perf_counter()
        await h.connect(relay_addr)
        relay = relay_addr.rpartition("/p2p/")[2]
        assert await h.nat.reserve(relay) > 0
        took = (time.perf_counter() - t0) * 1000
        h.nat.advertised = [circuit_addr(relay_addr, h.peer_id)]

        async def sink(stream) -> None:
            raw = stream
            got = 0
            while True:
                data = await raw.read(1 << 20)
                if not data:
                    break
                got += len(data)
                if data.endswith(b"\xff" * 16):
                    break
            await raw.write(b"done")

        from libp2p.custom_types import TProtocol
        from node.net.host import libp2p_host
        libp2p_host(h).set_stream_handler(TProtocol(SINK), sink)
        with open(ready, "w") as f:
            json.dump({"peer_id": h.peer_id, "circuit": h.nat.advertised[0],
                       "reserve_ms": took}, f)
        await trio.sleep_forever()

async def measure(circuit: str, mib: int, pings: int) -> None:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from node.net.host import libp2p_host
    async with open_host(Identity.generate(), [f"/ip4/{sys.argv[3]}/tcp/0"]) as h:
        peer = circuit.rpartition("/p2p/")[2]
        t0 = time.perf_counter()
        await h.connect(circuit)
        out = {"circuit_ms": (time.perf_counter() - t0) * 1000}
        upgraded: list[float] = []

        async def watch() -> None:
            while h.connection_kind(peer) != "direct":
                await trio.sleep(0.05)
            upgraded.append((time.perf_counter() - t0) * 1000)

        async def phase(name: str) -> None:
            rtts = [await h.ping(peer, count=1) for _ in range(pings)]
            out[f"{name}_rtt_ms"] = sorted(rtts)[len(rtts) // 2]
            raw = await libp2p_host(h).new_stream(ID.from_base58(peer), [TProtocol(SINK)])
            out[f"{name}_kind"] = h.connection_kind(peer)
            block = b"\x00" * (1 << 20)
            s = time.perf_counter()
            for _ in range(mib):
                await raw.write(block)
            await raw.write(b"\xff" * 16)
            assert await raw.read(4) == b"done"
            out[f"{name}_mibs"] = mib / (time.perf_counter() - s)
            await raw.close()

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            await phase("relayed")
            with trio.fail_after(30):
                while not upgraded:
                    await trio.sleep(0.05)
            await phase("direct")
        out["upgrade_ms"] = upgraded[0]
        print(json.dumps(out))

if sys.argv[1] == "home":
    trio.run(home, sys.argv[2], sys.argv[4])
else:
    trio.run(measure, sys.argv[2], int(sys.argv[4]), int(sys.argv[5]))
'''


def cli_submit(net: LocalNet, node: Node, home: Path, job: Path, bootstrap: str,
               provider: str) -> tuple[float, str]:
    cmd = [*node.wrap, *net.command(home, "submit", str(job), "--bootstrap", bootstrap,
                                    "--provider", provider, "--json", "--timeout", "60")]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=net.root,
                         env=net.env)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"submit failed: {res.stderr[-2000:]}")
    return wall, str(json.loads(res.stdout)["route"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--pings", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=3)
    args = ap.parse_args()
    why = available()
    if why:
        raise SystemExit(f"bench_nat: {why}")
    with tempfile.TemporaryDirectory() as tmp, Topology("bench") as t:
        root = Path(tmp)
        net = LocalNet(root, tree=ROOT, env={"OMP_NUM_THREADS": "1"})
        try:
            pub_relay, pub_req = t.public("relay"), t.public("req")
            home1, home2 = t.home("home1"), t.home("home2")
            relay = net.relay("relay", listen=f"/ip4/{pub_relay.ip}/tcp/4001",
                              wrap=pub_relay.wrap)
            peer = root / "peer.py"
            peer.write_text(PEER)
            ready = root / "home.json"
            home1.spawn([sys.executable, str(peer), "home", relay.addr, home1.ip, str(ready)],
                        cwd=ROOT)
            deadline = time.monotonic() + 30
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            info = json.loads(ready.read_text())
            res = home2.run(sys.executable, str(peer), "measure", info["circuit"], home2.ip,
                            str(args.mib), str(args.pings), timeout=180)
            m = json.loads(res.stdout.strip().splitlines()[-1])

            pub_prov = net.start("pubprov", bootstrap=relay.addr, wrap=pub_req.wrap,
                                 listen=f"/ip4/{pub_req.ip}/tcp/4001", extra=["--warm", "0"])
            nat_prov = net.start("natprov", bootstrap=relay.addr, wrap=home1.wrap,
                                 listen=f"/ip4/{home1.ip}/tcp/4001", extra=["--warm", "0"])
            job = root / "job.py"
            job.write_text("print(1)\n")
            public = [cli_submit(net, pub_req, root / f"rq{i}", job, relay.addr,
                                 pub_prov.peer_id)[0] for i in range(args.jobs)]
            natted = [cli_submit(net, home2, root / f"rn{i}", job, relay.addr,
                                 nat_prov.peer_id) for i in range(args.jobs)]
        finally:
            net.close()
    pub_s = statistics.median(public)
    nat_s = statistics.median(w for w, _ in natted)
    print(f"reservation (home -> relay, connect included): {info['reserve_ms']:.0f} ms")
    print(f"circuit connection (requester -> home via relay): {m['circuit_ms']:.0f} ms")
    print(f"RTT relayed {m['relayed_rtt_ms']:.2f} ms ({m['relayed_kind']}), direct "
          f"{m['direct_rtt_ms']:.2f} ms ({m['direct_kind']}): "
          f"{m['relayed_rtt_ms'] / m['direct_rtt_ms']:.1f}x")
    print(f"bulk {args.mib} MiB: relayed {m['relayed_mibs']:.1f} MiB/s, direct "
          f"{m['direct_mibs']:.1f} MiB/s: ratio relayed/direct "
          f"{m['relayed_mibs'] / m['direct_mibs']:.2f}")
    print(f"time from the relayed connection to a direct one (DCUtR): {m['upgrade_ms']:.0f} ms")
    print(f"offload submit whole process, median of {args.jobs}: to a public provider "
          f"{pub_s:.2f} s, to a provider behind a NAT {nat_s:.2f} s "
          f"(routes {[r for _, r in natted]}): {nat_s / pub_s:.2f}x")


if __name__ == "__main__":
    main()
