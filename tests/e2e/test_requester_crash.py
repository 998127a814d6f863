"""A requester killed mid-job (kill -9 of `offload submit`) strands no money: the next
command on its home refunds the escrow, or pays it when the provider proves a verified
result; `offload ledger refund JOB` is there for the impatient. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

from tests.e2e.conftest import Network

PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"
WAIT_S = 90.0


def _doc(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _locked_job(net: Network, proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait until the submit in `proc` has escrowed its job; that job's row."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        locked = [j for j in _doc(net.offload("jobs", "--json")) if j["status"] == "locked"]
        if locked:
            return dict(locked[0])
        time.sleep(0.3)
    raise AssertionError("the submit never escrowed its job")


def _kill(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_killed_submit_is_refunded_or_paid_at_the_next_command(network: Network) -> None:
    (network.root / "priced.toml").write_text(PRICED)
    (network.root / "slow.py").write_text("import time\ntime.sleep(60)\n")
    (network.root / "quick.py").write_text("import time\ntime.sleep(2)\nprint('done')\n")
    p = network.start_provider(extra=["--config", str(network.root / "priced.toml")])
    _doc(network.offload("ledger", "deposit", "5", "--json"))
    boot = ["--bootstrap", p["addr"], "--timeout", "90"]

    # 1. A live submit's escrow is its own: no other command sweeps or refunds it.
    slow = network.offload_async("submit", "slow.py", *boot)
    job = _locked_job(network, slow)
    refused = network.offload("ledger", "refund", job["job_id"][:12])
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"offload: error: job {job['job_id'][:12]} belongs to a running process (pid "
        f"{slow.pid}) on this home; it settles the escrow itself, or stop it first"]
    assert _doc(network.offload("ledger", "balance", "--json"))["escrow"] == job["locked"]

    # 2. kill -9 mid-job: the provider has no result to show, so the next command refunds.
    _kill(slow)
    after = network.offload("ledger", "balance", "--json")
    assert _doc(after)["escrow"] == "0.000000" and _doc(after)["available"] == "5.000000"
    assert f"job {job['job_id'][:12]}: its process had died; escrow refunded" in after.stderr
    row = {j["job_id"]: j for j in _doc(network.offload("jobs", "--json"))}[job["job_id"]]
    assert (row["status"], row["reason"]) == ("refunded", "cancelled")

    # 3. Frozen after the provider signed its result, then killed: the provider proves
    # the verified result on the settle protocol and is paid its charge, once.
    quick = network.offload_async("submit", "quick.py", *boot)
    job = _locked_job(network, quick)
    os.killpg(quick.pid, signal.SIGSTOP)
    deadline = time.monotonic() + WAIT_S
    while f"job {job['job_id'][:12]}: ok" not in p["log"].read_text():
        assert time.monotonic() < deadline, p["log"].read_text()
        time.sleep(0.3)
    _kill(quick)
    swept = network.offload("jobs", "--json")
    assert "the provider proved a verified result" in swept.stderr, swept.stderr
    row = {j["job_id"]: j for j in _doc(swept)}[job["job_id"]]
    assert row["status"] == "released" and row["verified"]
    assert 0 < float(row["charge"]) <= float(row["locked"])
    balance = _doc(network.offload("ledger", "balance", "--json"))
    assert (balance["escrow"], balance["paid"]) == ("0.000000", row["charge"])
    deadline = time.monotonic() + WAIT_S
    while f"job {job['job_id'][:12]} settled by" not in p["log"].read_text():
        assert time.monotonic() < deadline, "the provider never got its receipt and cheque"
        time.sleep(0.3)
    assert _doc(network.offload("ledger", "verify", "--json"))["valid"] is True

    # 4. Provider gone too: the sweep waits out the grace; `ledger refund` does not.
    slow = network.offload_async("submit", "slow.py", *boot)
    job = _locked_job(network, slow)
    _kill(slow)
    _kill(p["proc"])
    waiting = _doc(network.offload("ledger", "balance", "--json"))
    assert waiting["escrow"] == job["locked"]  # unreachable provider, grace not over
    done = _doc(network.offload("ledger", "refund", job["job_id"][:12], "--json"))
    assert done["job_id"] == job["job_id"] and done["refunded"] == job["locked"]
    assert _doc(network.offload("ledger", "balance", "--json"))["escrow"] == "0.000000"
    again = network.offload("ledger", "refund", job["job_id"])
    assert again.returncode == 2 and "is already refunded (cancelled)" in again.stderr
    assert _doc(network.offload("ledger", "verify", "--json"))["valid"] is True
