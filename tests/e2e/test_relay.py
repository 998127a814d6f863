"""Relays on loopback, as real processes: a provider that says it is private is reached only
through its relay, runs a job whose signed result verifies, finds more relays in the DHT,
and moves to another when one dies. (The NATs themselves: tests/e2e/nat/.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from node.localnet import LocalProvider
from tests.e2e.conftest import Network

NO_PUNCH = {"OFFLOAD_HOLE_PUNCH": "off"}
"""On loopback a hole punch always works, racing the job stream: a test of the relayed
route turns punching off on the provider (so a requester's DCUtR finds no one to answer)."""
MOVE_BOUND_S = 30.0
"""A provider whose relay died holds a new reservation within this (checks run every 2 s)."""


def status(network: Network, name: str) -> dict[str, Any]:
    res = network.offload("status", "--json", home=name, check=True)
    doc: dict[str, Any] = json.loads(res.stdout)
    return doc


def wait_status(network: Network, name: str, ok: Any, *, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        doc = status(network, name)
        if ok(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


def test_a_private_provider_is_reached_only_through_its_relay(network: Network) -> None:
    relay = network.net.relay("r1")
    assert relay.info["relay"] is True
    p = network.start_provider(bootstrap=relay.addr, extra=["--reachability", "private"],
                               env=NO_PUNCH)
    assert p["addrs"] and all(f"/p2p/{relay.peer_id}/p2p-circuit/p2p/{p['peer_id']}" in a
                              for a in p["addrs"])  # no direct address is advertised
    doc = status(network, "p1")
    assert doc["reachability"] == "private" and doc["relays"] == [relay.peer_id]
    (network.root / "job.py").write_text("print('through the relay')\n")
    res = network.offload("submit", "job.py", "--bootstrap", relay.addr, "--timeout", "60",
                          "--out", "res", "--json", check=True)
    out = json.loads(res.stdout)
    assert out["provider"] == p["peer_id"] and out["stdout"] == "through the relay\n"
    assert out["route"] == "relayed"
    check = network.offload("verify", "res/result.msgpack")
    assert check.returncode == 0, check.stdout + check.stderr


BIG_OUTPUT = ("import os\n"
              "os.makedirs('out', exist_ok=True)\n"
              "open('out/big.bin', 'wb').write(os.urandom(6 * 2**20))\n"
              "print('made')\n")


def test_big_outputs_of_a_relayed_job_move_to_a_direct_connection(network: Network) -> None:
    """The job's stream runs through a relay that carries 2 MiB per circuit (small inputs do
    not wait); its 6 MiB of outputs wait for the hole punch and come over the direct
    connection. (Through the relay they would break the circuit: see the canary.)"""
    relay = network.net.relay("r1", extra=["--circuit-mib", "2"])
    p = network.start_provider(bootstrap=relay.addr, extra=["--reachability", "private"])
    (network.root / "big.py").write_text(BIG_OUTPUT)
    for attempt in range(3):  # on loopback the punch can win the race to the job stream:
        res = network.offload("submit", "big.py", "--bootstrap", relay.addr, "--timeout",
                              "60", "--out", "res", "--json", home=f"requester{attempt}")
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout)
        if out["route"] == "relayed":  # then this run did not test the move: again
            break
    assert out["provider"] == p["peer_id"] and out["stdout"] == "made\n"
    assert (out["route"], out["output_route"]) == ("relayed", "direct"), out
    got = (network.root / "res" / "big.bin").read_bytes()
    assert len(got) == 6 * 2**20 and hashlib.sha256(got).hexdigest() == out["outputs"]["big.bin"]
    assert "fetches the outputs on a new stream" in p["log"].read_text()
    check = network.offload("verify", "res/result.msgpack")
    assert check.returncode == 0, check.stdout + check.stderr


def test_canary_outputs_that_stay_on_the_relayed_stream_break_a_small_circuit(
        network: Network) -> None:
    """The same job and relay, the requester as it was before `fetch_outputs` (outputs of
    any size follow the job stream): the relay cuts the circuit and the job fails."""
    relay = network.net.relay("r1", extra=["--circuit-mib", "2"])
    network.start_provider(bootstrap=relay.addr, extra=["--reachability", "private"],
                           env=NO_PUNCH)
    (network.root / "big.py").write_text(BIG_OUTPUT)
    cmd = network.net.command(network.root / "requester", "submit", "big.py", "--bootstrap",
                              relay.addr, "--timeout", "60", "--out", "res", "--json",
                              entry=("tests.e2e.faulty", "stay"))
    res = subprocess.run(cmd, cwd=network.root, env=network.net.env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode != 0, res.stdout
    assert not (network.root / "res" / "big.bin").exists()
    assert "closed the stream" in res.stderr, res.stderr  # the relay cut the circuit


def test_a_public_provider_advertises_its_own_address(network: Network) -> None:
    """AutoNAT against the relay (a fresh dial-back on loopback) says public: no relay."""
    relay = network.net.relay("r1")
    p = network.start_provider(bootstrap=relay.addr)
    doc = wait_status(network, "p1", lambda d: d["reachability"] != "unknown", within_s=20)
    assert doc["reachability"] == "public" and doc["relays"] == []
    assert not any("/p2p-circuit" in a for a in p["addrs"])


def _relays(network: Network, n: int) -> list[LocalProvider]:
    first = network.net.relay("r1")
    return [first, *(network.net.relay(f"r{i + 2}", bootstrap=first.addr)
                     for i in range(n - 1))]


def test_a_provider_finds_relays_in_the_dht_and_moves_when_one_dies(network: Network) -> None:
    relays = _relays(network, 3)
    by_id = {r.peer_id: r for r in relays}
    p = network.start_provider(bootstrap=relays[0].addr, extra=["--reachability", "private"])
    doc = wait_status(network, "p1", lambda d: len(d["relays"]) == 2, within_s=30)
    assert len(doc["relays"]) == 2, doc  # the bootstrap relay, and one found in the DHT
    assert set(doc["relays"]) <= set(by_id)
    gone = next(r for r in doc["relays"] if r != relays[0].peer_id)
    spare = next(r for r in by_id if r not in doc["relays"])
    network.net.stop(by_id[gone], grace_s=0)
    killed = time.monotonic()
    doc = wait_status(network, "p1", lambda d: spare in d["relays"], within_s=MOVE_BOUND_S)
    moved_s = time.monotonic() - killed
    assert spare in doc["relays"] and gone not in doc["relays"], doc
    assert moved_s < MOVE_BOUND_S
    assert all(gone not in a for a in doc["addrs"])
    (network.root / "job.py").write_text("print('moved')\n")
    res = network.offload("submit", "job.py", "--bootstrap", by_id[spare].addr,
                          "--provider", p["peer_id"], "--timeout", "60", "--json", check=True)
    assert json.loads(res.stdout)["stdout"] == "moved\n"


def test_a_public_provider_relays_for_a_private_one(network: Network) -> None:
    """`provide --relay-service`: a public provider is also a relay, found at bootstrap."""
    public = network.start_provider(extra=["--relay-service"])
    private = network.start_provider(bootstrap=public["addr"],
                                     extra=["--reachability", "private"], env=NO_PUNCH)
    assert all(f"/p2p/{public['peer_id']}/p2p-circuit" in a for a in private["addrs"])
    doc = status(network, "p2")
    assert doc["relays"] == [public["peer_id"]]
    text = network.offload("status", home="p2", check=True).stdout
    assert f"reachable:    private via relay {public['peer_id'][:16]}" in text
    (network.root / "job.py").write_text("print('relayed by a provider')\n")
    res = network.offload("submit", "job.py", "--bootstrap", public["addr"], "--provider",
                          private["peer_id"], "--timeout", "60", "--json", check=True)
    out = json.loads(res.stdout)
    assert out["stdout"] == "relayed by a provider\n" and out["route"] == "relayed"
    assert "reachability private, relays" in Path(private["log"]).read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_restarted_relay_is_reserved_again_at_once(network: Network) -> None:
    """Its only relay restarts (same identity and address): the provider does not wait out
    RELAY_RETRY_S (30 s) before reserving again."""
    listen = f"/ip4/127.0.0.1/tcp/{_free_port()}"
    relay = network.net.relay("r1", listen=listen)
    network.start_provider(bootstrap=relay.addr, extra=["--reachability", "private"])
    assert status(network, "p1")["relays"] == [relay.peer_id]
    network.net.stop(relay, grace_s=0)
    wait_status(network, "p1", lambda d: d["relays"] == [], within_s=15)
    restarted = network.net.relay("r1", listen=listen)
    assert restarted.peer_id == relay.peer_id
    back = time.monotonic()
    doc = wait_status(network, "p1", lambda d: d["relays"] == [relay.peer_id], within_s=25)
    assert doc["relays"] == [relay.peer_id] and time.monotonic() - back < 20, doc
