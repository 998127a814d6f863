"""`split()` against a real provider: every cut's output equals the whole model run here
(activations above a call's 1 MiB cap move in parts), the plan explains each cut with the
provider's calibrated times, a latency plan measures the provider before it keeps
everything here, and an energy plan that keeps everything here opens no session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from node.api.blocks import PART_BYTES
from node.api.split import split
from tests.e2e.conftest import REPO, Network, _env


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("split"))
    try:
        network.start_provider(extra=["--warm", "0"])
        yield network
    finally:
        network.close()


def settings(net: Network) -> dict[str, Any]:
    return {"home": str(net.root / "req"), "config": os.devnull,
            "bootstrap": [net.providers[0]["addr"]]}


def sessions(net: Network) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(net.offload("sessions", "--json", home="req",
                                                        check=True).stdout)
    return rows


def cnn() -> torch.nn.Sequential:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),      # 16x64x64: 1 MiB out
        torch.nn.Conv2d(16, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 32 * 32, 10))


def test_every_cut_equals_running_the_model_here(net: Network) -> None:
    model, x = cnn(), torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    with split(model, x, passes=2, **settings(net)) as sm:
        plan = sm.plan.to_json()
        assert [c["k"] for c in plan["cuts"]] == list(range(len(model) + 1))
        for k in range(len(model) + 1):
            sm.force(k)
            got = sm(x)
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), k
        remote = [c for c in sm.plan.cuts if c.peer is not None]
        assert remote and all(c.peer == net.providers[0]["peer_id"] for c in remote)
        assert sm.remote is not None and sm.remote.remote_s is not None  # calibrated there
        assert len(sm.remote.remote_s) == len(model) and sm.link.bytes_per_s > 0
        assert sm.plan.cuts[1].up_bytes > PART_BYTES  # that cut's input moved in parts
        assert sm.plan.cuts[0].up_bytes == x.nelement() * 4
    rows = sessions(net)
    assert rows and rows[-1]["status"] == "closed"


def test_an_output_above_a_calls_cap_comes_back_in_parts(net: Network) -> None:
    model, x = cnn()[:2], torch.randn(8, 3, 64, 64)  # 2 MiB out, and 384 KiB in
    with torch.no_grad():
        want = model(x)
    with split(model, x, passes=1, **settings(net)) as sm:
        sm.force(0)
        assert sm.plan.chosen.down_bytes > PART_BYTES
        assert torch.allclose(sm(x), want, atol=1e-5)
    big = torch.randn(20, 3, 64, 64)  # 960 KiB in: even its calibration moves in parts
    with split(cnn(), big, passes=1, **settings(net)) as sm2:
        sm2.force(1)
        assert sm2.remote is not None and sm2.remote.remote_s is not None
        assert torch.allclose(sm2(big), cnn()(big), atol=1e-4)


def test_a_plan_that_keeps_everything_here_opens_no_session(net: Network) -> None:
    model, x = cnn(), torch.randn(1, 3, 64, 64)
    before = len(sessions(net))
    sm = split(model, x, objective="energy", power_w=0.0, passes=1, **settings(net))
    assert sm.plan.chosen.k == len(model) and sm.plan.chosen.peer is None
    assert "power_w=0 given" in sm.plan.power.source
    with torch.no_grad():
        assert torch.equal(sm(x), model(x))
    sm.close()
    assert len(sessions(net)) == before  # no session was opened on any provider


def test_latency_measures_the_provider_before_keeping_everything_here(net: Network) -> None:
    model, x = cnn(), torch.randn(1, 3, 64, 64)
    before = len(sessions(net))
    with split(model, x, passes=1, **settings(net)) as sm:
        n = len(model)
        assert sm.remote is not None and sm.remote.remote_s is not None  # calibrated there
        assert {0, n} <= set(sm.measured_s) and all(v > 0 for v in sm.measured_s.values())
        fastest = min(sm.measured_s.values())
        assert sm.measured_s[sm.plan.chosen.k] <= fastest / 0.95 + 1e-9  # within the margin
        with torch.no_grad():
            assert torch.allclose(sm(x), model(x), atol=1e-5)
    assert len(sessions(net)) == before + 1


def test_energy_names_its_power_figure_when_none_is_given(net: Network) -> None:
    model, x = cnn(), torch.randn(1, 3, 64, 64)
    sm = split(model, x, objective="energy", passes=1, joules_per_byte=1.0, **settings(net))
    try:
        source = sm.plan.power.source
        assert ("RAPL" in source or "DEFAULT_POWER_W" in source) and "per byte given" in source
        assert sm.plan.to_json()["power"]["source"] == source
        assert sm.plan.chosen.peer is None  # a joule a byte: nothing is worth sending
    finally:
        sm.close()


def test_the_split_example_prints_its_table_and_matches_running_here(net: Network) -> None:
    env = _env() | {"OFFLOAD_HOME": str(net.root / "req"), "PYTHONPATH": str(REPO),
                    "OFFLOAD_BOOTSTRAP": net.providers[0]["addr"],
                    "OFFLOAD_REQUESTER_CONFIG": os.devnull}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "split_infer.py"),
                           "--calls", "5"], cwd=net.root, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["cut", "here"] and len(lines) >= 12
    assert sum("<- chosen" in line for line in lines) == 1
    assert "5 calls: median" in lines[-1]


MODEL_FILE = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 16 * 16, 10))
"""


def test_offload_plan_prints_the_cut_table_of_a_model_file(net: Network) -> None:
    (net.root / "model.py").write_text(MODEL_FILE)
    boot = ["--bootstrap", net.providers[0]["addr"], "--config", os.devnull]
    res = net.offload("plan", str(net.root / "model.py"), "--model", "make", "--input-shape",
                      "2,3,16,16", "--json", *boot, home="req", timeout=300)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [c["k"] for c in doc["cuts"]] == [0, 1, 2, 3, 4] and doc["objective"] == "latency"
    assert doc["chosen"] in range(5) and "source" in doc["power"]
    text = net.offload("plan", str(net.root / "model.py"), "--model", "make",
                       "--input-shape", "2,3,16,16", *boot, home="req", timeout=300)
    assert text.returncode == 0 and sum("<- chosen" in ln for ln in text.stdout.splitlines()) == 1
    bad = net.offload("plan", str(net.root / "model.py"), "--model", "nope", "--input-shape",
                      "1,2", *boot, home="req")
    assert bad.returncode == 2 and "defines no 'nope'" in bad.stderr
