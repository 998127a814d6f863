"""A real provider and `offload submit` with big inputs and outputs: they take the fast
lane (TLS 1.3 beside the job stream) and arrive with their digests; with the lane turned
off on the provider the same job still completes over the stream."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.e2e.conftest import Network

pytestmark = pytest.mark.e2e

SIZE = 32 * 1024 * 1024  # well above wire.LANE_MIN_BYTES, both ways
JOB = ("import hashlib, os\n"
       "data = open('big.bin', 'rb').read()\n"
       "print(hashlib.sha256(data).hexdigest())\n"
       "os.makedirs('out', exist_ok=True)\n"
       "open('out/big.out', 'wb').write(data[::-1])\n")


def run_big_job(network: Network, addr: str) -> tuple[dict[str, object], bytes]:
    (network.root / "job.py").write_text(JOB)
    data = os.urandom(SIZE)
    (network.root / "big.bin").write_bytes(data)
    res = network.offload("submit", "job.py", "--file", "big.bin", "--bootstrap", addr,
                          "--timeout", "120", "--out", "res", "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    doc: dict[str, object] = json.loads(res.stdout)
    assert doc["verified"] is True and doc["exit_code"] == 0
    assert doc["stdout"] == hashlib.sha256(data).hexdigest() + "\n"  # the input arrived
    got = (network.root / "res" / "big.out").read_bytes()
    assert got == data[::-1]  # the output arrived
    outputs = doc["outputs"]
    assert isinstance(outputs, dict)
    assert outputs["big.out"] == hashlib.sha256(got).hexdigest()
    return doc, data


def test_big_inputs_and_outputs_take_the_lane(network: Network) -> None:
    p = network.start_provider()
    run_big_job(network, p["addr"])
    log = p["log"].read_text()
    assert "lane: received" in log, log[-3000:]  # the input came over the lane
    assert "lane: sent" in log, log[-3000:]  # and the output went back over one
    assert "the stream carries the data" not in log


def test_with_the_lane_off_the_job_still_completes_over_the_stream(network: Network) -> None:
    p = network.start_provider(env={"OFFLOAD_LANE": "off"})
    run_big_job(network, p["addr"])
    log = p["log"].read_text()
    assert "lane: received" not in log and "lane: sent" not in log
