"""Provider throughput: trivial jobs per second (cold and warm sandboxes) through one real
provider process, and bulk MiB/s over the node's data path against raw TCP, same run.

Usage (root, after `make setup`): .venv/bin/python bench/bench_provider.py [--jobs N] [--mib M]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from node.api.requester import Job, Requester
from node.localnet import LocalNet
from node.net.host import Stream, open_host
from node.net.transfer import receive_file, send_file
from node.requester.exchange import run_job
from protocol import Identity


async def jobs_per_second(addr: str, script: Path, n: int, out: Path,
                          pause_s: float) -> dict[str, Any]:
    warm = 0
    async with Requester(home=out / "req", bootstrap=[addr], ledger=False) as r:
        job = Job(script)
        request = r.request(job)
        ad = (await r.candidates(job))[0][0]  # the requester's own ranking
        started = time.perf_counter()
        busy = 0.0
        for i in range(n):
            t = time.perf_counter()
            outcome = await run_job(r.core.host, ad, request, out / str(i))
            busy += time.perf_counter() - t
            warm += outcome.result.sandbox.warm
            await trio.sleep(pause_s)
        total = time.perf_counter() - started
    return {"jobs": n, "jobs_per_s": round(n / busy, 2), "mean_ms": round(busy / n * 1000, 1),
            "warm_share": round(warm / n, 2), "wall_s": round(total, 1)}


async def data_path(mib: int, tmp: Path) -> dict[str, float]:
    blob = tmp / "blob.bin"
    blob.write_bytes(os.urandom(mib << 20))
    size = blob.stat().st_size

    # raw TCP on loopback: the baseline
    async def sink(stream: trio.SocketStream) -> None:
        got = 0
        while got < size:
            got += len(await stream.receive_some(1 << 20))
        await stream.send_all(b"k")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        t = time.perf_counter()
        client = await trio.open_tcp_stream("127.0.0.1", port)
        with blob.open("rb") as f:
            while data := f.read(1 << 20):
                await client.send_all(data)
        await client.receive_some(1)
        raw_s = time.perf_counter() - t
        await client.aclose()
        nursery.cancel_scope.cancel()

    # the node's path: noise + yamux + our frames of <= 1 MiB, digest checked at the end
    done = trio.Event()

    async def handler(stream: Stream) -> None:
        import hashlib
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        await receive_file(stream, name="blob.bin", size=size, sha256=digest,
                           dest=tmp / "recv.bin", idle_timeout=30)
        done.set()

    a, b = Identity.generate(), Identity.generate()
    async with open_host(a, ["/ip4/127.0.0.1/tcp/0"]) as ha, \
            open_host(b, ["/ip4/127.0.0.1/tcp/0"]) as hb:
        ha.handle("/offload/bench/1.0.0", handler)
        stream = await hb.open_stream(a.peer_id, "/offload/bench/1.0.0", addrs=ha.addrs())
        t = time.perf_counter()
        await send_file(stream, "blob.bin", blob)
        await done.wait()
        node_s = time.perf_counter() - t
        await stream.close()
    return {"mib": mib, "raw_tcp_mib_s": round(mib / raw_s, 1),
            "node_mib_s": round(mib / node_s, 1), "ratio_node_to_raw": round(raw_s / node_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "trivial.py"
        script.write_text("print(sum(range(1000)))\n")
        result: dict[str, Any] = {}
        for label, extra, pause in (("cold", ("--warm", "0"), 0.0),
                                    ("warm", ("--warm", "2"), 0.0),
                                    ("warm_paced", ("--warm", "2"), 1.5)):
            with LocalNet(root, grace_s=30) as net:
                addr = net.start(label, extra=extra).addr
                time.sleep(3.0 if label.startswith("warm") else 0.0)  # let the pool fill
                result[label] = trio.run(jobs_per_second, addr, script, args.jobs,
                                         root / f"out-{label}", pause)
        result["data_path"] = trio.run(data_path, args.mib, root)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
