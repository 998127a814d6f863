"""Escrows that outlive their process: leases, orphans and the sweep, on a real SQLite
ledger in a real home, with real processes holding (and dying with) their leases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import Ledger
from node.home import Home
from node.requester.escrows import (
    ORPHAN_GRACE_S,
    UNCLAIMED_GRACE_S,
    Lease,
    find_orphans,
    live_owner,
    read_leases,
)
from node.requester.holds import Hold, HoldBook
from node.requester.payments import Payments
from protocol import Identity, sha256_hex

ME = Identity(bytes([7]) * 32)
PROVIDER = Identity(bytes([8]) * 32).peer_id
REPO = Path(__file__).resolve().parents[3]
HOLDER = """
import sys, time
from pathlib import Path
from node.requester.escrows import Lease
lease = Lease.open(Path(sys.argv[1]))
for job in sys.argv[2:]:
    lease.claim(job, "{provider}", ["/ip4/127.0.0.1/tcp/9"])
print("ready", flush=True)
time.sleep(600)
""".replace("{provider}", PROVIDER)


def job(n: int | str) -> str:
    return sha256_hex(f"job {n}".encode())


class Holder:
    """A real process that holds a lease claiming some jobs until it is killed."""

    def __init__(self, home: Path, *jobs: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), *jobs],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.kill()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(Home(tmp_path).ledger, ME) as book:
        book.deposit(10_000_000)
        yield book


def test_a_lease_is_live_while_its_process_runs_and_dead_after_kill_9(
        tmp_path: Path, holders: list[Holder]) -> None:
    holder = Holder(tmp_path, job(1))
    holders.append(holder)
    mine = Lease.open(tmp_path)
    mine.claim(job(2), PROVIDER)
    leases = read_leases(tmp_path)
    assert leases.live == {job(1), job(2)} and not leases.dead
    assert live_owner(tmp_path, job(1)) == str(holder.proc.pid)
    holder.kill()
    leases = read_leases(tmp_path)
    assert leases.live == {job(2)} and set(leases.dead) == {job(1)}
    assert leases.dead[job(1)].addrs == ("/ip4/127.0.0.1/tcp/9",)
    assert live_owner(tmp_path, job(1)) is None
    mine.close()
    assert read_leases(tmp_path).live == set()
    left = [p.name for p in Home(tmp_path).leases.glob("*.lease")]
    assert len(left) == 1 and left[0].startswith(f"{holder.proc.pid}-")  # the dead one


def test_orphans_are_escrows_no_live_process_and_no_hold_keeps(
        tmp_path: Path, ledger: Ledger, holders: list[Holder]) -> None:
    dead, live = Holder(tmp_path, job("dead")), Holder(tmp_path, job("live"))
    holders += [dead, live]
    for name in ("dead", "live", "held", "nobody", "settled"):
        ledger.lock(job(name), PROVIDER, 1000)
    ledger.refund(job("settled"), "failed")
    HoldBook.load(tmp_path).add(Hold(job_id=job("held"), provider=PROVIDER, charge=10,
                                     result_digest=sha256_hex(b"r"), until=time.time() + 600))
    assert [o.job.job_id for o in find_orphans(ledger, tmp_path)] == [job("nobody")]
    dead.kill()
    orphans = {o.job.job_id: o for o in find_orphans(ledger, tmp_path)}
    assert set(orphans) == {job("dead"), job("nobody")}
    locked_at = ledger.job(job("dead")).locked_at
    assert orphans[job("dead")].refund_after_ms == locked_at + int(ORPHAN_GRACE_S * 1000)
    assert orphans[job("dead")].addrs == ("/ip4/127.0.0.1/tcp/9",)
    unclaimed = ledger.job(job("nobody")).locked_at + int(UNCLAIMED_GRACE_S * 1000)
    assert orphans[job("nobody")].refund_after_ms == unclaimed
    assert orphans[job("nobody")].addrs == ()


async def test_sweep_waits_out_the_grace_for_an_unreachable_provider_then_refunds(
        tmp_path: Path, ledger: Ledger, holders: list[Holder]) -> None:
    dead = Holder(tmp_path, job(1))
    holders.append(dead)
    ledger.lock(job(1), PROVIDER, 1500)
    dead.kill()
    pay = Payments(ledger, None)  # no host: the provider cannot be asked
    locked_at = ledger.job(job(1)).locked_at
    early = await pay.sweep(tmp_path, now_ms=locked_at + 1000)
    assert (early.waiting, early.refunded) == ([job(1)], [])
    assert ledger.job(job(1)).state == "locked" and ledger.balance().escrow == 1500
    assert len(list(Home(tmp_path).leases.glob("*.lease"))) == 1  # kept: still locked
    late = await pay.sweep(tmp_path, now_ms=locked_at + int(ORPHAN_GRACE_S * 1000) + 1)
    assert (late.waiting, late.refunded) == ([], [job(1)])
    j = ledger.job(job(1))
    assert (j.state, j.reason) == ("refunded", "cancelled")
    assert ledger.balance().escrow == 0 and ledger.balance().available == 10_000_000
    assert list(Home(tmp_path).leases.glob("*.lease")) == []  # settled: the dead lease goes
    assert ledger.verify() is None


async def test_sweep_never_touches_a_live_process_escrow_even_past_every_grace(
        tmp_path: Path, ledger: Ledger, holders: list[Holder]) -> None:
    holders.append(Holder(tmp_path, job(1)))
    ledger.lock(job(1), PROVIDER, 1500)
    swept = await Payments(ledger, None).sweep(tmp_path, now_ms=2**62)
    assert (swept.refunded, swept.released, swept.waiting) == ([], [], [])
    assert ledger.job(job(1)).state == "locked"


async def test_a_session_claims_before_it_locks_and_removes_its_lease_when_settled(
        tmp_path: Path, ledger: Ledger) -> None:
    lease = Lease.open(tmp_path)
    pay = Payments(ledger, None, lease=lease)
    await pay.lock(job(1), PROVIDER, 700)
    assert read_leases(tmp_path).live == {job(1)}
    assert find_orphans(ledger, tmp_path) == []
    await pay.settle_all()
    pay.close()
    assert ledger.job(job(1)).state == "refunded"
    assert list(Home(tmp_path).leases.glob("*.lease")) == []


def test_a_second_sweeper_on_the_same_home_stands_aside(tmp_path: Path) -> None:
    from node.requester.escrows import sweeping

    with sweeping(tmp_path) as first, sweeping(tmp_path) as second:
        assert (first, second) == (True, False)


def test_holds_from_two_processes_on_one_home_are_merged_not_overwritten(
        tmp_path: Path) -> None:
    a, b = HoldBook.load(tmp_path), HoldBook.load(tmp_path)  # two sessions, loaded at once

    def hold(n: int) -> Hold:
        return Hold(job_id=job(n), provider=PROVIDER, charge=n, result_digest=job(n),
                    until=1.0)

    a.add(hold(1))
    b.add(hold(2))  # before the fix: b's stale copy overwrote a's hold, whose escrow
    a.remove(job(3))  # then stayed locked forever
    assert {h.job_id for h in HoldBook.load(tmp_path).all()} == {job(1), job(2)}
    assert {h.job_id for h in a.all()} == {job(1), job(2)}
    b.remove(job(1))
    assert [h.job_id for h in HoldBook.load(tmp_path).all()] == [job(2)]
    assert json.loads((tmp_path / "holds.json").read_text())[0]["job_id"] == job(2)


def test_peer_books_of_two_sessions_on_one_home_merge_their_changes(tmp_path: Path) -> None:
    from node.net.peers import PeerBook

    other = Identity(bytes([9]) * 32).peer_id
    a, b = PeerBook.load(tmp_path), PeerBook.load(tmp_path)  # loaded at once
    a.trust.record_mismatch(PROVIDER, time.time())  # a bans a cheat ...
    a.save()
    b.record_rtt(other, 12.0, ())  # ... while b measured someone else
    b.save()  # before the fix: b's stale copy wiped a's ban from peers.json
    fresh = PeerBook.load(tmp_path)
    assert fresh.trust.is_blacklisted(PROVIDER, time.time())
    assert fresh.rtt_ms == {other: 12.0}
    assert b.trust.is_blacklisted(PROVIDER, time.time())  # b now knows of the ban too
