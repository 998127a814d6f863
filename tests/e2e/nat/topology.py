"""Network namespaces for NAT tests: a public bridge and home networks behind NAT routers.

    wan   bridge br0, 198.51.100.0/24 (TEST-NET-2): the "internet"
    public hosts on the bridge: 198.51.100.1, .2, ...
    home N behind router N: router WAN 198.51.100.(10+N), LAN 10.77.N.1/24, host 10.77.N.2
    NAT "cone": nftables masquerade (keeps the source port when it can: an
    endpoint-independent mapping); "symmetric": masquerade random (a new port per
    connection). Either way unsolicited inbound connections are dropped.

Names carry our pid (`oNNNNN-...`), so a sweep removes what a killed run left; every
namespace and process is removed by `close()`, also when building failed halfway.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PREFIX = "o"
WAN_NET = "198.51.100"


def run(*cmd: str, input: str | None = None, check: bool = True,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                          check=check, timeout=timeout)


def unavailable() -> str | None:
    """Why NAT tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "NAT tests need root (ip netns, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"NAT tests need `{tool}` (apt-get install iproute2 nftables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "exec", probe, "nft", "list", "ruleset")
    except (subprocess.SubprocessError, OSError) as exc:
        return f"cannot create network namespaces with nftables here: {exc}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sweep_stale() -> list[str]:
    """Delete our namespaces whose creating process is gone; returns their names."""
    gone = []
    for ns in namespaces():
        head = ns.split("-", 1)[0]
        if not (head.startswith(PREFIX) and head[len(PREFIX):].isdigit()):
            continue
        if not Path(f"/proc/{head[len(PREFIX):]}").exists():
            _kill_inside(ns)
            run("ip", "netns", "del", ns, check=False)
            gone.append(ns)
    return gone


def _kill_inside(ns: str) -> None:
    pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                pass
        if sig == signal.SIGTERM and pids:
            time.sleep(0.3)
        pids = run("ip", "netns", "pids", ns, check=False).stdout.split()


@dataclass
class Node:
    """A host in a namespace; `wrap` prefixes a command to run it there."""

    ns: str
    ip: str
    topology: Topology = field(repr=False)

    @property
    def wrap(self) -> list[str]:
        """nsenter, not `ip netns exec`: that one mounts a fresh /sys without the cgroup
        tree, and a provider there finds no cgroups for its sandbox."""
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--"]

    def run(self, *cmd: str, timeout: float = 20,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.wrap, *cmd, check=check, timeout=timeout)

    def spawn(self, cmd: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start `cmd` here in its own process group; close() kills it."""
        proc: subprocess.Popen[Any] = subprocess.Popen([*self.wrap, *cmd],
                                                       start_new_session=True, **popen)
        self.topology.procs.append(proc)
        return proc


class Topology:
    """Build with public() and home(); close() (or leaving the with block) removes it."""

    def __init__(self, tag: str = "t") -> None:
        self.tag = f"{PREFIX}{os.getpid()}-{tag}"[:10]
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._public = 0
        self._homes = 0
        self._links = 0
        try:
            self.wan = self._ns("wan")
            self._x(self.wan, "ip", "link", "add", "br0", "type", "bridge")
            self._x(self.wan, "ip", "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ns(self, name: str) -> str:
        ns = f"{self.tag}-{name}"
        run("ip", "netns", "add", ns)
        self.made.append(ns)
        self._x(ns, "ip", "link", "set", "lo", "up")
        return ns

    @staticmethod
    def _x(ns: str, *cmd: str, input: str | None = None) -> None:
        run("ip", "netns", "exec", ns, *cmd, input=input)

    def _link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        self._links += 1
        ta, tb = f"v{os.getpid() % 100000}a{self._links}", f"v{os.getpid() % 100000}b{self._links}"
        run("ip", "link", "add", ta, "type", "veth", "peer", "name", tb)
        run("ip", "link", "set", ta, "netns", a)
        run("ip", "link", "set", tb, "netns", b)
        self._x(a, "ip", "link", "set", ta, "name", a_if)
        self._x(b, "ip", "link", "set", tb, "name", b_if)
        self._x(a, "ip", "link", "set", a_if, "up")
        self._x(b, "ip", "link", "set", b_if, "up")

    def public(self, name: str) -> Node:
        """A host on the public bridge."""
        self._public += 1
        ip = f"{WAN_NET}.{self._public}"
        ns = self._ns(name)
        port = f"p{len(self.made)}"
        self._link(self.wan, port, ns, "eth0")
        self._x(self.wan, "ip", "link", "set", port, "master", "br0")
        self._x(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        self._x(ns, "ip", "route", "add", "default", "dev", "eth0")  # all of it on-link
        return Node(ns, ip, self)

    def home(self, name: str, nat: Literal["cone", "symmetric"] = "cone") -> Node:
        """A host behind its own NAT router."""
        self._homes += 1
        n = self._homes
        wan_ip, lan = f"{WAN_NET}.{10 + n}", f"10.77.{n}"
        router, home = self._ns(f"r{n}"), self._ns(name)
        port = f"p{len(self.made)}"
        self._link(self.wan, port, router, "wan0")
        self._x(self.wan, "ip", "link", "set", port, "master", "br0")
        self._x(router, "ip", "addr", "add", f"{wan_ip}/24", "dev", "wan0")
        self._link(router, "lan0", home, "eth0")
        self._x(router, "ip", "addr", "add", f"{lan}.1/24", "dev", "lan0")
        self._x(home, "ip", "addr", "add", f"{lan}.2/24", "dev", "eth0")
        self._x(home, "ip", "route", "add", "default", "via", f"{lan}.1")
        self._x(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        masq = "masquerade random" if nat == "symmetric" else "masquerade"
        self._x(router, "nft", "-f", "-", input=f"""
table ip nat {{
  chain postrouting {{ type nat hook postrouting priority srcnat; oifname "wan0" {masq}; }}
}}
table inet filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan0" oifname "wan0" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan0" ct state new tcp flags syn drop
  }}
}}
""")
        node = Node(home, f"{lan}.2", self)
        node.router_ip = wan_ip  # type: ignore[attr-defined]
        return node

    def close(self) -> None:
        """Kill every process started here or still inside our namespaces, then delete
        the namespaces (their veths go with them). Safe to call twice."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.made):
            _kill_inside(ns)
            run("ip", "netns", "del", ns, check=False)
        self.made.clear()
