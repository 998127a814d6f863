"""Network namespaces for NAT tests: a public bridge and home networks behind NAT routers.

    wan        bridge br0 on 198.51.100.0/24 (TEST-NET-2): the "internet"
    public(n)  a host on the bridge: 198.51.100.1, .2, ... .9
    home(n)    router N (WAN 198.51.100.(10+N), LAN 10.77.N.1/24), host 10.77.N.2 behind it

NAT "cone": nftables `masquerade`, which keeps the source port when it can (an
endpoint-independent mapping); "symmetric": `masquerade random` (a new port per
connection). Both let in only conntrack replies: unsolicited inbound is dropped.

Every veth is created straight inside its namespaces, so the root namespace never sees
one. Names are `ROOT<pid>-<tag><random>-<node>`: parallel runs never collide, and
`sweep_stale()` removes what a run that died left behind. `close()` kills every process
inside and deletes every namespace, also after a half-built topology.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

ROOT = "onat"
"""Namespace names start with ROOT followed by the creating pid."""
WAN_NET = "198.51.100"
MAX_PUBLIC = 9
"""Public hosts take .1 to .9; routers take .11 and up."""
MAX_NAMESPACES = 9
"""A ceiling on one topology (wan + hosts + routers), to keep tests light."""
GRACE_S = 0.5
"""How long close() waits after SIGTERM before SIGKILL."""
CMD_TIMEOUT_S = 20.0
Nat = Literal["cone", "symmetric"]

_NAME = re.compile(r"[a-z][a-z0-9]{0,11}")
_RULES = """
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
"""


class TopologyError(RuntimeError):
    """A command that builds or removes the topology failed; the message has its stderr."""


def sh(*cmd: str, input: str | None = None, check: bool = True,
       timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in the root namespace (text, captured); TopologyError if it fails."""
    try:
        res = subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                             timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TopologyError(f"{' '.join(cmd)}: {exc}") from exc
    if check and res.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res


def nft_rules(nat: Nat) -> str:
    """The nftables ruleset of a home router in mode `nat`."""
    return _RULES.format(masq="masquerade random" if nat == "symmetric" else "masquerade")


def namespaces() -> list[str]:
    """Names of all network namespaces on this machine (`ip netns list`)."""
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    """Pids of the processes inside namespace `ns` (`ip netns pids`)."""
    return [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()
            if p.isdigit()]


def _alive(pid: int) -> bool:
    """Whether `pid` exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pids: Sequence[int], groups: Sequence[int], sig: signal.Signals) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_all(nss: Sequence[str], procs: Sequence[subprocess.Popen[Any]] = (),
             grace_s: float = GRACE_S) -> None:
    """SIGTERM the process groups of `procs` (started with start_new_session) and every
    process inside namespaces `nss`; SIGKILL what is still there after `grace_s`."""
    def inside() -> list[int]:
        return [p for ns in nss for p in ns_pids(ns) if _alive(p)]

    groups = [p.pid for p in procs if p.poll() is None]
    pids = inside()
    if not pids and not groups:
        return
    _signal(pids, groups, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (pids := inside()) or any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    else:
        return
    for _ in range(10):
        _signal(pids, [p.pid for p in procs if p.poll() is None], signal.SIGKILL)
        time.sleep(0.02)
        if not (pids := inside()) and all(p.poll() is not None for p in procs):
            return


def pid_of(ns: str, root: str = ROOT) -> int | None:
    """The creating pid encoded in namespace name `ns`, or None if it is not one of ours."""
    if not ns.startswith(root):
        return None
    head = ns[len(root):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def sweep_stale(root: str = ROOT) -> list[str]:
    """Delete namespaces named `root<pid>-...` whose pid is dead (left by a crashed run),
    after killing what runs inside; returns their names."""
    stale = [ns for ns in namespaces()
             if (pid := pid_of(ns, root)) is not None and not _alive(pid)]
    kill_all(stale)
    for ns in stale:
        sh("ip", "netns", "del", ns, check=False)
    return stale


def available() -> str | None:
    """None when NAT tests can run here, else why not (a reason for pytest.skip)."""
    if os.geteuid() != 0:
        return "NAT tests need root (ip netns, nftables)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"NAT tests need `{tool}` (apt-get install {pkg})"
    probe = f"{ROOT}{os.getpid()}-probe{secrets.token_hex(2)}"
    peer = probe + "b"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "add", peer)
        sh("ip", "-n", probe, "link", "set", "lo", "up")
        sh("ip", "-n", probe, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", probe, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0",
           "netns", peer)
        sh("ip", "netns", "exec", probe, "nft", "-f", "-", input=nft_rules("symmetric"))
        sh("nsenter", f"--net=/run/netns/{probe}", "--", "true")
    except TopologyError as exc:
        return f"cannot build network namespaces with nftables NAT here: {exc}"
    finally:
        for ns in (probe, peer):
            sh("ip", "netns", "del", ns, check=False)
    return None


class Node:
    """A host in namespace `ns` at address `ip`; a home host has `router` (its NAT router,
    whose `ip` is the WAN address the internet sees)."""

    def __init__(self, topology: Topology, ns: str, ip: str,
                 router: Node | None = None) -> None:
        self.topology = topology
        self.ns = ns
        self.ip = ip
        self.router = router

    def __repr__(self) -> str:
        return f"Node({self.ns!r}, {self.ip!r})"

    @property
    def router_ip(self) -> str | None:
        """The WAN address of this host's NAT router (None on a public host or router)."""
        return self.router.ip if self.router else None

    @property
    def wrap(self) -> list[str]:
        """The prefix that runs a command in here. nsenter, not `ip netns exec`: that one
        mounts a fresh /sys without the cgroup tree (a sandbox there finds no cgroups)."""
        return ["nsenter", f"--net=/run/netns/{self.ns}", "--"]

    def run(self, *cmd: str | Sequence[str], timeout: float = CMD_TIMEOUT_S,
            check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (strings, or one list) in here to completion: text output captured,
        killed after `timeout` (subprocess.TimeoutExpired); CalledProcessError if `check`."""
        argv = [*self.wrap, *_argv(cmd)]
        kw.setdefault("capture_output", not ({"stdout", "stderr"} & kw.keys()))
        kw.setdefault("text", True)
        res: subprocess.CompletedProcess[str] = subprocess.run(argv, timeout=timeout,
                                                               check=check, **kw)
        return res

    def spawn(self, *cmd: str | Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start `cmd` in here, in a process group of its own; close() kills it."""
        return self.topology._track(subprocess.Popen([*self.wrap, *_argv(cmd)],
                                                     start_new_session=True, **popen))


def _argv(cmd: Sequence[str | Sequence[str]]) -> list[str]:
    out: list[str] = []
    for part in cmd:
        out.extend([part] if isinstance(part, str) else part)
    return out


class Topology:
    """Namespaces for one test: add hosts with public() and home(); close() (or leaving
    the with block) kills every process inside and deletes them all."""

    def __init__(self, tag: str = "t", *, root: str = ROOT) -> None:
        if not re.fullmatch(r"[a-z0-9]{1,6}", tag):
            raise ValueError(f"tag {tag!r}: use 1-6 lowercase letters or digits")
        self.prefix = f"{root}{os.getpid()}-{tag}{secrets.token_hex(2)}"
        """Every namespace of this topology is named `prefix-<node>`."""
        self.made: list[str] = []
        """Namespaces created, in order (close() deletes them)."""
        self.procs: list[subprocess.Popen[Any]] = []
        self.nodes: dict[str, Node] = {}
        self._public = 0
        self._homes = 0
        try:
            self.wan = self._ns("wan")
            """The namespace holding bridge br0."""
            self._ip(self.wan, "link", "add", "br0", "type", "bridge")
            self._ip(self.wan, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except TopologyError:
            pass  # the test's own exception matters more; close() did all it could

    def public(self, name: str) -> Node:
        """A host on the bridge at the next address 198.51.100.1, .2, ... (at most 9)."""
        self._check(name, hosts=1)
        if self._public >= MAX_PUBLIC:
            raise ValueError(f"at most {MAX_PUBLIC} public hosts")
        self._public += 1
        ip = f"{WAN_NET}.{self._public}"
        ns = self._ns(name)
        self._plug(ns, "eth0", ip)
        self._ip(ns, "route", "add", "default", "dev", "eth0")  # the "internet" is on-link
        return self._node(name, Node(self, ns, ip))

    def home(self, name: str, nat: Nat = "cone") -> Node:
        """A host 10.77.N.2 behind its own NAT router N (WAN 198.51.100.(10+N)); the
        router is `node.router`, named `rN`."""
        if nat not in ("cone", "symmetric"):
            raise ValueError(f"nat {nat!r}: use 'cone' or 'symmetric'")
        self._check(name, hosts=2)
        self._homes += 1
        n = self._homes
        wan_ip, lan = f"{WAN_NET}.{10 + n}", f"10.77.{n}"
        router = self._ns(f"r{n}")
        host = self._ns(name)
        self._plug(router, "wan0", wan_ip)
        self._ip(router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
                 "netns", host)
        for ns, dev, addr in ((router, "lan0", f"{lan}.1"), (host, "eth0", f"{lan}.2")):
            self._ip(ns, "addr", "add", f"{addr}/24", "dev", dev)
            self._ip(ns, "link", "set", dev, "up")
        self._ip(host, "route", "add", "default", "via", f"{lan}.1")
        self._exec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._exec(router, "nft", "-f", "-", input=nft_rules(nat))
        gw = self._node(f"r{n}", Node(self, router, wan_ip))
        return self._node(name, Node(self, host, f"{lan}.2", router=gw))

    def stop(self, proc: subprocess.Popen[Any], grace_s: float = 2.0) -> int:
        """SIGTERM `proc`'s process group, SIGKILL after `grace_s`; returns its exit code."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if proc.poll() is None:
                _signal([], [proc.pid], sig)
            try:
                return proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        raise TopologyError(f"pid {proc.pid} survived SIGKILL")

    def close(self) -> None:
        """Kill every spawned process group and whatever else runs inside our namespaces
        (SIGTERM, SIGKILL after GRACE_S), then delete the namespaces (their veths go with
        them). Safe to call again; TopologyError if something could not be removed."""
        kill_all(self.made, self.procs)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        left = [p.pid for p in self.procs if p.poll() is None]
        self.procs = [p for p in self.procs if p.poll() is None]
        for ns in reversed(self.made):
            sh("ip", "netns", "del", ns, check=False)
        existing = set(namespaces())
        self.made = [ns for ns in self.made if ns in existing]
        if left or self.made:
            raise TopologyError(f"close() left processes {left}, namespaces {self.made}")
        self.nodes.clear()

    # -- building blocks ------------------------------------------------------------------

    def _check(self, name: str, hosts: int) -> None:
        if not _NAME.fullmatch(name) or name == "wan" or re.fullmatch(r"r\d+", name):
            raise ValueError(f"node name {name!r}: 1-12 lowercase letters/digits, not "
                             f"'wan' or 'rN'")
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists already")
        if len(self.made) + hosts > MAX_NAMESPACES:
            raise ValueError(f"a topology holds at most {MAX_NAMESPACES} namespaces")

    def _node(self, name: str, node: Node) -> Node:
        self.nodes[name] = node
        return node

    def _track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.procs.append(proc)
        return proc

    def _ns(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        sh("ip", "netns", "add", ns)
        self.made.append(ns)
        self._ip(ns, "link", "set", "lo", "up")
        return ns

    def _plug(self, ns: str, dev: str, ip: str) -> None:
        """A veth from bridge br0 (port pK in wan) to `dev` in `ns`, with address `ip`."""
        port = f"p{len(self.made)}"
        self._ip(self.wan, "link", "add", port, "type", "veth", "peer", "name", dev,
                 "netns", ns)
        self._ip(self.wan, "link", "set", port, "master", "br0")
        self._ip(self.wan, "link", "set", port, "up")
        self._ip(ns, "addr", "add", f"{ip}/24", "dev", dev)
        self._ip(ns, "link", "set", dev, "up")

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        sh("ip", "-n", ns, *args)

    @staticmethod
    def _exec(ns: str, *cmd: str, input: str | None = None) -> None:
        sh("ip", "netns", "exec", ns, *cmd, input=input)
