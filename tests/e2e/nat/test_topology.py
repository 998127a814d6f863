"""The namespaces behave as the NATs they stand for, and leave nothing behind."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.e2e.nat.topology import Node, Topology, namespaces, run, unavailable

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8); print("up", flush=True)
while True:
    c, addr = s.accept(); c.sendall(f"{addr[0]}:{addr[1]}".encode()); c.close()
"""
CLIENT = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if len(sys.argv) > 3: s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(100).decode())
except OSError as e:
    print("fail", e)
"""


def serve(node: Node, port: int) -> subprocess.Popen[str]:
    proc = node.spawn([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE,
                      text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def connect(node: Node, ip: str, port: int, source_port: int | None = None) -> str:
    args = [sys.executable, "-c", CLIENT, ip, str(port)]
    if source_port is not None:
        args.append(str(source_port))
    return node.run(*args).stdout.strip()


def test_a_home_reaches_the_internet_as_its_router(topology: Topology) -> None:
    pub = topology.public("pub")
    home = topology.home("home")
    serve(pub, 7000)
    seen = connect(home, pub.ip, 7000)
    assert seen.split(":")[0] == home.router_ip  # type: ignore[attr-defined]


def test_unsolicited_inbound_is_dropped(topology: Topology) -> None:
    pub = topology.public("pub")
    other = topology.public("other")
    home = topology.home("home")
    serve(home, 7001)
    serve(other, 7001)
    assert connect(pub, other.ip, 7001).startswith(pub.ip)  # canary: a listener is seen
    assert connect(pub, home.router_ip, 7001).startswith("fail")  # type: ignore[attr-defined]
    assert connect(pub, home.ip, 7001).startswith("fail")  # no route into the LAN


@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_mapping_cone_keeps_the_port_symmetric_does_not(topology: Topology, nat: str) -> None:
    a, b = topology.public("a"), topology.public("b")
    home = topology.home("home", nat=nat)  # type: ignore[arg-type]
    serve(a, 7002)
    serve(b, 7002)
    ports = {int(connect(home, a.ip, 7002, 45000).split(":")[1]),
             int(connect(home, b.ip, 7002, 45000).split(":")[1])}
    if nat == "cone":
        assert ports == {45000}  # endpoint-independent: one mapping for every peer
    else:
        assert 45000 not in ports or len(ports) == 2


def test_everything_is_removed_even_after_a_failure() -> None:
    why = unavailable()
    if why is not None:
        pytest.skip(why)
    links_before = run("ip", "-o", "link").stdout.count("\n")
    with pytest.raises(RuntimeError), Topology("fail") as t:
        t.public("pub")
        home = t.home("home")
        proc = home.spawn(["sleep", "300"])
        made = list(t.made)
        assert set(made) <= set(namespaces())  # canary: the probe sees them while they live
        raise RuntimeError("a test failing midway")
    assert not set(made) & set(namespaces())
    deadline = time.monotonic() + 5
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is not None
    assert run("ip", "-o", "link").stdout.count("\n") == links_before
