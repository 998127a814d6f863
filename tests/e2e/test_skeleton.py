"""End to end through the CLI: discovery, a job with files, verification, failures."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.e2e.conftest import Network

JOB = """\
import os, sys
data = open("data.txt").read()
os.makedirs("out/sub", exist_ok=True)
open("out/upper.txt", "w").write(data.upper())
open("out/sub/args.txt", "w").write(" ".join(sys.argv[1:]))
print("read", len(data), "bytes; args", sys.argv[1:])
"""


def test_discovery_reaches_a_provider_that_is_not_the_bootstrap(network: Network) -> None:
    p1 = network.start_provider()
    p2 = network.start_provider(bootstrap=p1["addr"])
    p3 = network.start_provider(bootstrap=p2["addr"])
    # the requester knows only p1; p3 was introduced to the network by p2
    res = network.offload("offers", "--bootstrap", p1["addr"], "--json", check=True)
    offers = json.loads(res.stdout)
    found = {o["peer_id"] for o in offers}
    assert p3["peer_id"] in found
    assert found == {p1["peer_id"], p2["peer_id"], p3["peer_id"]}
    for o in offers:
        assert {"peer_id", "devices", "cpus", "memory_mb", "price", "sandbox_tier",
                "expires"} <= set(o)
        assert o["sandbox_tier"] == "A"
        assert o["expires"] > time.time() * 1000


def test_job_round_trip_with_output_files_and_offline_verify(network: Network) -> None:
    p1 = network.start_provider()
    p2 = network.start_provider(bootstrap=p1["addr"])
    (network.root / "job.py").write_text(JOB)
    (network.root / "data.txt").write_text("hello offload\n")
    res = network.offload("submit", "job.py", "alpha", "--beta", "--file", "data.txt",
                          "--bootstrap", p1["addr"], "--provider", p2["peer_id"],
                          "--timeout", "60", "--out", "res", "--json", check=True)
    doc = json.loads(res.stdout)
    assert doc["verified"] is True
    assert doc["provider"] == p2["peer_id"]
    assert doc["exit_code"] == 0
    assert "read 14 bytes; args ['alpha', '--beta']" in doc["stdout"]
    assert set(doc["outputs"]) == {"upper.txt", "sub/args.txt"}
    out = network.root / "res"
    assert (out / "upper.txt").read_text() == "HELLO OFFLOAD\n"
    assert (out / "sub/args.txt").read_text() == "alpha --beta"
    for name, digest in doc["outputs"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert len(doc["job_id"]) == 64
    check = network.offload("verify", "res/result.msgpack")
    assert check.returncode == 0, check.stdout + check.stderr


def test_tampered_result_is_refused_by_verify(network: Network) -> None:
    p1 = network.start_provider()
    (network.root / "job.py").write_text(
        "import os\nos.makedirs('out', exist_ok=True)\nopen('out/a.bin','wb').write(b'x'*1000)\n")
    network.offload("submit", "job.py", "--bootstrap", p1["addr"], "--out", "res",
                    "--json", check=True)
    good = network.root / "res"
    assert network.offload("verify", str(good / "result.msgpack")).returncode == 0  # canary

    raw = (good / "result.msgpack").read_bytes()
    for position in (5, len(raw) // 2, len(raw) - 3):
        bad = bytearray(raw)
        bad[position] ^= 0x01
        (good / "tampered.msgpack").write_bytes(bytes(bad))
        res = network.offload("verify", str(good / "tampered.msgpack"))
        assert res.returncode == 1, f"flip at {position} went unnoticed"
        assert "INVALID" in res.stdout

    (good / "a.bin").write_bytes(b"y" + b"x" * 999)
    res = network.offload("verify", str(good / "result.msgpack"), "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout) == {
        "valid": False, "reason": "output a.bin does not match its signed digest"}


def test_provider_killed_mid_job_gives_a_clear_error_not_a_hang(network: Network) -> None:
    p1 = network.start_provider()
    (network.root / "sleepy.py").write_text("import time\nprint('up', flush=True)\n"
                                            "time.sleep(120)\n")
    started = time.monotonic()
    cmd = network.offload_async("submit", "sleepy.py", "--bootstrap", p1["addr"],
                                "--timeout", "60")
    _wait_for_log(p1["log"], "running sleepy.py", timeout=30)
    p1["proc"].send_signal(signal.SIGKILL)
    _, err = cmd.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert cmd.returncode == 1
    assert "went away while running job" in err
    assert "Traceback" not in err
    assert elapsed < 60, "the requester waited out the whole job timeout"


def test_sigterm_and_sigint_stop_a_provider_within_2_s_and_close_its_listener(
        network: Network) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = network.start_provider()
        port = int(p["addr"].split("/tcp/")[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # canary: the listener is open before the signal
        started = time.monotonic()
        p["proc"].send_signal(sig)
        p["proc"].wait(timeout=10)
        assert time.monotonic() - started < 2.0
        assert p["proc"].returncode == 0
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            pass
        else:
            raise AssertionError("the listener survived the provider")


def test_user_errors_exit_2_with_one_line(network: Network) -> None:
    p1 = network.start_provider()
    res = network.offload("submit", "missing.py", "--bootstrap", p1["addr"])
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "offload: error: script missing.py: no such file; check the path"]
    res = network.offload("offers", "--bootstrap", "/ip4/127.0.0.1/tcp/1")
    assert res.returncode == 2
    assert "must end in /p2p/<peer id>" in res.stderr
    res = network.offload("offers")
    assert res.returncode == 2
    assert "no bootstrap peer" in res.stderr
    (network.root / "j.py").write_text("print(1)\n")
    res = network.offload("submit", "j.py", "--runtime", "julia", "--bootstrap", p1["addr"])
    assert res.returncode == 2
    assert "no provider meets the job's requirements" in res.stderr


def test_demo_runs_a_torch_job_on_a_local_network(network: Network) -> None:
    res = network.offload("demo", "--providers", "2", "--json", timeout=300, check=True)
    doc = json.loads(res.stdout)
    assert doc["verified"] is True
    assert doc["exit_code"] == 0
    assert len(doc["providers"]) == 2
    assert doc["provider"] in doc["providers"]
    leftover = subprocess.run(["pgrep", "-f", "offload-demo-"], capture_output=True, text=True)
    assert leftover.stdout == "", "demo left provider processes running"


def _wait_for_log(path: Path, text: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{path.read_text()}")


def test_demo_stops_every_provider_on_ctrl_c(network: Network) -> None:
    demo = network.offload_async("demo", "--providers", "2")
    deadline = time.monotonic() + 60
    while len(_demo_providers()) < 2:  # the second starts once the first is ready
        assert demo.poll() is None, demo.communicate()[1]
        assert time.monotonic() < deadline, "demo providers never started"
        time.sleep(0.1)
    time.sleep(2.5)  # the second is up and the job is on its way
    assert demo.poll() is None
    demo.send_signal(signal.SIGINT)
    _, err = demo.communicate(timeout=30)
    assert demo.returncode == 130, err
    assert "Traceback" not in err
    time.sleep(0.3)
    assert _demo_providers() == [], "demo left provider processes behind after Ctrl-C"


def _demo_providers() -> list[str]:
    res = subprocess.run(["pgrep", "-f", "offload-demo-.*provide"], capture_output=True,
                         text=True)
    return res.stdout.split()


def test_where_filters_offers_and_a_bad_expression_points_at_its_token(
        network: Network) -> None:
    p1 = network.start_provider()
    network.start_provider(bootstrap=p1["addr"])
    both = json.loads(network.offload("offers", "--bootstrap", p1["addr"], "--json",
                                      check=True).stdout)
    assert len(both) == 2
    one = json.loads(network.offload("offers", "--bootstrap", p1["addr"], "--json", "--where",
                                     f'peer_id == "{p1["peer_id"]}" and cpus >= 1',
                                     check=True).stdout)
    assert [o["peer_id"] for o in one] == [p1["peer_id"]]
    none = json.loads(network.offload("offers", "--bootstrap", p1["addr"], "--json", "--where",
                                      "gpu.count >= 1", check=True).stdout)
    assert none == []
    bad = network.offload("offers", "--bootstrap", p1["addr"], "--where",
                          "cpus >= 4 and gpu.memry > 2")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        'offload: error: --where: bad filter at column 15 ("gpu.memry"): unknown field; '
        "did you mean gpu.memory? (fields: " + ", ".join(_fields()) + ")"]
    (network.root / "j.py").write_text("print(1)\n")
    res = network.offload("submit", "j.py", "--bootstrap", p1["addr"], "--where", "tier == 'Z'")
    assert res.returncode == 2 and "no provider meets the job's requirements" in res.stderr


def _fields() -> list[str]:
    from scheduler import FIELDS

    return list(FIELDS)
