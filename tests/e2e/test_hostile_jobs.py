"""Hostile jobs against a real tier-A provider: each ends with a clear status, and the
provider serves the next job."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import Network
from tests.node.conftest import sandbox_missing

JOBS = {
    "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n"
                  "    except OSError:\n        pass\n", ["--timeout", "6"]),
    "memory_hog": ("blocks = []\nwhile True:\n    blocks.append(b'x' * (16 << 20))\n",
                   ["--memory", "0.25"]),
    "cpu_burn": ("import multiprocessing as mp, time\n"
                 "def burn():\n    end = time.time() + 3\n    while time.time() < end: pass\n"
                 "ps = [mp.Process(target=burn) for _ in range(3)]\n"
                 "[p.start() for p in ps]; [p.join() for p in ps]\nprint('done')\n",
                 ["--cpus", "1"]),
    "hang": ("import time\ntime.sleep(600)\n", ["--timeout", "3"]),
    "disk_fill": ("n = 0\ntry:\n    with open('fill', 'wb') as f:\n        while True:\n"
                  "            f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
                  "except OSError as e:\n    print('stopped after', n, 'MiB:', e.strerror)\n",
                  ["--disk", "0.0625"]),
    "orphan": ("import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True,"
               " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('left a child')\n",
               []),
}


@pytest.fixture
def provider(network: Network) -> dict[str, object]:
    reason = sandbox_missing()
    if reason:
        pytest.skip(reason)
    return network.start_provider()


def submit(network: Network, provider: dict[str, object], name: str) -> dict[str, object]:
    code, flags = JOBS[name]
    (network.root / f"{name}.py").write_text(code)
    res = network.offload("submit", f"{name}.py", "--bootstrap", str(provider["addr"]),
                          "--json", "--out", f"res-{name}", *flags, timeout=120)
    assert res.returncode in (0, 1), res.stderr
    doc: dict[str, object] = json.loads(res.stdout)
    from protocol import JobResult, open_signed

    raw = (network.root / f"res-{name}" / "result.msgpack").read_bytes()
    doc["result"] = open_signed(raw, JobResult).message
    return doc


def test_each_hostile_job_ends_with_a_clear_status(network: Network,
                                                   provider: dict[str, object]) -> None:
    seen = {}
    for name in JOBS:
        seen[name] = submit(network, provider, name)["result"]

    bomb = seen["fork_bomb"]
    assert bomb.status == "timeout" and {"pids", "wall"} <= set(bomb.limits_hit)
    hog = seen["memory_hog"]
    assert hog.status == "killed" and "memory" in hog.limits_hit
    assert hog.usage.peak_memory_mb <= 256 + 8
    burn = seen["cpu_burn"]
    assert burn.status == "ok" and "cpu" in burn.limits_hit
    assert burn.usage.cpu_s <= burn.usage.wall_s * 1.3, "3 busy processes beat a 1-CPU cap"
    hang = seen["hang"]
    assert hang.status == "timeout" and hang.limits_hit == ("wall",)
    assert hang.usage.wall_s < 3 + 2
    disk = seen["disk_fill"]
    assert "disk" in disk.limits_hit and "stopped after" in disk.stdout
    assert int(disk.stdout.split()[2]) <= 64
    orphan = seen["orphan"]
    assert orphan.status == "ok" and "left a child" in orphan.stdout
    left = subprocess.run(["pgrep", "-f", "^sleep 600$"], capture_output=True, text=True)
    assert left.stdout == "", "the orphan survived its job"
    for result in seen.values():
        assert result.sandbox.tier == "A" and result.sandbox.network == "none"

    (network.root / "ok.py").write_text("print('still serving')\n")
    res = network.offload("submit", "ok.py", "--bootstrap", str(provider["addr"]), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["stdout"] == "still serving\n"
    assert provider["proc"].poll() is None  # type: ignore[attr-defined]


def test_a_provider_forced_to_tier_b_advertises_b_and_runs_torch(network: Network) -> None:
    reason = sandbox_missing()
    if reason:
        pytest.skip(reason)
    p = network.start_provider(extra=["--sandbox-tier", "B"])
    offers = json.loads(network.offload("offers", "--bootstrap", p["addr"], "--json",
                                        check=True).stdout)
    assert [o["sandbox_tier"] for o in offers] == ["B"]
    (network.root / "t.py").write_text(
        "import os, torch\nos.makedirs('out', exist_ok=True)\n"
        "torch.save(torch.arange(4), 'out/t.pt')\nprint(int(torch.arange(4).sum()))\n")
    doc = json.loads(network.offload("submit", "t.py", "--bootstrap", p["addr"], "--json",
                                     check=True).stdout)
    assert doc["stdout"] == "6\n" and set(doc["outputs"]) == {"t.pt"}


def test_without_isolation_a_provider_refuses_jobs_unless_told_unsafe(network: Network) -> None:
    broken = {"OFFLOAD_RUNTIME_ROOT": str(network.root / "no-runtimes")}  # no job runtime
    refusing = network.start_provider(env=broken)
    assert "refusing remote jobs and not advertising" in refusing["log"].read_text()
    offers = json.loads(network.offload("offers", "--bootstrap", refusing["addr"], "--json",
                                        check=True).stdout)
    assert offers == []
    unsafe = network.start_provider(bootstrap=refusing["addr"], env=broken,
                                    extra=["--unsafe-no-sandbox"])
    offers = json.loads(network.offload("offers", "--bootstrap", refusing["addr"], "--json",
                                        check=True).stdout)
    assert [(o["peer_id"], o["sandbox_tier"]) for o in offers] == [(unsafe["peer_id"], "none")]
    (network.root / "u.py").write_text("print('ran unsandboxed')\n")
    doc = json.loads(network.offload("submit", "u.py", "--bootstrap", refusing["addr"],
                                     "--json", "--out", "u", check=True).stdout)
    assert doc["provider"] == unsafe["peer_id"] and doc["stdout"] == "ran unsandboxed\n"
    from protocol import JobResult, open_signed

    result = open_signed((network.root / "u/result.msgpack").read_bytes(), JobResult).message
    assert result.sandbox.tier == "none" and result.sandbox.network == "host"


def test_sandbox_check_cli_reports_every_probe(network: Network) -> None:
    reason = sandbox_missing()
    if reason:
        pytest.skip(reason)
    res = network.offload("sandbox", "check", "--json", timeout=120)
    doc = json.loads(res.stdout)
    assert res.returncode == 0, doc
    assert doc["tier"] == "A" and doc["startup_ms"] > 0
    assert len(doc["probes"]) >= 20 and set(doc["probes"].values()) == {"blocked"}
    table = network.offload("sandbox", "check", timeout=120)
    assert table.returncode == 0 and "tier A:" in table.stdout
