"""Bulk data MiB/s on loopback, one run: raw TCP (trio sockets, 1 MiB reads from disk, the
receiver discards), raw TCP whose receiver also writes to disk and hashes (sha256, in its
one thread; for comparison only), the libp2p job-stream path (noise + yamux + chunk
frames, digest and disk write on the receiver), and the fast lane (TLS 1.3 beside that
stream, node/net/lane.py, negotiated over it, digest and disk write too); ratios against
raw TCP (issue #13: the lane >= 0.4x). Sender and receiver run in this one process, as in
bench_provider.py; received files are deleted after the clock stops.

Usage: .venv/bin/python bench/bench_bulk.py [--mib 64 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from node.net import lane
from node.net.host import Stream, open_host
from node.net.transfer import CHUNK, receive_file, send_file
from protocol import Identity

PROTO = "/offload/bench-bulk/1.0.0"


def make_blob(path: Path, mib: int) -> str:
    h = hashlib.sha256()
    block = bytes(range(256)) * (CHUNK // 256)
    with path.open("wb") as f:
        for i in range(mib):
            data = hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:]
            f.write(data)
            h.update(data)
    return h.hexdigest()


async def raw_tcp(blob: Path, keep: Path | None = None) -> float:
    """Seconds to send `blob` over plain TCP; with `keep`, the receiver writes it there and
    hashes it as it arrives (the file is deleted after the clock stops)."""
    size = blob.stat().st_size

    async def sink(stream: trio.SocketStream) -> None:
        got = 0
        h = hashlib.sha256()
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(keep.open("wb")) if keep is not None else None
            while got < size:
                data = await stream.receive_some(CHUNK)
                if out is not None:
                    out.write(data)
                    h.update(data)
                got += len(data)
        await stream.send_all(b"k")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        t = time.perf_counter()
        client = await trio.open_tcp_stream("127.0.0.1", port)
        with blob.open("rb") as f:
            while data := f.read(CHUNK):
                await client.send_all(data)
        await client.receive_some(1)
        took = time.perf_counter() - t
        await client.aclose()
        nursery.cancel_scope.cancel()
    if keep is not None:
        keep.unlink()
    return took


async def node_paths(blob: Path, digest: str, tmp: Path, repeat: int) -> dict[str, list[float]]:
    """Seconds per transfer over the libp2p stream, and over the lane, `repeat` times each."""
    size = blob.stat().st_size
    times: dict[str, list[float]] = {"stream": [], "lane": []}
    done: trio.MemorySendChannel[tuple[bool, Path]]
    done, finished = trio.open_memory_channel[tuple[bool, Path]](1)
    a, b = Identity.generate(), Identity.generate()
    mode = {"lane": False}
    runs = iter(range(1 << 30))

    async def handler(stream: Stream) -> None:
        dest = tmp / f"recv-{next(runs)}.bin"  # deleted once the clock stopped
        if mode["lane"]:
            sink = lane.DestFile(dest, size, digest)

            async def fallback(s: Stream) -> None:
                raise AssertionError("the lane did not open")

            used = await lane.receive_phase(stream, a, [("blob.bin", sink)], fallback=fallback)
            await trio.to_thread.run_sync(sink.finish)
        else:
            await receive_file(stream, name="blob.bin", size=size, sha256=digest, dest=dest)
            used = False
        await done.send((used, dest))

    async with open_host(a, ["/ip4/127.0.0.1/tcp/0"]) as ha, \
            open_host(b, ["/ip4/127.0.0.1/tcp/0"]) as hb:
        ha.handle(PROTO, handler)
        for name in ("stream", "lane") * repeat:
            mode["lane"] = name == "lane"
            stream = await hb.open_stream(a.peer_id, PROTO, addrs=ha.addrs())
            t = time.perf_counter()
            if mode["lane"]:
                async def no_fallback(s: Stream) -> None:
                    raise AssertionError("the lane did not open")

                await lane.send_phase(stream, b, [("blob.bin", blob, 0)], fallback=no_fallback)
            else:
                await send_file(stream, "blob.bin", blob)
            used, dest = await finished.receive()
            times[name].append(time.perf_counter() - t)
            dest.unlink()
            assert used == mode["lane"]
            await stream.close()
    return times


def run(mib: int, repeat: int, tmp: Path) -> dict[str, Any]:
    blob = tmp / f"blob-{mib}.bin"
    digest = make_blob(blob, mib)
    raw, kept = [], []
    for _ in range(repeat):
        raw.append(trio.run(raw_tcp, blob))
        kept.append(trio.run(raw_tcp, blob, tmp / "raw-recv.bin"))
    node = trio.run(node_paths, blob, digest, tmp, repeat)
    blob.unlink()
    med = {"raw_tcp": statistics.median(raw), "raw_tcp_kept": statistics.median(kept),
           **{k: statistics.median(v) for k, v in node.items()}}
    return {"mib": mib, "repeat": repeat,
            **{f"{k}_mib_s": round(mib / s, 1) for k, s in med.items()},
            "ratio_kept_to_raw": round(med["raw_tcp"] / med["raw_tcp_kept"], 3),
            "ratio_stream_to_raw": round(med["raw_tcp"] / med["stream"], 3),
            "ratio_lane_to_raw": round(med["raw_tcp"] / med["lane"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(m, args.repeat, Path(tmp)) for m in args.mib]
    print("| MiB | raw TCP MiB/s | raw TCP + write + sha256 MiB/s (x raw) "
          "| libp2p stream MiB/s (x raw) | lane MiB/s (x raw) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mib']} | {r['raw_tcp_mib_s']} | {r['raw_tcp_kept_mib_s']} "
              f"({r['ratio_kept_to_raw']}) | {r['stream_mib_s']} "
              f"({r['ratio_stream_to_raw']}) | {r['lane_mib_s']} ({r['ratio_lane_to_raw']}) |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
