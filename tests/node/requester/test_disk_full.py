"""A requester home on a real, small tmpfs that fills up: one-line errors that name the
problem, a refund that failed stays pending and lands once space is back, and
`ledger balance` never advises moving a ledger that verifies."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import Ledger
from ledger.errors import LedgerUnavailable
from node.home import Home
from node.net.peers import PeerBook
from node.requester.escrows import Lease, read_leases
from node.requester.payments import Payments
from protocol import Identity, sha256_hex

ME = Identity(bytes([7]) * 32)
PROVIDER = Identity(bytes([8]) * 32).peer_id
OFFLOAD = Path(sys.executable).parent / "offload"
JOB = sha256_hex(b"job on a full disk")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def offload(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    return subprocess.run([str(OFFLOAD), "--home", str(home), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_full_disk_is_a_one_line_error_that_names_it_not_advice_to_move_the_ledger(
        small: Path) -> None:
    home = small / "home"
    assert offload(home, "ledger", "deposit", "5").returncode == 0
    filler = fill(small)
    for args in (("ledger", "balance"), ("ledger", "deposit", "1"), ("jobs",)):
        res = offload(home, *args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, res.stderr
        assert len(lines) == 1 and lines[0].startswith("offload: error: ledger "), res.stderr
        assert "the disk is full" in lines[0] and "move it aside" not in lines[0]
        assert "Traceback" not in res.stderr
    filler.unlink()
    res = offload(home, "ledger", "verify")
    assert res.returncode == 0 and res.stdout.startswith("valid: 1 entry"), res.stderr


async def test_a_refund_that_fails_on_a_full_disk_stays_pending_and_lands_later(
        small: Path) -> None:
    home = small / "home"
    home.mkdir()
    ledger = Ledger.open(Home(home).ledger, ME)
    ledger.deposit(5_000_000)
    pay = Payments(ledger, None, lease=Lease.open(home))
    await pay.lock(JOB, PROVIDER, 4000)
    filler = fill(small)
    await pay.refund(JOB, "failed")  # must neither raise nor forget the escrow
    assert pay.is_locked(JOB)
    await pay.settle_all()  # still full: still pending, the lease is kept for a sweep
    assert pay.is_locked(JOB)
    pay.close()
    assert read_leases(home).dead  # the lease names the job for the next command
    with pytest.raises(LedgerUnavailable, match=r"cannot be used now: the disk is full"):
        ledger.deposit(1)
    filler.unlink()
    swept = await Payments(ledger, None).sweep(home, now_ms=2**62)
    assert swept.refunded == [JOB]
    assert ledger.balance().escrow == 0 and ledger.balance().available == 5_000_000
    assert ledger.verify() is None
    ledger.close()


def test_peer_history_that_cannot_be_saved_is_a_warning_not_a_crash(small: Path) -> None:
    home = small / "home"
    home.mkdir()
    book = PeerBook.load(home)
    book.record_rtt(PROVIDER, 5.0, ())
    filler = fill(small)
    book.save()  # before the fix: OSError (No space left on device) ended the command
    filler.unlink()
    book.save()
    assert PeerBook.load(home).rtt_ms == {PROVIDER: 5.0}
