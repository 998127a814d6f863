"""The one requester core: the CLI and the API build the same request and the same plan."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from node.api.remote import PYTHON, remote
from node.api.requester import Job, Requester
from node.cli.commands import build_parser
from node.cli.common import job_from, session_from, split_script_argv
from node.cli.main import main
from node.requester.session import Session
from protocol import Identity, Price
from tests.factories import ALICE, NOW, plain_ad, signed

PEER = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
GOOD_ID, BAD_ID = Identity(bytes([7]) * 32), Identity(bytes([8]) * 32)
GOOD, BAD = GOOD_ID.peer_id, BAD_ID.peer_id


def _cli_args(*argv: str) -> Any:
    ours, theirs = split_script_argv(list(argv))
    args = build_parser().parse_args(ours)
    args.script_args = theirs
    return args


def test_the_cli_and_the_api_build_the_same_request_from_one_job(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("print(1)\n")
    data = tmp_path / "data.bin"
    data.write_bytes(b"x")
    args = _cli_args("--home", str(tmp_path / "h"), "submit", str(script), "7", "--x",
                     "--file", str(data), "--gpus", "1", "--cpus", "2", "--memory", "3.5",
                     "--disk", "4", "--timeout", "90", "--max-price", "0.25",
                     "--runtime", "python3", "--where", "cpus >= 2", "--config", os.devnull,
                     "--redundancy", "3", "--tolerance", "0.001", "--gflop", "12")
    job = Job(script, args=("7", "--x"), files=(data,), gpus=1, cpus=2, memory_gb=3.5,
              disk_gb=4.0, timeout=90, max_price=0.25, runtime="python3", where="cpus >= 2",
              redundancy=3, tolerance=0.001, gflop=12.0)
    assert job_from(args) == job
    cli = session_from(args, config=args.config).request(job_from(args))
    api = Requester(home=tmp_path / "h", bootstrap=[PEER], config=os.devnull).request(job)
    assert cli == api
    assert cli.resources.memory_mb == 3584 and cli.max_price == 250_000
    assert cli.args == ("7", "--x") and cli.files == (data,)


def test_remote_options_are_the_one_job_description() -> None:
    @remote(gpus=1, cpus=2, timeout=30, max_price=0.5, where="cpus >= 2", echo=False)
    def f(x: int) -> int:
        return x

    assert f.options.job == Job("", gpus=1, cpus=2, timeout=30, max_price=0.5,
                                where="cpus >= 2", python=PYTHON)
    made = f._job(Path("w.py"), Path("fn"), Path("args"))
    assert made == Job(Path("w.py"), files=(Path("fn"), Path("args")), gpus=1, cpus=2,
                       timeout=30, max_price=0.5, where="cpus >= 2", python=PYTHON)


def test_the_cli_names_flags_and_the_api_arguments_in_errors(tmp_path: Path) -> None:
    from node.config import load_requester
    from node.errors import UserError

    for prefix in ("--", ""):
        core = Session(home=tmp_path, bootstrap=[PEER], settings=load_requester(None),
                       prefix=prefix)
        with pytest.raises(UserError, match=f"^{prefix}timeout must be at least 1 second$"):
            core.check(Job("x.py", timeout=0))
        with pytest.raises(UserError, match=f"^{prefix}tolerance is relative"):
            core.check(Job("x.py", tolerance=2.0))
        with pytest.raises(UserError, match=f"^{prefix}redundancy must be at least 1$"):
            core.check(Job("x.py", redundancy=0))
        with pytest.raises(UserError, match=f"^{prefix}where: "):
            core.check(Job("x.py", where="cpus >>= 2"))


# plan with reputation, on both faces ---------------------------------------------------
class _Disc:
    def __init__(self) -> None:
        cheap = Price(start=800, per_cpu_second=16, minimum=800)
        dear = Price(start=1000, per_cpu_second=20, minimum=1000)
        self.ads = [signed(plain_ad(peer_id=BAD, price=cheap), BAD_ID),
                    signed(plain_ad(peer_id=GOOD, price=dear), GOOD_ID)]

    def clock(self) -> float:
        return NOW / 1000

    async def find_ads(self, capability: str = "cpu", **_: Any) -> list[Any]:
        return self.ads

    async def search(self, capability: str = "cpu", **_: Any) -> Any:
        from node.net.discovery import Search

        return Search(ads=self.ads, found=len(self.ads), unreachable=(), gone=0, invalid=0,
                      dht_failed=0, lookup_cut=False)


class _Payments:
    paid = 0

    def __init__(self, reputation: dict[str, float]) -> None:
        self.reputation = reputation

    def reputations(self) -> dict[str, float]:
        return dict(self.reputation)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Sessions open without a network: a DHT of two ads (BAD is cheaper) and a ledger
    whose reputations the test sets."""
    reputation: dict[str, float] = {}

    async def enter(self: Session) -> Session:
        self.identity = ALICE
        self.disc = _Disc()  # type: ignore[assignment]
        self.payments = _Payments(reputation)  # type: ignore[assignment]
        return self

    async def leave(self: Session, *_: object) -> None:
        return None

    monkeypatch.setattr(Session, "__aenter__", enter)
    monkeypatch.setattr(Session, "__aexit__", leave)
    return reputation


def _seed_benchmark(home: Path) -> None:
    """A slow machine, so the plan offloads the job."""
    from node import benchmark
    from node.home import Home

    cpu = benchmark.DeviceBenchmark(device="cpu", fp32_tflops=0.0001, fp16_tflops=None,
                                    bf16_tflops=None, mem_gbps=5.0)
    home.mkdir(parents=True, exist_ok=True)
    benchmark.save(benchmark.BenchmarkReport(devices=(cpu,), measured_at=time.time(),
                                             runtime_digest="local", seconds=1.0),
                   Home(home).local_benchmark)


def _both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], Any]:
    from node.requester.plan import plan_json

    home = tmp_path / "h"
    _seed_benchmark(home)
    script = tmp_path / "job.py"
    script.write_text("print(1)\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--home", str(home), "plan", str(script), "--bootstrap", PEER, "--config",
              os.devnull, "--gflop", "50", "--timeout", "60", "--json"])
    assert exit_.value.code == 0
    cli = json.loads(capsys.readouterr().out)

    async def api() -> Any:
        async with Requester(home=home, bootstrap=[PEER], config=os.devnull) as r:
            return await r.plan(Job(script, gflop=50.0, timeout=60))

    plan = trio.run(api)
    assert cli.pop("offers") == 2
    assert cli == plan_json(plan)
    return cli, plan


def _ranked(tmp_path: Path) -> list[str]:
    """The offers the core's plan was made from, best first."""
    from node.config import load_requester

    async def go() -> list[str]:
        async with Session(home=tmp_path / "h", bootstrap=[PEER],
                           settings=load_requester(None)) as core:
            _, ranked = await core.plan(Job(tmp_path / "job.py", gflop=50.0, timeout=60))
        return [ad.peer_id for ad, _ in ranked]

    return trio.run(go)


def test_plan_avoids_a_provider_with_a_bad_reputation_on_both_paths(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], offline: dict[str, float]) -> None:
    from node.requester.plan import plan_json

    cli, plan = _both(tmp_path, capsys)  # the CLI's plan is the API's
    assert plan.decision == "offload" and [p.peer for p in plan.chosen.parts] == [BAD]
    assert _ranked(tmp_path) == [BAD, GOOD]  # cheaper, and no evidence either way

    offline.update({BAD: 0.0, GOOD: 1.0})  # the ledger's receipts say BAD cheated
    cli, plan = _both(tmp_path, capsys)
    assert cli["chosen"] == plan_json(plan)["chosen"]
    assert plan.decision == "offload" and [p.peer for p in plan.chosen.parts] == [GOOD]
    assert _ranked(tmp_path) == [GOOD, BAD]
