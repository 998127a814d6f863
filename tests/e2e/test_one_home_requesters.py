"""Several requester processes on one home at once: ledger, leases, holds, peers file and
result dirs stay consistent. Real processes."""

from __future__ import annotations

import json

from tests.e2e.conftest import Network

PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"


def test_four_parallel_submits_from_one_home_all_succeed(network: Network) -> None:
    (network.root / "priced.toml").write_text(PRICED)
    (network.root / "sq.py").write_text("import sys\nprint(int(sys.argv[-1]) ** 2)\n")
    p = network.start_provider(extra=["--config", str(network.root / "priced.toml"),
                                      "--slots", "3"])  # + 1 warm: the 4 job users
    network.offload("ledger", "deposit", "5", check=True)
    procs = [network.offload_async("submit", "sq.py", str(n), "--bootstrap", p["addr"],
                                   "--timeout", "60", "--json") for n in range(4)]
    docs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        docs.append(json.loads(out))
    assert sorted(d["stdout"] for d in docs) == ["0\n", "1\n", "4\n", "9\n"]
    assert len({d["out_dir"] for d in docs}) == 4
    paid = sum(round(float(d["paid"]) * 1_000_000) for d in docs)  # credit strings
    balance = json.loads(network.offload("ledger", "balance", "--json", check=True).stdout)
    assert balance["escrow"] == "0.000000"
    assert round(float(balance["paid"]) * 1_000_000) == paid
    jobs = json.loads(network.offload("jobs", "--json", check=True).stdout)
    assert sorted(j["status"] for j in jobs) == ["released"] * 4
    assert not list((network.root / "requester" / "leases").glob("*.lease"))
    verify = json.loads(network.offload("ledger", "verify", "--json", check=True).stdout)
    assert verify["valid"] is True
