"""One home, one daemon: a second provider on a home, or on a taken port, exits 2 at once,
and the first keeps its warm worker and serves jobs."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import Network
from tests.e2e.leftovers import cgroup_tasks, job_groups, provide, wait_for


def _warm_groups(base: str) -> set[str]:
    return {g.name for g in job_groups(base) if g.name.startswith("job-warm-")}


def _serves_a_job(network: Network, addr: str) -> None:
    (network.root / "hello.py").write_text("print('still serving')\n")
    res = network.offload("submit", "hello.py", "--bootstrap", addr, "--timeout", "60",
                          "--json", check=True)
    assert json.loads(res.stdout)["stdout"] == "still serving\n"


def test_second_daemon_on_a_home_exits_2_naming_the_first(network: Network) -> None:
    first = provide(network, "p1", "--warm", "1", tag="first")
    assert wait_for(lambda: _warm_groups(first["base"]) and cgroup_tasks(first["base"]), 120)
    warm = _warm_groups(first["base"])
    pid = first["proc"].pid
    res = network.offload("provide", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-benchmark",
                          "--ready-file", str(network.root / "second.ready"), home="p1",
                          timeout=60)
    home = network.root / "p1"
    assert (res.returncode, res.stderr.splitlines()) == (2, [
        f"offload: error: {home} is in use by another provider (pid {pid}); stop it first "
        f"(kill {pid}), or give this one its own home with --home DIR"])
    assert not (network.root / "second.ready").exists()
    assert (home / "provider.lock").read_text() == f"{pid}\n"
    # the second touched nothing: the first one's warm worker is the same, still running
    assert _warm_groups(first["base"]) == warm and cgroup_tasks(first["base"])
    assert "warm worker failed" not in first["log"].read_text()
    assert first["proc"].poll() is None
    _serves_a_job(network, first["addr"])


def test_a_taken_listen_port_is_refused(network: Network) -> None:
    first = network.start_provider(extra=["--warm", "0"])
    port = int(first["addr"].split("/tcp/")[1].split("/")[0])
    addr = f"/ip4/127.0.0.1/tcp/{port}"
    res = network.offload("provide", "--listen", addr, "--warm", "0", "--no-benchmark",
                          "--ready-file", str(network.root / "second.ready"), home="p2",
                          timeout=120)
    lines = [line for line in res.stderr.splitlines() if " INFO " not in line]
    assert (res.returncode, lines) == (2, [
        f"offload: error: cannot listen on {addr}: Address already in use; stop what listens "
        "there or pick another port (tcp/0 picks a free one)"]), res.stderr
    assert not Path(network.root / "second.ready").exists()
    _serves_a_job(network, first["addr"])
