"""Operating a provider: graceful drain on SIGTERM, quotes and price caps."""

from __future__ import annotations

import json
import signal
import time

from tests.e2e.conftest import Network
from tests.e2e.test_skeleton import _wait_for_log


def test_sigterm_drains_running_jobs_and_refuses_new_ones(network: Network) -> None:
    p = network.start_provider()
    (network.root / "slow.py").write_text("import time\nprint('started', flush=True)\n"
                                          "time.sleep(4)\nprint('finished')\n")
    running = network.offload_async("submit", "slow.py", "--bootstrap", p["addr"], "--json")
    _wait_for_log(p["log"], "running slow.py", timeout=30)
    p["proc"].send_signal(signal.SIGTERM)
    _wait_for_log(p["log"], "draining: 1 running", timeout=10)
    (network.root / "late.py").write_text("print('late')\n")
    late = network.offload("submit", "late.py", "--bootstrap", p["addr"], "--provider",
                           p["peer_id"])
    assert late.returncode != 0  # the ad is withdrawn; a peer that still dials is refused
    assert ("draining" in late.stderr or "no provider with a valid ad" in late.stderr
            or "was not found" in late.stderr), late.stderr
    out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert json.loads(out)["stdout"] == "started\nfinished\n"
    p["proc"].wait(timeout=20)
    assert p["proc"].returncode == 0


def test_a_second_signal_stops_a_draining_provider_at_once(network: Network) -> None:
    p = network.start_provider()
    (network.root / "hang.py").write_text("import time\ntime.sleep(600)\n")
    job = network.offload_async("submit", "hang.py", "--bootstrap", p["addr"],
                                "--timeout", "300")
    _wait_for_log(p["log"], "running hang.py", timeout=30)
    p["proc"].send_signal(signal.SIGTERM)
    _wait_for_log(p["log"], "draining", timeout=10)
    started = time.monotonic()
    p["proc"].send_signal(signal.SIGINT)
    p["proc"].wait(timeout=20)
    assert time.monotonic() - started < 5
    _, err = job.communicate(timeout=60)
    assert job.returncode == 1 and "went away" in err


def test_status_and_metrics_report_what_the_provider_did(network: Network) -> None:
    import urllib.request

    p = network.start_provider()
    home = f"p{len(network.providers)}"
    (network.root / "ok.py").write_text("import os\nos.makedirs('out', exist_ok=True)\n"
                                        "open('out/r.txt', 'w').write('x' * 1000)\n")
    network.offload("submit", "ok.py", "--bootstrap", p["addr"], "--json", check=True)
    (network.root / "bad.py").write_text("raise SystemExit(4)\n")
    network.offload("submit", "bad.py", "--bootstrap", p["addr"], "--json")
    deadline = time.monotonic() + 15
    while True:
        res = network.offload("status", "--json", home=home)
        doc = json.loads(res.stdout)
        if doc["jobs"]["failed"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.returncode == 0 and doc["running"] is True
    assert doc["peer_id"] == p["peer_id"] and doc["tier"] in ("A", "B")
    assert doc["jobs"]["ok"] == 1 and doc["jobs"]["failed"] == 1
    assert doc["bytes_out"] == 1000 and doc["slots_total"] == 2
    body = urllib.request.urlopen(doc["metrics_url"], timeout=5).read().decode()
    assert 'offload_jobs_total{outcome="ok"} 1.0' in body
    assert "offload_bytes_out_total 1000.0" in body
    text = network.offload("status", home=home)
    assert p["peer_id"] in text.stdout and "running" in text.stdout
    p["proc"].send_signal(signal.SIGTERM)
    p["proc"].wait(timeout=10)
    stopped = network.offload("status", "--json", home=home)
    assert stopped.returncode == 1 and json.loads(stopped.stdout)["running"] is False
    missing = network.offload("status", home="nobody")
    assert missing.returncode == 2 and "no provider has run with home" in missing.stderr


PROVIDER_TOML = """\
[capacity]
slots = 1
queue = 1
warm = 0
[price]
start = 1000
per_cpu_second = 20000
per_gpu_second = 0
per_gb_second = 100
per_gb_transfer = 10000
minimum = 2000
"""


def test_quotes_caps_and_charges(network: Network) -> None:
    (network.root / "provider.toml").write_text(PROVIDER_TOML)
    p = network.start_provider(extra=["--config", str(network.root / "provider.toml")])
    (network.root / "work.py").write_text("x = 0\nfor i in range(2_000_000): x += i\nprint(x)\n")
    common = ["--bootstrap", p["addr"], "--timeout", "60", "--json"]

    # the job's cap is below what 60 s of one CPU can cost here: refused before anything runs
    low = network.offload("submit", "work.py", *common, "--max-price", "0.5")
    assert low.returncode == 1 and json.loads(low.stdout)["error"]["code"] == "peer_refused"
    from protocol import Price, Resources
    from scheduler.pricing import credits, max_charge

    price = Price(start=1000, per_cpu_second=20000, per_gb_second=100, per_gb_transfer=10000,
                  minimum=2000)
    size = (network.root / "work.py").stat().st_size
    ask = max_charge(price, Resources(max_seconds=60), input_bytes=size)
    assert low.stderr.strip().splitlines() == [
        f"offload: error: provider refused the job (price): price: this job can cost up to "
        f"{credits(ask)} credits here, above your cap of 0.500000"]

    # per-coefficient caps in requester.toml refuse the quote on the requester's side
    (network.root / "requester.toml").write_text(
        "[caps]\nstart = 5000\nper_cpu_second = 100\nper_gpu_second = 0\n"
        "per_gb_second = 1000\nper_gb_transfer = 100000\nminimum = 5000\n")
    capped = network.offload("submit", "work.py", *common, "--config",
                             str(network.root / "requester.toml"))
    assert capped.returncode == 1
    assert "price: provider" in capped.stderr and "per_cpu_second=20000" in capped.stderr

    # within the cap, but nothing to escrow the quote with: refused before anything runs
    broke = network.offload("submit", "work.py", *common, "--max-price", "5")
    assert broke.returncode == 2 and "run `offload ledger deposit AMOUNT`" in broke.stderr

    # within the cap: the charge comes from measured usage and never exceeds the quote
    network.offload("ledger", "deposit", "5", check=True)
    ok = network.offload("submit", "work.py", *common, "--max-price", "5", check=True)
    doc = json.loads(ok.stdout)
    assert doc["verified"] and doc["quoted"] == credits(ask)  # credits, as the ledger
    assert 0.002 <= float(doc["charged"]) < float(doc["quoted"])  # a few CPU-s, not 60
    assert doc["paid"] == doc["charged"]
    balance = json.loads(network.offload("ledger", "balance", "--json", check=True).stdout)
    assert balance["paid"] == doc["charged"] and balance["escrow"] == "0.000000"


def test_ads_carry_the_measured_benchmark_and_live_load(network: Network) -> None:
    p = network.start_provider(benchmark=True)
    _wait_for_log(p["log"], "benchmark: ", timeout=90)
    deadline = time.monotonic() + 30
    while True:
        offers = json.loads(network.offload("offers", "--bootstrap", p["addr"], "--json",
                                            check=True).stdout)
        cpu = offers[0]["devices"][0]
        if cpu["gflops"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert cpu["kind"] == "cpu" and cpu["gflops"] > 0 and cpu["mem_gbps"] > 0
    assert 0.0 <= cpu["utilization"] <= 1.0
    stored = json.loads((network.root / "p1" / "benchmark.json").read_text())
    assert stored["devices"][0]["device"] == "cpu"


def test_full_slots_and_queue_answer_busy_and_the_requester_asks_again(
        network: Network) -> None:
    p = network.start_provider(extra=["--slots", "1", "--queue", "1", "--warm", "0"])
    (network.root / "hold.py").write_text("import time\ntime.sleep(5)\nprint('held')\n")
    common = ["--bootstrap", p["addr"], "--json", "--timeout", "60"]
    first = network.offload_async("submit", "hold.py", *common)
    _wait_for_log(p["log"], "running hold.py", timeout=30)
    second = network.offload_async("submit", "hold.py", *common)
    time.sleep(2.5)  # the second is quoted and waits in the queue
    third = network.offload("submit", "hold.py", *common, timeout=180)
    # told busy at once (slot and queue full), it backed off and ran after the others
    assert third.returncode == 0, third.stderr
    status = json.loads((network.root / "p1" / "status.json").read_text())
    assert status["jobs"]["busy"] >= 1, status
    for proc in (first, second):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out)["stdout"] == "held\n"
    assert json.loads(third.stdout)["stdout"] == "held\n"


def test_json_logs_and_one_line_about_missing_gpus(network: Network) -> None:
    p = network.start_provider(extra=[], env={"OFFLOAD_LOG_FORMAT": "json"})
    lines = [json.loads(x) for x in p["log"].read_text().splitlines() if x.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(d) for d in lines)
    assert any("listening on" in d["msg"] for d in lines)
    no_gpu = [d for d in lines if "no NVIDIA driver" in d["msg"]]
    import os

    expected = 0 if os.path.exists("/dev/nvidiactl") else 1  # said once, on GPU-less hosts
    assert len(no_gpu) == expected, no_gpu
    assert all("exc" not in d and "Traceback" not in d["msg"] for d in no_gpu)
