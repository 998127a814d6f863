"""Issue #17, job control across processes: `submit --detach` returns once the provider
runs the job; `offload logs`, `result`, `cancel` and `show` work from other processes
on the home (and after the provider restarted); no escrow stays locked."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import PRICED, Network, balance

STEPS = ("import os, sys, time\n"
         "n = int(sys.argv[1])\n"
         "for i in range(n):\n"
         "    print(f'step {i}', flush=True)\n"
         "    time.sleep(0.4)\n"
         "os.makedirs('out', exist_ok=True)\n"
         "open('out/answer.txt', 'w').write(f'{n * n}\\n')\n")


def _doc(res: Any) -> Any:
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _start(network: Network, tmp_path: Path, *, port: int | None = None,
           tag: str | None = None) -> dict[str, Any]:
    priced = tmp_path / "priced.toml"
    priced.write_text(PRICED)
    listen = ["--listen", f"/ip4/127.0.0.1/tcp/{port}"] if port else []
    return network.start_provider(extra=["--config", str(priced), "--warm", "0", *listen],
                                  home="prov", tag=tag)


def _funded(network: Network, tmp_path: Path, **start: Any
            ) -> tuple[dict[str, Any], list[str], Path]:
    """A priced provider, 5 credits on home `req`, and the steps script."""
    p = _start(network, tmp_path, **start)
    network.offload("ledger", "deposit", "5", home="req", check=True)
    script = tmp_path / "steps.py"
    script.write_text(STEPS)
    return p, ["--bootstrap", p["addr"]], script


def _detach(network: Network, script: Path, boot: list[str], *args: str) -> str:
    started = time.monotonic()
    doc = _doc(network.offload("submit", str(script), *args, "--detach", "--json", *boot,
                               "--timeout", "120", home="req"))
    assert doc["detached"] is True and re.fullmatch(r"[0-9a-f]{64}", doc["job_id"])
    assert time.monotonic() - started < 60
    return str(doc["job_id"])


def test_detached_job_is_followed_fetched_paid_and_shown_from_other_processes(
        network: Network, tmp_path: Path) -> None:
    p, boot, script = _funded(network, tmp_path)
    job = _detach(network, script, boot, "12")
    # the submitting process is gone; the job still runs and its escrow stays locked,
    # also through a command that sweeps orphans
    early = network.offload("result", job[:12], *boot, home="req")
    assert early.returncode == 3 and "still runs" in early.stderr, early.stderr
    jobs = _doc(network.offload("jobs", "--json", home="req"))
    assert [j["status"] for j in jobs if j["job_id"] == job] == ["detached"]
    assert balance(network)["escrow"] > 0
    follow = network.offload("logs", job[:12], "--follow", *boot, home="req", timeout=90)
    assert follow.returncode == 0, follow.stderr
    assert [f"step {i}" for i in range(12)] == re.findall(r"step \d+", follow.stdout)
    out = tmp_path / "fetched"
    got = _doc(network.offload("result", job[:12], "--out", str(out), "--json", *boot,
                               home="req"))
    assert got["status"] == "ok" and got["verified"] is True
    assert (out / "answer.txt").read_text() == "144\n"
    money = balance(network)
    assert money["escrow"] == 0
    assert money["paid"] == float(got["charged"]) > 0
    assert money["available"] == 5 - money["paid"]
    # show, offline: by file and by job id; a second fetch is refused, nothing is paid twice
    for target in (str(out / "result.msgpack"), job[:10]):
        shown = network.offload("show", target, home="req")
        assert shown.returncode == 0, shown.stderr
        assert "ok (exit 0)" in shown.stdout and "step 11" in shown.stdout
        assert "answer.txt" in shown.stdout
    again = network.offload("result", job[:12], *boot, home="req")
    assert again.returncode == 2 and "not a detached job" in again.stderr
    assert balance(network) == money
    kept = Path(p["log"]).with_name(Path(p["log"]).stem) / "kept"
    assert not kept.exists() or not any(kept.iterdir())  # settled: dropped by the provider


def test_cancel_stops_a_detached_job_and_refunds_the_rest(network: Network,
                                                          tmp_path: Path) -> None:
    p, boot, script = _funded(network, tmp_path)
    job = _detach(network, script, boot, "1000")
    locked = balance(network)["escrow"]
    assert locked > 0
    deadline = time.monotonic() + 60
    while "step 3" not in (seen := network.offload("logs", job[:12], *boot, home="req")).stdout:
        assert time.monotonic() < deadline, seen.stderr
        time.sleep(0.5)
    started = time.monotonic()
    doc = _doc(network.offload("cancel", job[:12], "--json", *boot, home="req"))
    assert doc["status"] == "killed" and time.monotonic() - started < 40
    assert doc["wall_s"] < 100  # stopped, not run to its end (400 s)
    money = balance(network)
    assert money["escrow"] == 0
    assert money["paid"] == float(doc["charged"]) < locked
    assert float(doc["refunded"]) == round(locked - money["paid"], 6)
    log = Path(p["log"]).read_text()
    assert f"job {job[:12]} (detached): killed" in log
    # canary: a job nobody cancels is still running at this point in the same provider
    other = _detach(network, script, boot, "1000")
    assert network.offload("result", other[:12], *boot, home="req").returncode == 3
    network.offload("cancel", other[:12], *boot, home="req", check=True)


def test_detached_results_outlive_a_provider_restart_and_a_lost_job_is_refunded(
        network: Network, tmp_path: Path) -> None:
    p, boot, script = _funded(network, tmp_path, tag="first")
    port = int(re.search(r"/tcp/(\d+)/", p["addr"]).group(1))  # type: ignore[union-attr]
    done = _detach(network, script, boot, "2")
    deadline = time.monotonic() + 60
    while "status" not in (logs := _doc(network.offload(
            "logs", done[:12], "--json", *boot, home="req"))) or logs["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    lost = _detach(network, script, boot, "1000")
    os.killpg(p["proc"].pid, signal.SIGKILL)  # mid-run: the job is lost with it
    p["proc"].wait()
    restarted = _start(network, tmp_path, port=port, tag="second")
    boot = ["--bootstrap", restarted["addr"]]
    out = tmp_path / "after"
    got = _doc(network.offload("result", done[:12], "--out", str(out), "--json", *boot,
                               home="req"))
    assert got["status"] == "ok" and (out / "answer.txt").read_text() == "4\n"
    gone = network.offload("result", lost[:12], *boot, home="req")
    assert gone.returncode == 1 and "keeps no result" in gone.stderr, gone.stderr
    money = balance(network)
    assert money["escrow"] == 0 and money["paid"] == float(got["charged"])
    jobs = {j["job_id"]: j for j in _doc(network.offload("jobs", "--json", home="req"))}
    assert jobs[lost]["status"] == "refunded" and jobs[done]["status"] == "released"


def test_cancel_from_another_process_stops_a_followed_job(network: Network,
                                                          tmp_path: Path) -> None:
    _, boot, script = _funded(network, tmp_path)
    submit = network.offload_async("submit", str(script), "1000", "--json", *boot,
                                   "--timeout", "120", home="req")
    deadline = time.monotonic() + 60
    job = ""
    while not job:
        assert time.monotonic() < deadline
        running = [j for j in _doc(network.offload("jobs", "--json", home="req"))
                   if j["outcome"] == "running"]
        job = running[0]["job_id"] if running else ""
        time.sleep(0.5)
    while "step 2" not in network.offload("logs", job[:12], *boot, home="req").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    network.offload("cancel", job[:12], *boot, home="req", check=True)
    out, err = submit.communicate(timeout=60)
    assert submit.returncode == 1, err  # the submitting process got the killed result
    assert json.loads(out)["status"] == "killed"
    assert balance(network)["escrow"] == 0
