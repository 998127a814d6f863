"""`@remote(keep_warm=S)` against real provider processes: a function's calls share one
session (its sandbox's state shows it), an error does not end it, it closes and settles S
seconds after its last call, a plain script's exit settles it, and a killed provider is
replaced without the caller seeing the loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from node.api.remote import remote
from node.api.requester import Requester
from node.api.values import RemoteFunctionError
from node.api.warm import sessions_of
from tests.e2e.conftest import REPO, Network, _env, priced_network
from tests.e2e.conftest import balance as ledger

_SEEN: list[int] = []


def seen(x: int) -> tuple[int, int]:
    """How many calls this process has served so far, and x squared."""
    _SEEN.append(x)
    return len(_SEEN), x * x


def picky(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with priced_network(tmp_path_factory.mktemp("keep_warm")) as network:
        yield network


def settings(net: Network, home: str = "req") -> dict[str, Any]:
    return {"home": net.root / home, "config": os.devnull,
            "bootstrap": [net.providers[0]["addr"]], "echo": False}


def sessions(net: Network, home: str = "req") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(net.offload("sessions", "--json", home=home,
                                                        check=True).stdout)
    return rows


def test_calls_share_one_session_until_it_idles_out_then_it_settles(net: Network) -> None:
    before, known = ledger(net), {r["session_id"] for r in sessions(net)}
    warm = remote(cpus=1, max_price=1.0, keep_warm=3, **settings(net))(seen)
    plain = remote(cpus=1, max_price=1.0, **settings(net))(seen)

    async def main() -> tuple[list[tuple[int, int]], list[tuple[int, int]], int, int, float]:
        async with Requester(home=net.root / "req", config=os.devnull,
                             bootstrap=[net.providers[0]["addr"]]) as r:
            first = [await warm.remote.aio(i) for i in range(6)]
            opened = sessions_of(r).opened
            # canary: as jobs, each call is a fresh sandbox and has seen only itself
            jobs = [await plain.remote.aio(i) for i in range(2)]
            await trio.sleep(6)  # past keep_warm: the session is closed and settled
            assert r.payments.ledger is not None
            escrow = r.payments.ledger.balance().escrow
            again = await warm.remote.aio(7)
            return [*first, again], jobs, opened, sessions_of(r).opened, escrow

    calls, jobs, opened, reopened, escrow = trio.run(main)
    assert calls[:6] == [(i + 1, i * i) for i in range(6)]  # one process served all six
    assert jobs == [(1, 0), (1, 1)]
    assert opened == 1 and escrow == 0
    assert reopened == 2 and calls[6] == (1, 49)  # a new session: a new object
    rows = [r for r in sessions(net) if r["session_id"] not in known]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"closed"}, rows
    after = ledger(net)
    assert after["escrow"] == 0.0 and after["paid"] > before["paid"]


def test_a_remote_exception_is_raised_here_and_the_session_serves_on(net: Network) -> None:
    fn = remote(cpus=1, max_price=1.0, keep_warm=30, **settings(net))(picky)

    async def main() -> tuple[int, int]:
        async with Requester(home=net.root / "req", config=os.devnull,
                             bootstrap=[net.providers[0]["addr"]]) as r:
            assert await fn.remote.aio(3) == 3
            with pytest.raises(RemoteFunctionError, match="negative: -1") as caught:
                await fn.remote.aio(-1)
            assert isinstance(caught.value, ValueError)
            values = [v async for v in fn.map.aio(range(-2, 30), return_exceptions=True)]
            assert [v for v in values if isinstance(v, int)] == list(range(30))
            return sessions_of(r).opened, sum(isinstance(v, ValueError) for v in values)

    opened, errors = trio.run(main)
    assert opened == 1 and errors == 2


SCRIPT = """
from node import remote

def twice(x):
    return 2 * x

f = remote(cpus=1, max_price=1.0, keep_warm=600, echo=False)(twice)
print([f.remote(i) for i in range(5)], flush=True)
"""


def test_a_plain_script_leaving_with_a_warm_session_settles_it(net: Network) -> None:
    env = _env() | {"OFFLOAD_HOME": str(net.root / "req"), "PYTHONPATH": str(REPO),
                    "OFFLOAD_BOOTSTRAP": net.providers[0]["addr"],
                    "OFFLOAD_REQUESTER_CONFIG": os.devnull}
    script = net.root / "warm_script.py"
    script.write_text(SCRIPT)
    known = {r["session_id"] for r in sessions(net)}
    proc = subprocess.run([sys.executable, str(script)], cwd=net.root, env=env, text=True,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[0, 2, 4, 6, 8]"
    rows = [r for r in sessions(net) if r["session_id"] not in known]
    assert len(rows) == 1 and rows[0]["status"] == "closed", rows  # not left for 600 s
    assert ledger(net)["escrow"] == 0.0


def test_a_killed_provider_is_replaced_and_the_call_runs_there(tmp_path: Any) -> None:
    network = Network(tmp_path)
    try:
        first = network.start_provider(extra=["--warm", "0"])
        network.start_provider(bootstrap=first["addr"], extra=["--warm", "0"])
        procs = {p["peer_id"]: p["proc"] for p in network.providers}
        fn = remote(cpus=1, keep_warm=60, echo=False, home=network.root / "req",
                    config=os.devnull, bootstrap=[first["addr"]])(seen)

        async def main() -> None:
            async with Requester(home=network.root / "req", config=os.devnull,
                                 bootstrap=[first["addr"]]) as r:
                assert await fn.remote.aio(1) == (1, 1)
                assert await fn.remote.aio(2) == (2, 4)
                held = next(iter(sessions_of(r)._held.values()))
                one = held.instance.session.ad.peer_id
                killer = threading.Timer(
                    1.0, lambda: os.killpg(procs[one].pid, signal.SIGKILL))
                killer.start()
                await trio.sleep(2.0)
                # the next call meets the loss; it runs on the other provider, afresh
                assert await fn.remote.aio(3) == (1, 9)
                assert held.instance.session.ad.peer_id != one
                assert held.instance.restarts == 1 and sessions_of(r).opened == 1
        trio.run(main)
    finally:
        network.close()
