"""Edits made to ledger.db behind the ledger's back: verify names the first bad entry."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from ledger import Fault, Ledger, LedgerCorrupt
from ledger.chain import entry_bytes
from ledger.store import row_entry
from tests.ledger.conftest import ALICE, BOB, RESULT, Clock, job

C = 1_000_000


@pytest.fixture
def books(db_path: Path, clock: Clock) -> Path:
    """seq 1 deposit, 2 lock, 3 release, 4 lock, 5 refund (timeout), 6 lock."""
    with Ledger.open(db_path, ALICE, clock=clock) as ledger:
        ledger.deposit(10 * C)
        ledger.lock(job(1), BOB.peer_id, 3 * C)
        ledger.release(job(1), C, result_digest=RESULT)
        ledger.lock(job(2), BOB.peer_id, 2 * C)
        ledger.refund(job(2), "timeout")
        ledger.lock(job(3), BOB.peer_id, C)
    return db_path


def edit(path: Path, *sql: str) -> None:
    """What `sqlite3 ledger.db "update ..."` does: a separate connection, no ledger code."""
    db = sqlite3.connect(path)
    with db:
        for statement in sql:
            db.execute(statement)
    db.close()


def verify(path: Path, clock: Clock) -> Fault | None:
    with Ledger.open(path, ALICE, clock=clock) as ledger:
        return ledger.verify()


def test_the_untouched_file_verifies(books: Path, clock: Clock) -> None:
    assert verify(books, clock) is None  # the canary for every test below


def test_an_edited_amount_is_named(books: Path, clock: Clock) -> None:
    edit(books, "UPDATE entries SET amount = amount + 1000000 WHERE seq = 3")
    assert verify(books, clock) == Fault(3, "its hash does not match its fields (edited "
                                            "behind the ledger's back)")


def test_a_rehashed_edit_still_lacks_the_signature(books: Path, clock: Clock) -> None:
    db = sqlite3.connect(books)
    row = db.execute("SELECT seq, ts, kind, job_id, peer, amount, memo, prev, hash, sig "
                     "FROM entries WHERE seq = 1").fetchone()
    e = row_entry(row)
    forged = entry_bytes(seq=1, ts=e.ts, kind=e.kind, job_id=e.job_id, peer=e.peer,
                         amount=e.amount * 100, memo=e.memo, prev=e.prev)
    with db:
        db.execute("UPDATE entries SET amount = ?, hash = ? WHERE seq = 1",
                   (e.amount * 100, hashlib.sha256(forged).hexdigest()))
    db.close()
    assert verify(books, clock) == Fault(1, f"its signature is not {ALICE.peer_id[:16]}'s")


def test_a_removed_entry_is_named(books: Path, clock: Clock) -> None:
    edit(books, "DELETE FROM entries WHERE seq = 2")
    assert verify(books, clock) == Fault(2, "expected entry 2 here (entries missing or "
                                            "reordered)")


def test_a_removed_last_entry_shows_in_the_balances(books: Path, clock: Clock) -> None:
    edit(books, "DELETE FROM entries WHERE seq = 6")
    fault = verify(books, clock)
    assert fault is not None and fault.seq is None
    assert fault.reason == ("account 'available' holds 8000000 but its entries add up to "
                            "9000000 micro-credits")


def test_an_edited_balance_is_caught(books: Path, clock: Clock) -> None:
    edit(books, "UPDATE accounts SET balance = balance + 5000000 WHERE name = 'available'")
    assert verify(books, clock) == Fault(None, "account 'available' holds 13000000 but its "
                                               "entries add up to 8000000 micro-credits")


def test_reopening_a_released_escrow_to_pay_twice_is_caught(books: Path,
                                                            clock: Clock) -> None:
    edit(books, f"UPDATE escrows SET state = 'locked' WHERE job_id = '{job(1)}'")
    with Ledger.open(books, ALICE, clock=clock) as ledger:
        with pytest.raises(LedgerCorrupt, match=r"does not verify at tables: escrow of job"):
            ledger.check()
        ledger.release(job(1), C, result_digest=RESULT)  # the edit fooled the fast path...
        fault = ledger.verify()
    # ...but the replay refuses the second release it signed (entry 7)
    assert fault is not None and fault.seq == 7
    assert "breaks a ledger rule: escrow of job" in fault.reason
    assert "was already released" in fault.reason


def test_a_garbled_memo_is_named(books: Path, clock: Clock) -> None:
    edit(books, "UPDATE entries SET memo = x'c1' WHERE seq = 3")
    fault = verify(books, clock)
    assert fault is not None and fault.seq == 3 and "memo is not canonical msgpack" in fault.reason


def test_an_edited_receipt_row_is_caught(books: Path, clock: Clock) -> None:
    edit(books, "UPDATE receipts SET outcome = 'accepted' WHERE outcome = 'timeout'")
    fault = verify(books, clock)
    assert fault is not None and fault.seq is None
    assert "its row says other things than the signed receipt" in fault.reason


def test_an_edited_cheque_row_is_caught(books: Path, clock: Clock) -> None:
    edit(books, "UPDATE cheques SET cumulative = 0")
    fault = verify(books, clock)
    assert fault is not None and "cheque out for" in fault.reason
