"""Placement against real providers: redundancy, canaries, bans, retries, map, plan."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import REPO, Network

SQUARE = str(REPO / "examples" / "square.py")
PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"


def _micro(credits: str) -> int:
    """A decimal string of credits (as --json prints them) in micro-credits."""
    return round(float(credits) * 1_000_000)


def _doc(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_redundancy_outvotes_a_cheater_who_is_then_banned_and_fails_canaries(
        network: Network, tmp_path: Path) -> None:
    priced = tmp_path / "priced.toml"
    priced.write_text(PRICED)
    extra = ["--config", str(priced)]
    a = network.start_provider(extra=extra)
    b = network.start_provider(bootstrap=a["addr"], extra=extra)
    cheat = network.start_provider(bootstrap=b["addr"], fault="cheat", extra=extra)
    boot = ["--bootstrap", a["addr"], "--timeout", "60"]
    for home in ("requester", "fresh"):
        _doc(network.offload("ledger", "deposit", "5", "--json", home=home))

    # Unchecked results (adaptive, one candidate) are returned at once but paid later.
    sleeper = _doc(network.offload("submit", SQUARE, "5", "--verify", "adaptive", "--hold",
                                   "600", "--provider", cheat["peer_id"], *boot, "--json"))
    assert sleeper["stdout"] == "36\n"  # wrong, and nobody could tell yet
    assert sleeper["held_until"] is not None and float(sleeper["paid"]) == 0
    honest = _doc(network.offload("submit", SQUARE, "2", "--verify", "adaptive", "--hold",
                                  "0.5", "--provider", a["peer_id"], *boot, "--json"))
    assert honest["held_until"] is not None and float(honest["paid"]) == 0
    time.sleep(1)

    doc = _doc(network.offload("submit", SQUARE, "7", "--redundancy", "3", *boot, "--json"))
    assert doc["stdout"] == "49\n"
    # The honest hold ended and was paid; the cheater, caught now, loses its held payment.
    assert doc["suspect"] == [sleeper["job_id"]]
    assert _micro(doc["paid"]) == 2 * _micro(doc["charged"]) + _micro(honest["charged"])
    held = {j["job_id"]: j for j in _doc(network.offload("jobs", "--json"))}
    assert (held[sleeper["job_id"]]["status"], held[sleeper["job_id"]]["reason"]) == (
        "refunded", "rejected")
    assert held[honest["job_id"]]["status"] == "released"
    assert doc["verification"] == "redundancy 3 (quorum 2)"
    agreed = {r["provider"]: r["agreed"] for r in doc["replicas"]}
    assert agreed == {a["peer_id"]: True, b["peer_id"]: True, cheat["peer_id"]: False}
    assert doc["provider"] != cheat["peer_id"]
    # The two who agreed are paid; the cheater is refused payment and reported.
    replicas = {r["job_id"] for r in doc["replicas"]}
    jobs = {j["provider"]: j for j in _doc(network.offload("jobs", "--json"))
            if j["job_id"] in replicas}
    assert jobs[cheat["peer_id"]]["status"] == "refunded"
    assert jobs[cheat["peer_id"]]["reason"] == "rejected"
    assert {jobs[p["peer_id"]]["status"] for p in (a, b)} == {"released"}

    offers = _doc(network.offload("offers", *boot[:2], "--json"))
    banned = {o["peer_id"]: o["banned"] for o in offers}
    assert banned[cheat["peer_id"]] is True and banned[a["peer_id"]] is False
    reputation = {o["peer_id"]: o["score"]["reputation"] for o in offers}
    assert reputation[cheat["peer_id"]] < 0.5 < reputation[a["peer_id"]]
    refused = network.offload("submit", SQUARE, "3", "--provider", cheat["peer_id"], *boot)
    assert refused.returncode == 2 and "banned for wrong results" in refused.stderr

    # A requester that never met the cheater: a canary exposes it, an honest one passes.
    caught = network.offload("submit", SQUARE, "3", "--verify", "canary", "--provider",
                             cheat["peer_id"], *boot, home="fresh")
    assert caught.returncode == 1 and "failed a canary job" in caught.stderr
    ok = _doc(network.offload("submit", SQUARE, "3", "--verify", "canary", "--provider",
                              a["peer_id"], *boot, "--json", home="fresh"))
    assert ok["stdout"] == "9\n" and ok["canaries_passed"] == 1


def test_a_provider_that_dies_is_replaced_and_a_map_survives_another(
        network: Network, tmp_path: Path) -> None:
    priced = tmp_path / "priced.toml"
    priced.write_text(PRICED)
    a = network.start_provider(extra=["--config", str(priced)])
    b = network.start_provider(bootstrap=a["addr"], extra=["--config", str(priced)])
    dies = network.start_provider(bootstrap=b["addr"], fault="die")  # free: ranked first
    boot = ["--bootstrap", a["addr"], "--timeout", "60"]

    broke = network.offload("submit", SQUARE, "12", "--provider", a["peer_id"], *boot)
    assert broke.returncode == 2 and "offload ledger deposit" in broke.stderr
    _doc(network.offload("ledger", "deposit", "5", "--json"))

    doc = _doc(network.offload("submit", SQUARE, "12", *boot, "--json"))
    assert doc["stdout"] == "144\n"
    assert [r["provider"] for r in doc["retries"]] == [dies["peer_id"]]
    assert doc["provider"] in {a["peer_id"], b["peer_id"]}
    assert doc["paid"] == doc["charged"] and float(doc["charged"]) > 0
    jobs = _doc(network.offload("jobs", "--json"))
    assert [(j["status"], j["verified"]) for j in jobs if j["job_id"] == doc["job_id"]] == [
        ("released", True)]
    balance = _doc(network.offload("ledger", "balance", "--json"))
    assert balance["escrow"] == "0.000000"
    assert float(balance["available"]) + float(balance["paid"]) == 5.0
    payee = "p1" if doc["provider"] == a["peer_id"] else "p2"
    earned = _doc(network.offload("ledger", "balance", "--json", home=payee))
    assert earned["earned"] == doc["charged"]
    assert _doc(network.offload("ledger", "verify", "--json", home=payee))["valid"] is True
    # The other provider learns of the job through the gossiped, requester-signed receipt.
    other = "p2" if payee == "p1" else "p1"
    for _ in range(40):
        known = _doc(network.offload("ledger", "export", "--json", home=other))["receipts"]
        if any(r["job_id"] == doc["job_id"] for r in known):
            break
        time.sleep(0.25)
    assert [r["outcome"] for r in known if r["job_id"] == doc["job_id"]] == ["accepted"]
    assert dies["proc"].wait(timeout=10) == 17
    seen = json.loads((network.root / "requester" / "peers.json").read_text())
    assert seen["rtt_ms"][doc["provider"]] > 0  # pinged before the job was sent

    dies2 = network.start_provider(bootstrap=b["addr"], fault="die")
    items = tmp_path / "items.txt"
    items.write_text("\n".join(str(i) for i in range(8)) + "\n")
    out = tmp_path / "squares"
    ran = network.offload("map", SQUARE, "--items", str(items), "--out", str(out), *boot,
                          "--fresh", "--json", timeout=240)  # dies2 is newer than the cache
    doc = _doc(ran)
    assert "Failed to open" not in ran.stderr  # dials to the dead provider stay quiet
    assert [r["stdout"] for r in doc["items"]] == [f"{i * i}\n" for i in range(8)]
    assert [r["index"] for r in doc["items"]] == list(range(8))
    assert doc["failed"] == 0 and doc["retries"] >= 1
    assert dies2["peer_id"] in doc["workers"]
    assert {r["provider"] for r in doc["items"]} <= {a["peer_id"], b["peer_id"]}
    assert (out / "3" / "result.msgpack").is_file()
    balance = _doc(network.offload("ledger", "balance", "--json"))
    assert balance["escrow"] == "0.000000"  # every copy was paid once or refunded
    released = [j for j in _doc(network.offload("jobs", "--json")) if j["status"] == "released"]
    assert len(released) == 1 + 8
    assert _doc(network.offload("ledger", "verify", "--json"))["valid"] is True


def _seed_benchmark(home: Path, tflops: float) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "local-benchmark.json").write_text(json.dumps({
        "v": 1, "measured_at": time.time(),
        "runtime_digest": "local", "seconds": 1.0,
        "devices": [{"device": "cpu", "fp32_tflops": tflops, "fp16_tflops": None,
                     "bf16_tflops": None, "mem_gbps": 10.0}]}))


def test_plan_keeps_small_jobs_here_sends_big_ones_away_and_splits_many_items(
        network: Network) -> None:
    a = network.start_provider()
    b = network.start_provider(bootstrap=a["addr"])
    boot = ["--bootstrap", a["addr"], "--timeout", "3600"]
    _seed_benchmark(network.root / "fast", 100.0)    # 100 TFLOP/s here
    _seed_benchmark(network.root / "slow", 0.001)    # 1 GFLOP/s here

    here = _doc(network.offload("plan", SQUARE, "5", "--gflop", "1000", *boot, "--json",
                                home="fast"))
    assert here["decision"] == "local" and here["gflop_assumed"] is False
    assert {o["kind"] for o in here["options"]} == {"local", "offload"}

    away = _doc(network.offload("plan", SQUARE, "5", "--gflop", "1000", *boot, "--json",
                                home="slow"))
    assert away["decision"] == "offload"
    assert away["chosen"]["parts"][0]["peer"] in {a["peer_id"], b["peer_id"]}
    local = next(o for o in away["options"] if o["kind"] == "local")
    assert local["seconds"] > away["chosen"]["seconds"]

    split = _doc(network.offload("plan", SQUARE, "--gflop", "1000", "--items", "40", *boot,
                                 "--json", home="slow"))
    assert split["decision"] == "split"
    assert sum(p["items"] for p in split["chosen"]["parts"]) == 40
    assert len(split["chosen"]["parts"]) >= 2

    for _ in range(20):  # providers ping each other and publish Vivaldi coordinates
        offers = _doc(network.offload("offers", *boot[:2], "--json", home="slow"))
        if any(len(o["coords"]) == 4 for o in offers):
            break
        time.sleep(1)
    assert any(len(o["coords"]) == 4 for o in offers), offers
    assert len(offers) == 2
    assert set(offers[0]["score"]) == {"cost_credits", "seconds", "transfer_s", "rtt_ms",
                                       "reputation", "locality", "total"}
    assert offers[0]["score"]["total"] <= offers[1]["score"]["total"]


def test_follow_streams_output_live_and_ctrl_c_kills_the_job_and_refunds_it(
        network: Network, tmp_path: Path) -> None:
    priced = tmp_path / "priced.toml"
    priced.write_text(PRICED)
    a = network.start_provider(extra=["--config", str(priced)])
    _doc(network.offload("ledger", "deposit", "5", "--json"))
    script = tmp_path / "slow_job_4f2a.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(120)\n"
                      "print('never')\n")
    proc = network.offload_async("submit", str(script), "--follow", "--bootstrap", a["addr"],
                                 "--timeout", "300")
    assert proc.stdout is not None
    first = proc.stdout.readline()  # arrives while the job still runs
    assert first == "started\n"
    assert subprocess.run(["pgrep", "-f", script.name], check=False).returncode == 0  # canary
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    deadline = time.monotonic() + 15
    while subprocess.run(["pgrep", "-f", script.name], check=False).returncode == 0:
        assert time.monotonic() < deadline, "the job kept running after Ctrl-C"
        time.sleep(0.2)
    jobs = _doc(network.offload("jobs", "--json"))
    assert [(j["status"], j["reason"]) for j in jobs] == [("refunded", "cancelled")]
    assert _doc(network.offload("ledger", "balance", "--json"))["available"] == "5.000000"
