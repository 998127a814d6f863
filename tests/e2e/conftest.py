"""Real `offload` processes on loopback; every process is killed at teardown, pass or fail."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parents[2]


class Network:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.providers: list[dict[str, Any]] = []

    def offload(self, *args: str, home: str = "requester", timeout: float = 120,
                check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run one `offload` CLI command to completion (killed with its group on timeout)."""
        cmd = [sys.executable, "-m", "node", "--home", str(self.root / home), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.root, start_new_session=True, env=_env())
        self.procs.append(proc)  # type: ignore[arg-type]
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)  # type: ignore[arg-type]
            out, err = proc.communicate()
            raise AssertionError(f"offload {' '.join(args)} hung for {timeout} s:\n{err}") from None
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise AssertionError(f"offload {' '.join(args)} exited {result.returncode}:\n{err}")
        return result

    def offload_async(self, *args: str, home: str = "requester") -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "node", "--home", str(self.root / home), *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=self.root, start_new_session=True, env=_env())
        self.procs.append(proc)  # type: ignore[arg-type]
        return proc

    def start_provider(self, *, bootstrap: str | None = None, extra: list[str] | None = None,
                       env: dict[str, str] | None = None, benchmark: bool = False,
                       fault: str | None = None) -> dict[str, Any]:
        """A provider process; `fault` ("cheat" or "die") makes it misbehave (faulty.py)."""
        n = len(self.providers) + 1
        ready = self.root / f"p{n}.ready"
        entry = ["tests.e2e.faulty", fault] if fault else ["node"]
        cmd = [sys.executable, "-m", *entry, "--home", str(self.root / f"p{n}"), "provide",
               "--listen", "/ip4/127.0.0.1/tcp/0", "--ready-file", str(ready)]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        cmd += extra or []
        if not benchmark:  # a few CPU-seconds per provider: only where a test looks at it
            cmd.append("--no-benchmark")
        log = (self.root / f"p{n}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env=_env() | (env or {}) | {"PYTHONPATH": str(REPO)})
        self.procs.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"provider {n} did not start:\n"
                                     + (self.root / f"p{n}.log").read_text(errors="replace"))
            time.sleep(0.05)
        info: dict[str, Any] = json.loads(ready.read_text())
        info["proc"] = proc
        info["addr"] = info["addrs"][0]
        info["log"] = self.root / f"p{n}.log"
        self.providers.append(info)
        return info

    def close(self) -> None:
        for p in self.procs:
            _kill(p)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OFFLOAD_") or k == "OFFLOAD_LOG"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    net = Network(tmp_path)
    try:
        yield net
    finally:
        net.close()
