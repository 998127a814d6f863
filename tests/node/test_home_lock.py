"""One home, one daemon: the home lock, and listen addresses that are already taken."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from node.errors import UserError
from node.home import Home, HomeLock, HomeLocked
from node.net.host import open_host
from protocol.identity import Identity

HOLD = """\
import sys, time
from pathlib import Path
from node.home import HomeLock
HomeLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(home)], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_second_lock_names_the_holder_and_dies_with_it(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        assert Home(tmp_path).lock.read_text() == f"{proc.pid}\n"
        with pytest.raises(HomeLocked, match=rf"^{tmp_path} is in use by another provider "
                           rf"\(pid {proc.pid}\); stop it first \(kill {proc.pid}\), or give "
                           "this one its own home with --home DIR$"):
            HomeLock(tmp_path).acquire(retry_s=0.2)
    finally:
        proc.kill()  # kill -9: the kernel drops the flock with its holder
        proc.wait()
    with HomeLock(tmp_path) as lock:
        assert Home(tmp_path).lock.read_text() == f"{__import__('os').getpid()}\n"
        assert lock.path == Home(tmp_path).lock


def test_lock_is_not_inherited_by_children(tmp_path: Path) -> None:
    with HomeLock(tmp_path):
        child = subprocess.Popen(["sleep", "30"])
    try:
        with HomeLock(tmp_path):  # a child of the old holder does not keep the home locked
            pass
    finally:
        child.kill()
        child.wait()


def test_canary_same_process_relock_is_refused(tmp_path: Path) -> None:
    """flock is per open file description: a second open in one process is refused too,
    so the probe above is able to see a held lock."""
    with HomeLock(tmp_path), pytest.raises(HomeLocked, match=r"\(pid \d+\)"):
        HomeLock(tmp_path).acquire(retry_s=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_two_hosts_cannot_share_a_port() -> None:
    port = _free_port()
    addr = f"/ip4/127.0.0.1/tcp/{port}"
    async with open_host(Identity.generate(), [addr]) as first:
        assert any(f"/tcp/{port}/" in a for a in first.addrs())
        with pytest.raises(UserError, match=rf"^cannot listen on {addr}: .*in use.*; stop "
                           "what listens there or pick another port"):
            async with open_host(Identity.generate(), [addr]):
                pass
        with socket.socket() as probe:  # the first host still owns the port, alone
            probe.settimeout(5)
            await trio.to_thread.run_sync(probe.connect, ("127.0.0.1", port))


async def test_a_port_held_by_another_program_is_refused() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        addr = f"/ip4/127.0.0.1/tcp/{other.getsockname()[1]}"
        with pytest.raises(UserError, match=rf"^cannot listen on {addr}: "):
            async with open_host(Identity.generate(), [addr]):
                pass


async def test_port_zero_still_listens() -> None:
    async with open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as host:
        assert host.addrs() and "/tcp/0/" not in host.addrs()[0]
