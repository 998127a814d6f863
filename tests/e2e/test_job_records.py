"""Issue #17. Every job is recorded: free and priced jobs in `offload jobs`, with charge,
timings and where the result lies, and a signed receipt the provider keeps. Nothing is
cut silently: the result states what its output cap dropped, the CLI says so, and the
whole output can come back as files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import REPO, Network

SQUARE = str(REPO / "examples" / "square.py")
PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"
WAIT_S = 30.0
BIG = 20 * 1024 * 1024
PRINTS_20_MB = ("import sys\nline = b'y' * 1023 + b'\\n'\n"
                f"for _ in range({BIG // 1024}): sys.stdout.buffer.write(line)\n")


def _micro(value: Any) -> int:
    """A charge as submit --json gives it (micro-credits, or a decimal string of credits)."""
    return value if isinstance(value, int) else round(float(value) * 1_000_000)


def _doc(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _receipts(p: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """job id -> (outcome, charge) of the receipts a provider keeps."""
    log = Path(p["log"])
    try:
        db = sqlite3.connect(f"file:{log.with_name(log.stem) / 'ledger.db'}?mode=ro", uri=True)
        try:
            return {r[0]: (r[1], r[2]) for r in db.execute(
                "SELECT job_id, outcome, charge FROM receipts")}
        finally:
            db.close()
    except sqlite3.OperationalError:  # no ledger yet
        return {}


def test_free_and_priced_jobs_are_all_recorded_with_receipts(network: Network,
                                                              tmp_path: Path) -> None:
    priced = tmp_path / "priced.toml"
    priced.write_text(PRICED)
    free = network.start_provider()
    paid = network.start_provider(bootstrap=free["addr"], extra=["--config", str(priced)])
    fails = tmp_path / "fails.py"
    fails.write_text("import sys\nprint('bad')\nsys.exit(3)\n")
    _doc(network.offload("ledger", "deposit", "5", "--json"))
    boot = ["--bootstrap", free["addr"], "--timeout", "60"]

    ok = _doc(network.offload("submit", SQUARE, "4", "--provider", free["peer_id"],
                              "--out", str(tmp_path / "ok"), *boot, "--json"))
    bad = network.offload("submit", str(fails), "--provider", free["peer_id"], *boot, "--json")
    assert bad.returncode == 1, bad.stderr
    bad_doc = json.loads(bad.stdout)
    priced_doc = _doc(network.offload("submit", SQUARE, "5", "--provider", paid["peer_id"],
                                      *boot, "--json"))
    assert (_micro(ok["charged"]), _micro(bad_doc["charged"])) == (0, 0)
    assert _micro(priced_doc["charged"]) > 0

    jobs = _doc(network.offload("jobs", "--json"))
    rows = {j["job_id"]: j for j in jobs}
    assert [j["job_id"] for j in jobs] == [ok["job_id"], bad_doc["job_id"],
                                          priced_doc["job_id"]]
    for doc, provider in ((ok, free), (bad_doc, free), (priced_doc, paid)):
        row = rows[doc["job_id"]]
        assert row["provider"] == provider["peer_id"]
        assert (row["status"], row["outcome"], row["verified"]) == ("released", "accepted",
                                                                    True)
        assert round(float(row["charge"]) * 1_000_000) == _micro(doc["charged"])
        assert row["free"] is (provider is free)
        assert {"quote", "upload", "run", "download"} <= set(row["phases_ms"])
        assert 0 < row["wall_s"] < 120 and row["ended_at"] >= row["started_at"]
        assert row["out_dir"] == str((network.root / doc["out_dir"]).resolve())
        assert (Path(row["out_dir"]) / "result.msgpack").is_file()
    assert rows[ok["job_id"]]["result_status"] == "ok"
    assert rows[bad_doc["job_id"]]["result_status"] == "failed"
    assert rows[ok["job_id"]]["out_dir"] == str((tmp_path / "ok").resolve())

    # Both providers hear their receipts, the free one's with charge 0.
    deadline = time.monotonic() + WAIT_S
    while len(_receipts(free)) < 2 or not _receipts(paid):
        assert time.monotonic() < deadline, (_receipts(free), _receipts(paid))
        time.sleep(0.3)
    assert _receipts(free)[ok["job_id"]] == ("accepted", 0)
    assert _receipts(free)[bad_doc["job_id"]] == ("accepted", 0)
    assert _receipts(paid)[priced_doc["job_id"]] == ("accepted",
                                                     _micro(priced_doc["charged"]))

    only = _doc(network.offload("jobs", "--json", "--limit", "1"))
    assert [j["job_id"] for j in only] == [priced_doc["job_id"]]
    assert _doc(network.offload("jobs", "--json", "--status", "refunded")) == []
    assert len(_doc(network.offload("jobs", "--json", "--status", "accepted"))) == 3
    text = network.offload("jobs").stdout.splitlines()
    assert len(text) == 3 and " free " in text[0] and text[0].endswith("verified")
    assert _doc(network.offload("ledger", "verify", "--json"))["valid"] is True
    bal = _doc(network.offload("ledger", "balance", "--json"))
    assert bal["escrow"] == "0.000000"  # nothing left locked


def test_a_free_job_is_recorded_while_it_runs_and_when_it_is_cancelled(
        network: Network, tmp_path: Path) -> None:
    free = network.start_provider()
    slow = tmp_path / "slow_job_7c1e.py"
    slow.write_text("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    proc = network.offload_async("submit", str(slow), "--follow", "--bootstrap", free["addr"],
                                 "--timeout", "300")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"  # the job runs now
    [row] = _doc(network.offload("jobs", "--json"))
    assert (row["provider"], row["status"], row["outcome"], row["free"]) == (
        free["peer_id"], "running", "running", True)
    assert row["ended_at"] is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    [row] = _doc(network.offload("jobs", "--json"))
    assert (row["status"], row["reason"], row["outcome"]) == ("refunded", "cancelled",
                                                              "cancelled")
    assert row["ended_at"] is not None and row["charge"] == "0.000000"
    assert "upload" in row["phases_ms"] and "run" not in row["phases_ms"]
    assert _doc(network.offload("jobs", "--json", "--status", "running")) == []

    # kill -9 mid-job: the next command finds no live process holding it and closes it.
    proc = network.offload_async("submit", str(slow), "--follow", "--bootstrap", free["addr"],
                                 "--timeout", "300")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, row = _doc(network.offload("jobs", "--json"))
    assert (row["status"], row["outcome"]) == ("refunded", "cancelled"), row
    assert row["detail"] == "the requester process that held it is gone"
    assert _doc(network.offload("ledger", "balance", "--json"))["escrow"] == "0.000000"


async def test_a_20_mb_output_is_cut_at_the_cap_and_says_so_or_comes_back_whole(
        network: Network, tmp_path: Path) -> None:
    import hashlib

    from node.api.requester import Job, Requester
    from protocol.messages import FULL_OUTPUT, MAX_OUTPUT_TEXT

    free = network.start_provider()
    big = tmp_path / "big.py"
    big.write_text(PRINTS_20_MB)
    boot = ["--bootstrap", free["addr"], "--timeout", "60"]
    res = network.offload("submit", str(big), *boot)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout) == MAX_OUTPUT_TEXT  # the cap, as before, but now stated:
    said = [line for line in res.stderr.splitlines() if "was cut" in line]
    assert said == [f"offload: stdout was cut at {MAX_OUTPUT_TEXT:,} bytes, "
                    f"{BIG - MAX_OUTPUT_TEXT:,} more dropped (the output cap); write big "
                    "output to a file in out/"], res.stderr
    doc = _doc(network.offload("submit", str(big), *boot, "--json"))
    assert (doc["stdout_truncated"], doc["stdout_dropped"]) == (True, BIG - MAX_OUTPUT_TEXT)
    assert (doc["stderr_truncated"], doc["stderr_dropped"]) == (False, 0)

    # A smaller cap of the requester's, and the whole output as a file in out/: the CLI
    out = tmp_path / "whole"
    doc = _doc(network.offload("submit", str(big), *boot, "--json", "--output-cap", "1000",
                               "--full-output", "--out", str(out)))
    assert (len(doc["stdout"]), doc["stdout_truncated"], doc["stdout_dropped"]) == (
        1000, True, BIG - 1000)
    whole = out / FULL_OUTPUT["stdout"]
    assert whole.stat().st_size == BIG
    assert doc["outputs"][FULL_OUTPUT["stdout"]] == hashlib.sha256(
        whole.read_bytes()).hexdigest()
    assert whole.read_bytes()[:1000] == doc["stdout"].encode()
    row = {j["job_id"]: j for j in _doc(network.offload("jobs", "--json"))}[doc["job_id"]]
    assert row["outcome"] == "accepted" and row["free"] is True
    bad = network.offload("submit", str(big), *boot, "--output-cap", "70000")
    assert bad.returncode == 2 and "--output-cap must be from 0 to" in bad.stderr

    # the API: the same options on a Job
    async with Requester(home=network.root / "requester", bootstrap=[free["addr"]],
                         config=os.devnull, out=tmp_path / "api") as r:
        result = await r.submit(Job(big, timeout=60, output_cap=10))
    assert len(result.stdout) == 10
