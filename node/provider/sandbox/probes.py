"""Escape probes: each runs inside the sandbox and is judged on the HOST side.

A probe is job code plus a host-side judge. The same code run without the sandbox (the
canary, in tests) must be judged "escaped", which proves the probe can catch an escape.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESOURCE_LIMITS = {"memory_mb": 256, "pids": 64, "cpus": 0.5, "disk_mb": 64, "wall_s": 3.0}


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeRun:
    """What the host saw of one probe run, sandboxed or not."""

    stdout: str
    status: str
    wall_s: float
    cpu_s: float
    limits_hit: tuple[str, ...]
    leftover: int   # processes of the probe still alive after it ended


Judge = Callable[["ProbeContext", ProbeRun], bool]   # True: escaped


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    name: str
    code: str
    judge: Judge
    resource: bool = False   # a limits probe: runs with RESOURCE_LIMITS, not in the quick self-test


class ProbeContext:
    """Host-side bait and listeners shared by one round of probes; close() removes them."""

    def __init__(self, *, key_file: Path | None, runtime_dir: Path, daemon_pid: int) -> None:
        tag = secrets.token_hex(8)
        self.tag = tag
        self.token = secrets.token_hex(16)
        self.daemon_pid = daemon_pid
        self.write_targets = {
            "write_host_tmp": Path(f"/tmp/offload-probe-{tag}"),
            "write_usr": Path(f"/usr/offload-probe-{tag}"),
            "write_etc": Path(f"/etc/offload-probe-{tag}"),
            "write_root": Path(f"/root/offload-probe-{tag}"),
            "write_runtime": runtime_dir / f"offload-probe-{tag}",
        }
        self.secret_file = Path(f"/etc/offload-probe-secret-{tag}")
        self.secret_file.write_text(self.token)
        os.chmod(self.secret_file, 0o600)
        self.key_file = key_file
        self.key_hex = key_file.read_bytes().hex() if key_file and key_file.exists() else None
        self.daemon_environ_hex = _environ_hex(daemon_pid)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.tcp.settimeout(0)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0)
        self.abstract_name = f"\0offload-probe-{tag}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind(self.abstract_name)
        self.unix.listen(16)
        self.unix.settimeout(0)
        self.marker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)",
                                        f"offload-probe-marker-{tag}"])
        self.nameserver = _nameserver()
        self._lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {"tag": self.tag, "targets": {k: str(v) for k, v in self.write_targets.items()},
                "secret_file": str(self.secret_file),
                "key_file": str(self.key_file) if self.key_file else "",
                "tcp_port": self.tcp.getsockname()[1], "udp_port": self.udp.getsockname()[1],
                "abstract": self.abstract_name[1:], "marker_pid": self.marker.pid,
                "daemon_pid": self.daemon_pid, "nameserver": self.nameserver}

    def accepted(self, sock: socket.socket) -> bool:
        with self._lock:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, OSError):
                return False
            conn.close()
            return True

    def udp_received(self) -> bool:
        with self._lock:
            try:
                self.udp.recvfrom(4096)
            except (BlockingIOError, OSError):
                return False
            return True

    def close(self) -> None:
        for path in [*self.write_targets.values(), self.secret_file]:
            try:
                path.unlink()
            except OSError:
                pass
        for s in (self.tcp, self.udp, self.unix):
            s.close()
        self.marker.kill()
        self.marker.wait()


def _environ_hex(pid: int) -> str:
    """The start of a process's environment block, as a probe would print it."""
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()[:48]
    except OSError:
        return secrets.token_hex(24)
    return data.hex() if len(data) >= 16 else secrets.token_hex(24)


def _nameserver() -> str:
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver" and ":" not in parts[1]:
                return parts[1]
    except OSError:
        pass
    return "127.0.0.53"


PRELUDE = "import json, os, socket, sys, time\nP = json.loads(sys.argv[1])\n"
EPILOGUE = "\nprint('PROBE-DONE', flush=True)\n"
DONE = "PROBE-DONE"


def _write(ctx: ProbeContext, run: ProbeRun, name: str) -> bool:
    return ctx.write_targets[name].exists()


def _wrote(name: str) -> Probe:
    code = (f"try:\n    open(P['targets'][{name!r}], 'w').write('escaped')\n"
            "except OSError as e:\n    print('blocked', e)\n")
    return Probe(name, code, lambda ctx, run: _write(ctx, run, name))


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _marker_killed(ctx: ProbeContext, run: ProbeRun) -> bool:
    return not _alive(ctx.marker.pid)


def _count(run: ProbeRun, label: str) -> int:
    """The largest number the probe printed after `label`."""
    best = 0
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == label and parts[1].isdigit():
            best = max(best, int(parts[1]))
    return best


PROBES: list[Probe] = [
    _wrote("write_host_tmp"), _wrote("write_usr"), _wrote("write_etc"), _wrote("write_root"),
    _wrote("write_runtime"),
    Probe("read_secret_0600",
          "try:\n    print('READ', open(P['secret_file']).read())\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: ctx.token in run.stdout),
    Probe("read_etc_shadow",
          "try:\n    print('READ', len(open('/etc/shadow').read()))\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: "READ " in run.stdout),
    Probe("read_identity_key",
          "try:\n    print('READ', open(P['key_file'], 'rb').read().hex())\n"
          "except (OSError, ValueError) as e:\n    print('blocked', e)\n",
          lambda ctx, run: ctx.key_hex is not None and ctx.key_hex in run.stdout),
    Probe("daemon_proc_environ",
          "try:\n    print('READ', open(f\"/proc/{P['daemon_pid']}/environ\", 'rb').read().hex())\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: ctx.daemon_environ_hex in run.stdout),
    Probe("tcp_to_host_loopback",
          "try:\n    socket.create_connection(('127.0.0.1', P['tcp_port']), timeout=1).close()\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: ctx.accepted(ctx.tcp)),
    Probe("udp_to_host_loopback",
          "try:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "    s.sendto(b'x', ('127.0.0.1', P['udp_port']))\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: ctx.udp_received()),
    Probe("abstract_unix_socket",
          "try:\n    s = socket.socket(socket.AF_UNIX)\n"
          "    s.settimeout(1)\n    s.connect('\\0' + P['abstract'])\n    s.close()\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: ctx.accepted(ctx.unix)),
    Probe("dns",
          "q = bytes.fromhex('abcd010000010000000000000470797069036f72670000010001')\n"
          "try:\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.settimeout(1.5)\n"
          "    s.sendto(q, (P['nameserver'], 53))\n    print('ANSWER', len(s.recv(512)))\n"
          "except OSError as e:\n    print('blocked', e)\n",
          lambda ctx, run: "ANSWER " in run.stdout),
    Probe("network_interfaces",
          "lines = open('/proc/net/dev').read().splitlines()[2:]\n"
          "print('IFACES', ','.join(x.split(':')[0].strip() for x in lines))\n",
          lambda ctx, run: any(n not in ("", "lo") for line in run.stdout.splitlines()
                               if line.startswith("IFACES ")
                               for n in line.split(" ", 1)[1].split(","))),
    Probe("signal_host_process",
          "import signal\nfor pid in os.listdir('/proc'):\n"
          "    if not pid.isdigit(): continue\n"
          "    try: cmd = open(f'/proc/{pid}/cmdline','rb').read()\n"
          "    except OSError: continue\n"
          "    if ('offload-probe-marker-' + P['tag']).encode() in cmd:\n"
          "        try: os.kill(int(pid), signal.SIGKILL)\n"
          "        except OSError as e: print('blocked', e)\n"
          "try:\n    os.kill(P['marker_pid'], signal.SIGKILL)\n"
          "except OSError as e:\n    print('blocked', e)\n",
          _marker_killed),
    Probe("ptrace_parent",
          "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "r = libc.ptrace(0x4206, os.getppid(), 0, 0)  # PTRACE_SEIZE: never stops the parent\n"
          "print('ATTACHED' if r == 0 else 'blocked', ctypes.get_errno())\n",
          lambda ctx, run: "ATTACHED" in run.stdout),
    Probe("nested_user_namespace",
          "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "r = libc.unshare(0x10000000)  # CLONE_NEWUSER\n"
          "print('UNSHARED' if r == 0 else 'blocked', ctypes.get_errno())\n",
          lambda ctx, run: "UNSHARED" in run.stdout),
    Probe("mount_tmpfs",
          "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
          "d = ('offload-probe-mnt-' + P['tag']).encode()\n"
          "os.makedirs(d, exist_ok=True)\n"
          "r = libc.mount(b'none', d, b'tmpfs', 0, None)\n"
          "print('MOUNTED' if r == 0 else 'blocked', ctypes.get_errno())\n"
          "if r == 0: libc.umount2(d, 2)\n"
          "os.rmdir(d)\n",
          lambda ctx, run: "MOUNTED" in run.stdout),
    Probe("fork_bomb",
          "import signal\nkids = []\n"
          "for _ in range(200):\n"
          "    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
          "    if pid == 0:\n        time.sleep(2)\n        os._exit(0)\n"
          "    kids.append(pid)\n"
          "print('FORKED', len(kids), flush=True)\n"
          "for k in kids: os.kill(k, signal.SIGKILL)\n",
          lambda ctx, run: _count(run, "FORKED") > RESOURCE_LIMITS["pids"], resource=True),
    Probe("memory_hog",
          "blocks = []\nfor i in range(16):\n"
          "    blocks.append(b'x' * (32 << 20))\n    print('MB', (i + 1) * 32, flush=True)\n",
          lambda ctx, run: _count(run, "MB") > RESOURCE_LIMITS["memory_mb"], resource=True),
    Probe("cpu_burn",
          "import multiprocessing as mp\n"
          "def burn():\n    end = time.time() + 2.5\n    while time.time() < end: pass\n"
          "ps = [mp.Process(target=burn) for _ in range(2)]\n[p.start() for p in ps]\n"
          "[p.join() for p in ps]\n",
          lambda ctx, run: run.cpu_s > RESOURCE_LIMITS["cpus"] * max(run.wall_s, 0.1) * 1.5,
          resource=True),
    Probe("hang",
          "time.sleep(30)\nprint('WOKE')\n",
          lambda ctx, run: run.status != "timeout", resource=True),
    Probe("disk_fill",
          "n = 0\ntry:\n    with open('fill', 'wb') as f:\n"
          "        for _ in range(192):\n            f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
          "except OSError as e:\n    print('blocked', e)\nprint('WROTE', n)\n",
          lambda ctx, run: _count(run, "WROTE") > RESOURCE_LIMITS["disk_mb"], resource=True),
    Probe("orphan",
          "import subprocess\n"
          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)',"
          " 'offload-probe-orphan-' + P['tag']], start_new_session=True,"
          " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('SPAWNED')\n",
          lambda ctx, run: run.leftover > 0, resource=True),
]


def leftover_processes(marker: str, uid: int | None = None) -> list[int]:
    """Live processes whose command line holds `marker` (and, if given, owned by `uid`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            owner = entry.stat().st_uid
        except OSError:
            continue
        if marker.encode() in cmd and (uid is None or owner == uid) and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found
