"""Real processes on a real file: SIGKILL mid-churn loses no committed entry and no credit;
two processes racing to close the same escrows pay each at most once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import Ledger
from tests.ledger.conftest import ALICE, BOB, RESULT, job

ROOT = Path(__file__).resolve().parents[2]


def writer(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.ledger.writer", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stdin=stdin, text=True)


def assert_books_balance(ledger: Ledger) -> None:
    b = ledger.balance()
    locked = sum(j.amount for j in ledger.jobs() if j.state == "locked")
    assert b.escrow == locked
    assert b.available + b.escrow + b.paid == b.deposited == 10**12
    assert sum(ledger.accounts().values()) == 0


@pytest.mark.parametrize("kill_after", [250, 2500])
def test_sigkill_mid_churn_keeps_every_commit(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "ledger.db"
    child = writer("churn", str(path), "100000")
    assert child.stdout is not None
    reported: list[int] = []
    for line in child.stdout:
        reported.append(int(line))
        if len(reported) == kill_after:
            os.kill(child.pid, signal.SIGKILL)
            break
    reported += [int(line) for line in child.stdout]  # committed before the kill landed
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert len(reported) >= kill_after

    with Ledger.open(path, ALICE) as ledger:
        seqs = [e.seq for e in ledger.history()]
        assert seqs == list(range(1, len(seqs) + 1))
        assert set(reported) <= set(seqs)  # every reported commit is there
        assert len(seqs) - len(reported) <= 1  # at most the one committed as the kill hit
        assert ledger.verify() is None
        assert_books_balance(ledger)
        kinds = {e.kind for e in ledger.history()}
        assert kinds == {"deposit", "lock", "release", "refund"}
        # the file is still a working ledger
        ledger.lock(job("after the crash"), BOB.peer_id, 5)
        ledger.release(job("after the crash"), 5, result_digest=RESULT)
        assert ledger.verify() is None
        assert_books_balance(ledger)


def test_two_processes_racing_close_each_escrow_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    jobs = 150
    with Ledger.open(path, ALICE) as ledger:
        ledger.deposit(10**12)
        for n in range(jobs):
            ledger.lock(job(n), BOB.peer_id, 100)
    racers = {kind: writer("race", str(path), str(jobs), kind, stdin=subprocess.PIPE)
              for kind in ("release", "refund")}
    for p in racers.values():
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in racers.values():
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    won: dict[str, set[int]] = {}
    for kind, p in racers.items():
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.endswith("done\n")
        won[kind] = {int(w.split()[1]) for w in out.splitlines() if w.startswith("won ")}
    assert won["release"] and won["refund"]  # they did overlap
    assert won["release"].isdisjoint(won["refund"])
    assert won["release"] | won["refund"] == set(range(jobs))
    with Ledger.open(path, ALICE) as ledger:
        assert ledger.balance().paid == 10 * len(won["release"])
        assert ledger.verify() is None
        assert_books_balance(ledger)
