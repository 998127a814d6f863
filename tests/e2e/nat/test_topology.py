"""The namespaces behave as the NATs they stand for, and leave nothing behind: plain TCP
sockets in `python -c` scripts, each probe with a timeout and a canary that it can see."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nat import netns
from tests.e2e.nat.netns import Node, Topology, TopologyError, namespaces, ns_pids, sh

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print("up", flush=True)
while True:
    c, peer = s.accept(); c.sendall(f"{peer[0]}:{peer[1]}".encode()); c.close()
"""
PROBE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if len(sys.argv) > 3: s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(float(sys.argv[4]) if len(sys.argv) > 4 else 1.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("ok", s.recv(100).decode())
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print("error", e)
"""
SRC_PORT = 45000


def serve(node: Node, port: int, host: str = "0.0.0.0") -> subprocess.Popen[str]:
    """A TCP server in `node` that answers every connection with the peer's ip:port."""
    proc: subprocess.Popen[str] = node.spawn(sys.executable, "-c", SERVER, host, str(port),
                                             stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    assert ready and proc.stdout.readline().strip() == "up", f"no server in {node.ns}"
    return proc


def probe(node: Node, ip: str, port: int, src_port: int | None = None,
          wait_s: float = 1.5) -> str:
    """'ok IP:PORT' (what the server saw), 'timeout', 'refused' or 'error ...'."""
    args = [ip, str(port), str(src_port or 0), str(wait_s)]
    res = node.run(sys.executable, "-c", PROBE, *args, timeout=wait_s + 10)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def seen(answer: str) -> tuple[str, int]:
    """The (ip, port) a server reported in an 'ok' answer."""
    assert answer.startswith("ok "), answer
    ip, port = answer[3:].split(":")
    return ip, int(port)


def links() -> set[str]:
    """Interface names in the root namespace."""
    lines = sh("ip", "-o", "link").stdout.splitlines()
    return {line.split(":")[1].strip().split("@")[0] for line in lines}


def net_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def pids_in(inodes: set[int]) -> list[int]:
    """Live processes on the machine whose network namespace is one of `inodes`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            link = os.readlink(entry / "ns" / "net")
        except OSError:
            continue
        if int(link.split("[")[1].rstrip("]")) in inodes and netns._alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.fixture
def can_build(netns_unavailable: str | None) -> None:
    """For tests that build their own Topology: skip where the fixture would."""
    if netns_unavailable is not None:
        pytest.skip(netns_unavailable)


# -- the NAT ---------------------------------------------------------------------------

@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_a_home_reaches_the_internet_as_its_router(topology: Topology, nat: Any) -> None:
    pub, home = topology.public("pub"), topology.home("home", nat)
    assert home.router is not None and home.router_ip == "198.51.100.11"
    assert (pub.ip, home.ip) == ("198.51.100.1", "10.77.1.2")
    serve(pub, 7000)
    ip, _ = seen(probe(home, pub.ip, 7000))
    assert ip == home.router_ip  # masqueraded, not 10.77.1.2
    assert seen(probe(pub, pub.ip, 7000))[0] == pub.ip  # a public host is seen as itself


@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_unsolicited_inbound_is_dropped(topology: Topology, nat: Any) -> None:
    pub, other, home = topology.public("pub"), topology.public("other"), topology.home(
        "home", nat)
    serve(other, 7001)
    serve(home, 7001)
    assert seen(probe(pub, other.ip, 7001))[0] == pub.ip  # canary: a listener is found
    assert home.router is not None
    assert seen(probe(home.router, home.ip, 7001))[0] == "10.77.1.1"  # home one listens
    assert probe(pub, str(home.router_ip), 7001) == "timeout"  # dropped, not even refused
    assert not probe(pub, home.ip, 7001, wait_s=1).startswith("ok")  # no way into the LAN
    # nor for a neighbour that routes the LAN through the router: forwarding filters it
    pub.run("ip", "route", "add", "10.77.1.0/24", "via", str(home.router_ip), check=True)
    assert probe(pub, home.ip, 7001) == "timeout"


@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_cone_keeps_the_source_port_symmetric_does_not(topology: Topology, nat: Any) -> None:
    a, b = topology.public("a"), topology.public("b")
    home = topology.home("home", nat)
    serve(a, 7002)
    serve(b, 7002)
    seen_a = seen(probe(home, a.ip, 7002, src_port=SRC_PORT))
    seen_b = seen(probe(home, b.ip, 7002, src_port=SRC_PORT))
    assert seen_a[0] == seen_b[0] == home.router_ip
    if nat == "cone":  # endpoint-independent mapping: one WAN port for every peer
        assert seen_a[1] == seen_b[1] == SRC_PORT
    else:  # a fresh random port per connection (equal by chance: ~1 in 64 000)
        assert SRC_PORT not in (seen_a[1], seen_b[1]) and seen_a[1] != seen_b[1]


def test_loopback_is_up_and_ip_forward_is_on_only_in_routers(topology: Topology) -> None:
    pub, home = topology.public("pub"), topology.home("home")
    serve(home, 7003, host="127.0.0.1")
    assert seen(probe(home, "127.0.0.1", 7003))[0] == "127.0.0.1"
    assert home.router is not None
    forward = {n.ns: n.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
               for n in (pub, home, home.router)}
    assert forward == {pub.ns: "0", home.ns: "0", home.router.ns: "1"}


def test_stop_ends_one_process_group(topology: Topology) -> None:
    pub = topology.public("pub")
    server = serve(pub, 7004)
    assert topology.stop(server) == -15
    assert probe(pub, pub.ip, 7004) == "refused"


# -- cleanup ---------------------------------------------------------------------------

def test_close_kills_everything_and_deletes_every_namespace_even_after_a_failure(
        can_build: None) -> None:
    escapee = "trap '' TERM; setsid sleep 300 & echo $!; wait"  # ignores SIGTERM, own session
    with pytest.raises(RuntimeError, match="a test failing midway"), Topology("fail") as t:
        pub, home = t.public("pub"), t.home("home", "symmetric")
        sleeper = pub.spawn("sleep", "300")
        shell = home.spawn("sh", "-c", escapee, stdout=subprocess.PIPE, text=True)
        assert shell.stdout is not None
        stray = int(shell.stdout.readline())
        made, inodes = list(t.made), {net_inode(ns) for ns in t.made}
        assert len(made) == 4 and all(ns.startswith(t.prefix + "-") for ns in made)
        # canaries: the probes see the namespaces and processes while they live
        assert set(made) <= set(namespaces())
        assert {sleeper.pid, shell.pid, stray} <= set(pids_in(inodes))
        assert stray in ns_pids(home.ns)
        raise RuntimeError("a test failing midway")
    assert not [ns for ns in namespaces() if ns.startswith(t.prefix)]
    assert sleeper.returncode is not None and shell.returncode == -9  # it ignored SIGTERM
    assert not netns._alive(stray)
    assert pids_in(inodes) == []
    t.close()  # again: nothing to do, no error


def test_close_cleans_up_a_topology_whose_building_failed_halfway(
        can_build: None, monkeypatch: pytest.MonkeyPatch) -> None:
    during: list[str] = []

    def broken(nat: Any) -> str:
        during.extend(ns for ns in namespaces() if ns.startswith(t.prefix))
        return "table ip nat { this is no ruleset"

    t = Topology("half")
    monkeypatch.setattr(netns, "nft_rules", broken)
    with pytest.raises(TopologyError, match="nft -f -"), t:
        t.public("pub")
        t.home("home")
    assert len(during) == 4  # wan, pub, router, home existed when it failed
    assert not [ns for ns in namespaces() if ns.startswith(t.prefix)]


def test_sweep_stale_removes_only_dead_runs_namespaces(can_build: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    stale = f"{netns.ROOT}{dead.pid}-swp{os.getpid() % 1000}-wan"
    live = f"{netns.ROOT}{os.getpid()}-swp-wan"
    try:
        for ns in (stale, live):
            sh("ip", "netns", "add", ns)
        left = subprocess.Popen(["nsenter", f"--net=/run/netns/{stale}", "--", "sleep", "300"],
                                start_new_session=True)
        assert netns.pid_of(stale) == dead.pid and netns.pid_of("other-ns") is None
        assert stale in netns.sweep_stale()
        names = set(namespaces())
        assert stale not in names and live in names  # ours, alive: kept
        assert left.wait(timeout=5) == -15
    finally:
        for ns in (stale, live):
            sh("ip", "netns", "del", ns, check=False)


def test_nothing_leaks_into_the_root_namespace(can_build: None) -> None:
    def state() -> tuple[set[str], str, str]:
        return (links(), sh("nft", "list", "ruleset").stdout,
                Path("/proc/sys/net/ipv4/ip_forward").read_text())

    before = state()
    with Topology("leak") as t:
        pub, cone, sym = t.public("pub"), t.home("cone"), t.home("sym", "symmetric")
        serve(pub, 7005)
        assert seen(probe(cone, pub.ip, 7005))[0] == cone.router_ip
        assert seen(probe(sym, pub.ip, 7005))[0] == sym.router_ip
        assert "eth0" in pub.run("ip", "-o", "link").stdout  # canary: the probe sees links
        assert state() == before  # veths are made inside the namespaces, never out here
    assert state() == before
