"""Real node processes across NATs: a relay and a requester on the public bridge, a
provider behind one home router, another requester behind a second one.

Shown: AutoNAT tells the provider it is private, it reserves a relay slot and advertises
only circuit addresses; it is found through the DHT and runs jobs whose signed results
verify; behind cone NATs hole punching gives a direct connection, behind a symmetric NAT
the job still completes over the relay; when a relay dies the provider moves to another.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from node.localnet import LocalProvider
from tests.e2e.conftest import Network
from tests.e2e.nat.netns import Node, Topology

BULK = 5 * 1024 * 1024
"""Inputs or outputs above the relay's bulk threshold (4 MiB): they wait for a direct
connection."""
MOVE_BOUND_S = 30.0


def offload_in(network: Network, node: Node, *args: str, home: str,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One `offload` command run to completion inside `node`'s namespace."""
    cmd = [*node.wrap, *network.net.command(network.root / home, *args)]
    proc: subprocess.Popen[str] = network.net.spawn(cmd, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"offload {' '.join(args)} hung in {node.ns}:\n{err}") from None
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert res.returncode == 0, f"offload {' '.join(args)} in {node.ns}: {err[-3000:]}"
    return res


def relay(network: Network, node: Node, name: str, bootstrap: str = "") -> LocalProvider:
    return network.net.relay(name, listen=f"/ip4/{node.ip}/tcp/4001", wrap=node.wrap,
                             bootstrap=bootstrap or ())


def provider(network: Network, node: Node, bootstrap: str) -> LocalProvider:
    return network.net.start("prov", bootstrap=bootstrap, listen=f"/ip4/{node.ip}/tcp/4001",
                             wrap=node.wrap, extra=["--warm", "0"])


def status(network: Network) -> dict[str, Any]:
    res = network.offload("status", "--json", home="prov", check=True)
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def wait_status(network: Network, ok: Any, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while not ok(doc := status(network)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return doc


def submit(network: Network, node: Node, home: str, bootstrap: str,
           bulk: bool = False, big_output: bool = False) -> dict[str, Any]:
    job = network.root / f"{home}-job.py"
    job.write_text("import os\nprint('ran', sorted(os.listdir('.')))\n" + (
        f"os.makedirs('out', exist_ok=True)\nopen('out/big', 'wb').write(b'o' * {BULK})\n"
        if big_output else ""))
    args = ["submit", str(job), "--bootstrap", bootstrap, "--timeout", "90", "--json",
            "--out", str(network.root / f"{home}-out")]
    if bulk:
        data = network.root / f"{home}-data.bin"
        data.write_bytes(b"\x07" * BULK)
        args += ["--file", str(data)]
    doc: dict[str, Any] = json.loads(offload_in(network, node, *args, home=home).stdout)
    assert doc["status"] == "ok" and doc["verified"] is True, doc
    if big_output:
        assert (network.root / f"{home}-out" / "big").stat().st_size == BULK
    check = network.offload("verify", str(network.root / f"{home}-out" / "result.msgpack"))
    assert check.returncode == 0, check.stdout + check.stderr
    return doc


def circuit_only(addrs: list[str], peer_id: str) -> bool:
    return bool(addrs) and all(a.endswith(f"/p2p-circuit/p2p/{peer_id}") and "/10.77." not in a
                               for a in addrs)


def test_cone_nats_a_provider_at_home_is_found_runs_jobs_and_is_hole_punched(
        topology: Topology, network: Network) -> None:
    pub_relay, pub_req = topology.public("relay"), topology.public("req")
    home1, home2 = topology.home("home1", "cone"), topology.home("home2", "cone")
    r = relay(network, pub_relay, "r1")
    p = provider(network, home1, r.addr)
    assert circuit_only(p.info["addrs"], p.peer_id), p.info  # no private address
    doc = status(network)
    assert doc["reachability"] == "private" and doc["relays"] == [r.peer_id], doc

    offers = offload_in(network, pub_req, "offers", "--bootstrap", r.addr, "--json",
                        "--fresh", home="req")
    ads = {a["peer_id"]: a for a in json.loads(offers.stdout)}
    assert p.peer_id in ads, offers.stderr
    assert circuit_only(ads[p.peer_id]["addrs"], p.peer_id)

    first = submit(network, pub_req, "req", r.addr)
    assert first["provider"] == p.peer_id and first["stdout"].startswith("ran")

    behind = submit(network, home2, "req2", r.addr, bulk=True)
    assert behind["provider"] == p.peer_id
    assert behind["route"] == "direct", behind  # the hole punch
    moved = submit(network, home2, "req3", r.addr, big_output=True)
    # small inputs go through the relay at once; the big outputs wait for the hole punch
    assert (moved["route"], moved["output_route"]) == ("relayed", "direct"), moved
    doc = wait_status(network, lambda d: d["direct_upgrades"] >= 1, within_s=10)
    assert doc["direct_upgrades"] >= 1


def test_symmetric_nat_the_job_completes_over_the_relay(topology: Topology,
                                                        network: Network) -> None:
    pub_relay = topology.public("relay")
    home1, home2 = topology.home("home1", "symmetric"), topology.home("home2", "cone")
    r = relay(network, pub_relay, "r1")
    p = provider(network, home1, r.addr)
    assert circuit_only(p.info["addrs"], p.peer_id)
    doc = submit(network, home2, "req2", r.addr, bulk=True, big_output=True)
    assert doc["provider"] == p.peer_id
    # no hole through a symmetric NAT: inputs and outputs wait, then go through the relay
    assert (doc["route"], doc["output_route"]) == ("relayed", "relayed"), doc


def test_the_provider_moves_to_another_relay_when_its_relay_dies(topology: Topology,
                                                                 network: Network) -> None:
    nodes = [topology.public(f"relay{i}") for i in range(3)]
    pub_req = topology.public("req")
    home1 = topology.home("home1", "cone")
    first = relay(network, nodes[0], "r1")
    relays = [first, *(relay(network, n, f"r{i + 2}", bootstrap=first.addr)
                       for i, n in enumerate(nodes[1:]))]
    by_id = {x.peer_id: x for x in relays}
    p = provider(network, home1, first.addr)
    doc = wait_status(network, lambda d: len(d["relays"]) == 2, within_s=30)
    assert len(doc["relays"]) == 2, doc
    gone = next(x for x in doc["relays"] if x != first.peer_id)
    spare = next(x for x in by_id if x not in doc["relays"])
    network.net.stop(by_id[gone], grace_s=0)
    killed = time.monotonic()
    doc = wait_status(network, lambda d: spare in d["relays"], within_s=MOVE_BOUND_S)
    assert spare in doc["relays"] and gone not in doc["relays"], doc
    assert time.monotonic() - killed < MOVE_BOUND_S
    job = submit(network, pub_req, "req", by_id[spare].addr)
    assert job["provider"] == p.peer_id


def test_the_fast_lane_is_not_offered_from_behind_a_nat(topology: Topology) -> None:
    """A lane listener behind a NAT would cost the sender CONNECT_S before falling back."""
    pub, home = topology.public("pub"), topology.home("home")
    probe = "import sys; from node.net.lane import behind_nat_from as b; print(b(sys.argv[1]))"
    import sys

    def ask(node: Node, peer: str) -> str:
        return node.run(sys.executable, "-c", probe, peer).stdout.strip()

    assert ask(home, pub.ip) == "True"
    assert ask(pub, home.router_ip) == "False"
    assert ask(home, "127.0.0.1") == "False"
