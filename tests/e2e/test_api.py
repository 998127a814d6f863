"""The Python API against real provider processes: Requester, @remote, the sync facade.

One network of three providers serves the whole module (each start costs seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from node.api.remote import remote
from node.api.requester import Job, JobFailed, Requester
from node.api.values import RemoteFunctionError, ReturnValueRejected
from node.requester import events
from tests.e2e.conftest import REPO, Network, _env

SQUARE = REPO / "examples" / "square.py"
PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("api"))
    priced = network.root / "priced.toml"
    priced.write_text(PRICED)
    try:
        a = network.start_provider(extra=["--config", str(priced)])
        network.start_provider(bootstrap=a["addr"], extra=["--config", str(priced)])
        network.start_provider(bootstrap=a["addr"], extra=["--config", str(priced)])
        for home in ("req", "aio", "scripts"):  # credit to pay the providers with
            network.offload("ledger", "deposit", "5", home=home, check=True)
        yield network
    finally:
        network.close()


def _session(net: Network, name: str) -> dict[str, Any]:
    return {"home": net.root / name, "bootstrap": [net.providers[0]["addr"]],
            "config": os.devnull, "out": net.root / name / "out"}


def _seed_benchmark(home: Path, tflops: float = 0.05) -> None:
    """This node's speed for `plan`, as if measured (the measurement has its own tests and
    takes seconds of CPU that a loaded test host may not give it)."""
    from node import benchmark
    from node.home import Home

    cpu = benchmark.DeviceBenchmark(device="cpu", fp32_tflops=tflops, fp16_tflops=None,
                                    bf16_tflops=None, mem_gbps=5.0)
    benchmark.save(benchmark.BenchmarkReport(devices=(cpu,), measured_at=time.time(),
                                             runtime_digest="local", seconds=1.0),
                   Home(home).local_benchmark)


async def test_requester_offers_submit_map_plan_with_events(net: Network) -> None:
    seen: list[events.Event] = []
    _seed_benchmark(net.root / "req")
    async with Requester(**_session(net, "req")) as r:
        r.subscribe(seen.append)
        channel = r.events()
        offers = await r.offers(where="cpus >= 1")
        assert {o.peer_id for o in offers} == {p["peer_id"] for p in net.providers}
        assert await r.offers(where="cpus >= 4096") == []

        result = await r.submit(Job(SQUARE, args=["7"], timeout=60))
        assert result.ok and result.stdout == "49\n" and result.verification == "none"
        assert result.provider in {p["peer_id"] for p in net.providers}
        assert (result.out_dir / "result.msgpack").is_file()
        assert net.offload("verify", str(result.out_dir / "result.msgpack")).returncode == 0

        results = await r.map([Job(SQUARE, args=[str(i)], timeout=60) for i in range(6)])
        assert [x.stdout for x in results] == [f"{i * i}\n" for i in range(6)]  # type: ignore[union-attr]

        plan = await r.plan(Job(SQUARE, timeout=60, gflop=1.0), items=4)
        assert plan.decision in ("local", "offload", "split") and plan.items == 4
    kinds = {type(e).__name__ for e in seen}
    assert {"OfferFound", "Quoted", "Uploading", "Verified", "LogLine", "Paid"} <= kinds, kinds
    paid = {e.job_id: e.amount for e in seen if isinstance(e, events.Paid)}
    assert paid[result.job_id] == result.charged > 0
    assert all(paid[x.job_id] == x.charged for x in results)  # type: ignore[union-attr]
    lines = [e for e in seen if isinstance(e, events.LogLine)]
    assert lines[0].text.strip() == "49" and lines[0].job_id == result.job_id
    streamed = [e async for e in channel]  # the channel ends with the session
    assert streamed == seen


async def test_a_detached_job_is_fetched_by_a_later_requester(net: Network) -> None:
    async with Requester(**_session(net, "req")) as r:
        job_id = await r.detach(Job(SQUARE, args=["12"], timeout=60))
    async with Requester(**_session(net, "req")) as r:  # a later process, same home
        result = await r.result(job_id[:12])
        assert result.job_id == job_id and result.ok and result.stdout == "144\n"
        assert result.charged > 0 and (result.out_dir / "result.msgpack").is_file()
    assert net.offload("verify", str(result.out_dir / "result.msgpack")).returncode == 0


@remote(timeout=60, echo=False)
def square(x: int) -> int:
    return x * x


@remote(timeout=60, echo=False)
def stats(n: int) -> dict[str, Any]:
    import os

    t = torch.arange(n, dtype=torch.float32)
    os.makedirs("out", exist_ok=True)
    with open("out/note.txt", "w") as f:
        f.write(f"n={n}\n")
    print("computed", n)
    return {"sum": float(t.sum()), "t": t * 2, "pair": (n, "n")}


@remote(timeout=60, echo=False)
def fails(x: int) -> int:
    return {"a": 1}[str(x)]


@remote(timeout=60, echo=False)
def lies() -> int:
    """Writes a pickle where the return value goes and exits before the wrapper does:
    exactly what a hostile provider could send."""
    import os
    import pickle

    os.makedirs("out", exist_ok=True)
    with open("out/return.msgpack", "wb") as f:
        f.write(pickle.dumps({"v": 1, "ok": True, "value": 1}))
    os._exit(0)


@remote(timeout=2, echo=False)
def sleeps() -> None:
    import time

    time.sleep(60)


async def test_remote_functions_in_trio_code(net: Network) -> None:
    async with Requester(**_session(net, "aio")) as r:
        assert await square.remote.aio(7) == 49
        assert [v async for v in square.map.aio(range(6))] == [i * i for i in range(6)]

        result = await stats.call.aio(4)
        value = result.value
        assert value["sum"] == 6.0 and value["pair"] == (4, "n")
        assert isinstance(value["t"], torch.Tensor) and value["t"].tolist() == [0, 2, 4, 6]
        assert result.outputs["note.txt"].read_text() == "n=4\n"
        assert "return.msgpack" not in result.outputs and result.stdout == "computed 4\n"

        with pytest.raises(KeyError, match=r"KeyError: '3' \(raised by the remote function"
                           ) as caught:
            await fails.remote.aio(3)
        assert isinstance(caught.value, RemoteFunctionError)
        assert "in fails" in caught.value.remote_traceback

        with pytest.raises(ReturnValueRejected, match="not valid msgpack"):
            await lies.remote.aio()
        with pytest.raises(JobFailed, match=r"ended timeout \(exit -?\d+, limits hit: wall\); "
                           r"give it more \(timeout="):
            await sleeps.remote.aio()

        got = [v async for v in fails.map.aio(["x"], return_exceptions=True)]
        assert isinstance(got[0], KeyError)

        # A map that asks the offload plan first: this "machine" is so fast that the plan
        # keeps every item here, so no provider is asked for a quote.
        _seed_benchmark(net.root / "aio", tflops=1000.0)
        seen: list[events.Event] = []
        r.subscribe(seen.append)
        planned = remote(timeout=60, plan=True, gflop=0.001)(square.fn)
        assert [v async for v in planned.map.aio(range(4))] == [0, 1, 4, 9]
        assert not [e for e in seen if isinstance(e, events.Quoted)]


SCRIPT = textwrap.dedent("""
    import json
    import sys

    from node import remote

    @remote(timeout=60)
    def cube(x):
        print("cubing", x)
        return x ** 3

    out = {"remote": cube.remote(3), "map": list(cube.map(range(5))), "local": cube.local(2)}

    from node import Job, SyncRequester

    with SyncRequester() as r:
        out["offers"] = len(r.offers())
        out["submit"] = r.submit(Job(sys.argv[1], args=["5"], timeout=60)).stdout
    print(json.dumps(out), file=sys.stderr)
""")


def test_the_sync_facade_and_the_examples_in_plain_scripts(net: Network) -> None:
    env = _env() | {"OFFLOAD_HOME": str(net.root / "scripts"),
                    "OFFLOAD_BOOTSTRAP": net.providers[0]["addr"], "PYTHONPATH": str(REPO)}
    script = net.root / "cube.py"
    script.write_text(SCRIPT)

    def run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, str(path), *args], cwd=net.root, env=env,
                              text=True, capture_output=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        return proc

    proc = run(script, str(SQUARE))
    doc = json.loads(proc.stderr.strip().splitlines()[-1])
    assert doc == {"remote": 27, "map": [0, 1, 8, 27, 64], "local": 8, "offers": 3,
                   "submit": "25\n"}
    echoed = [int(line.split()[1]) for line in proc.stdout.splitlines() if "cubing" in line]
    assert echoed == [3, 0, 1, 2, 3, 4, 2]  # remote output echoed here, in input order

    assert "the provider's logits match a local run" in run(
        REPO / "examples" / "torch_infer.py").stdout
    assert "item 3 matches a local run" in run(REPO / "examples" / "batch_map.py").stdout
    trained = run(REPO / "examples" / "train_checkpoint.py").stdout
    assert "checkpoint" in trained and "parameters" in trained
