"""`split(..., stages=3)` over real providers: contiguous blocks on three different
providers, driven by this node; a killed middle stage is replaced and its call run again
from the input held here, so a loop of calls loses or repeats no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import torch

from node.api.split import Pipeline, split
from tests.e2e.conftest import REPO, Network, _env


class Slow(torch.nn.Module):
    """A block that takes its time, so a call is in flight when its provider dies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.4)
        return x


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(2)
    layers: list[torch.nn.Module] = []
    for _ in range(6):
        layers += [torch.nn.Linear(64, 64), torch.nn.Tanh()]
    layers[6:6] = [Slow()]  # the middle: profiled as the slowest, it gets a stage of its own
    return torch.nn.Sequential(*layers)


def test_a_pipeline_survives_its_middle_provider_dying(tmp_path: Any) -> None:
    network = Network(tmp_path)
    try:
        first = network.start_provider(extra=["--warm", "0"])
        for _ in range(3):
            network.start_provider(bootstrap=first["addr"], extra=["--warm", "0"])
        procs = {p["peer_id"]: p["proc"] for p in network.providers}
        model, x = mlp(), torch.randn(8, 64)
        pipe = split(model, x, stages=3, passes=1, home=str(network.root / "req"),
                     config=os.devnull, bootstrap=[first["addr"]])
        assert isinstance(pipe, Pipeline)
        with pipe:
            assert len(pipe.bounds) == 3 and pipe.bounds[0][0] == 0
            assert pipe.bounds[-1][1] == len(model)
            before = pipe.providers
            assert len(set(before)) == 3  # three different providers
            middle = before[1]
            outputs, want = [], []
            killed = threading.Event()

            def kill() -> None:
                time.sleep(0.2)  # the middle stage is sleeping in Slow
                os.killpg(procs[middle].pid, signal.SIGKILL)
                killed.set()

            for step in range(12):
                xs = torch.randn(8, 64) + step
                if step == 4:
                    threading.Thread(target=kill, daemon=True).start()
                outputs.append(pipe(xs))
                with torch.no_grad():
                    want.append(model(xs))
            after = pipe.providers
        assert killed.is_set() and len(outputs) == 12
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(outputs, want, strict=True))
        assert pipe.recovered == 1 and after[1] != middle and after[1] not in before
        assert after[0] == before[0] and after[2] == before[2]
    finally:
        network.close()


def test_the_pipeline_example_generates_the_tokens_made_here(tmp_path: Any) -> None:
    network = Network(tmp_path)
    try:
        first = network.start_provider(extra=["--warm", "0"])
        for _ in range(2):
            network.start_provider(bootstrap=first["addr"], extra=["--warm", "0"])
        env = _env() | {"OFFLOAD_HOME": str(network.root / "req"), "PYTHONPATH": str(REPO),
                        "OFFLOAD_BOOTSTRAP": first["addr"],
                        "OFFLOAD_REQUESTER_CONFIG": os.devnull}
        proc = subprocess.run([sys.executable, str(REPO / "examples" / "pipeline_generate.py"),
                               "--tokens", "8"], cwd=network.root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "the same tokens as generating here" in proc.stdout
        assert proc.stdout.startswith("stages ((0, ")
    finally:
        network.close()
