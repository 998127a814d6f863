"""Real `offload` processes on loopback; every process is killed at teardown, pass or fail."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from node.localnet import LocalNet, ProviderDidNotStart, clean_env

READY_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parents[2]


class Network:
    """The tests' face of node.localnet: providers as dicts (their ready file, plus proc,
    addr, log), CLI commands run to completion; teardown kills every group at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.net = LocalNet(root, tree=REPO, env={"OMP_NUM_THREADS": "1"},
                            ready_timeout_s=READY_TIMEOUT_S, grace_s=0)
        self.providers: list[dict[str, Any]] = []

    @property
    def procs(self) -> list[subprocess.Popen[Any]]:
        return self.net.procs

    def offload(self, *args: str, home: str = "requester", timeout: float = 120,
                check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run one `offload` CLI command to completion (killed with its group on timeout)."""
        proc = self.offload_async(*args, home=home)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, err = proc.communicate()
            raise AssertionError(f"offload {' '.join(args)} hung for {timeout} s:\n{err}") from None
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise AssertionError(f"offload {' '.join(args)} exited {result.returncode}:\n{err}")
        return result

    def offload_async(self, *args: str, home: str = "requester") -> subprocess.Popen[str]:
        cmd = self.net.command(self.root / home, *args)
        proc: subprocess.Popen[str] = self.net.spawn(cmd, stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True)
        return proc

    def start_provider(self, *, bootstrap: str | None = None, extra: list[str] | None = None,
                       env: dict[str, str] | None = None, benchmark: bool = False,
                       fault: str | None = None, home: str | None = None,
                       tag: str | None = None) -> dict[str, Any]:
        """A provider process; `fault` ("cheat" or "die") makes it misbehave (faulty.py).
        `home` reuses a given home (a fresh one by default), `tag` names ready file and log."""
        tag = tag or f"p{len(self.providers) + 1}"
        try:
            p = self.net.start(tag, home=self.root / home if home else None,
                               bootstrap=bootstrap or (), extra=extra or (), env=env,
                               benchmark=benchmark,
                               entry=("tests.e2e.faulty", fault) if fault else ("node",))
        except ProviderDidNotStart as exc:
            raise AssertionError(str(exc)) from None
        info = p.info | {"proc": p.proc, "addr": p.addr, "log": p.log}
        self.providers.append(info)
        return info

    def close(self) -> None:
        self.net.close()


def _env() -> dict[str, str]:
    """The environment node processes of a test run with (no OFFLOAD_* but OFFLOAD_LOG)."""
    return clean_env({"OMP_NUM_THREADS": "1"})


def _kill(proc: subprocess.Popen[Any]) -> None:
    from node.localnet import stop

    stop(proc, grace_s=0)


@pytest.fixture
def network(tmp_path: Path) -> Iterator[Network]:
    net = Network(tmp_path)
    try:
        yield net
    finally:
        net.close()


PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"


@contextmanager
def priced_network(root: Path) -> Iterator[Network]:
    """One priced provider (no warm pool) and 5 credits deposited on home `req`."""
    network = Network(root)
    priced = network.root / "priced.toml"
    priced.write_text(PRICED)
    try:
        network.start_provider(extra=["--config", str(priced), "--warm", "0"])
        network.offload("ledger", "deposit", "5", home="req", check=True)
        yield network
    finally:
        network.close()


def balance(net: Network, home: str = "req") -> dict[str, float]:
    """`offload ledger balance` of `home`, as numbers of credits."""
    res = net.offload("ledger", "balance", "--json", home=home, check=True)
    return {k: float(v) for k, v in json.loads(res.stdout).items()}
