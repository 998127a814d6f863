"""Job records: every job this node submitted, free or paid, with its verdict and receipt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger import NEUTRAL, EscrowStateError, Ledger, LocalLedgerError, UnknownJob
from ledger.records import MAX_PATH, MAX_PHASES
from protocol import open_signed
from protocol.receipts import Receipt
from tests.ledger.conftest import ALICE, BOB, CAROL, RESULT, Clock, job

C = 1_000_000


def test_a_free_job_is_recorded_and_its_verdict_signed_with_charge_zero(
        alice: Ledger, clock: Clock) -> None:
    alice.start_free(job(1), BOB.peer_id)
    running = alice.record(job(1))
    assert (running.status, running.max_charge, running.started_at) == ("running", 0,
                                                                      clock.now)
    clock.now += 1500
    receipt = alice.close_free(job(1), "accepted", result_digest=RESULT)
    assert receipt is not None
    r = open_signed(receipt.raw, Receipt).message  # signed by us, verifiable by anyone
    assert (r.outcome, r.charge, r.provider, r.result_digest) == ("accepted", 0,
                                                                  BOB.peer_id, RESULT)
    [rec] = alice.records()
    assert (rec.status, rec.charge, rec.result, rec.ended_at) == ("accepted", 0, RESULT,
                                                                  clock.now)
    assert [x.digest for x in alice.receipts()] == [receipt.digest]
    assert alice.reputation(BOB.peer_id) > NEUTRAL  # free work counts as evidence
    assert alice.balance().escrow == 0 and alice.jobs() == []  # no money moved
    assert alice.verify() is None


def test_a_free_verdict_is_given_once_and_only_to_a_free_job(alice: Ledger) -> None:
    alice.start_free(job(1), BOB.peer_id)
    alice.close_free(job(1), "accepted", result_digest=RESULT)
    with pytest.raises(EscrowStateError, match="given once"):
        alice.close_free(job(1), "rejected", detail="late", result_digest=RESULT)
    with pytest.raises(UnknownJob):
        alice.close_free(job(9), "accepted", result_digest=RESULT)
    alice.deposit(5 * C)
    alice.lock(job(2), BOB.peer_id, 2 * C)
    with pytest.raises(EscrowStateError):  # a paid job settles through its escrow only
        alice.close_free(job(2), "accepted", result_digest=RESULT)
    with pytest.raises(EscrowStateError):
        alice.start_free(job(2), BOB.peer_id)
    assert alice.balance().escrow == 2 * C and len(alice.receipts()) == 1


@pytest.mark.parametrize(("verdict", "receipt"), [
    ("timeout", "timeout"), ("rejected", "rejected"), ("failed", None), ("cancelled", None)])
def test_free_failures_are_recorded_and_evidence_only_when_they_judge(
        alice: Ledger, verdict: str, receipt: str | None) -> None:
    alice.start_free(job(1), BOB.peer_id)
    signed = alice.close_free(job(1), verdict,  # type: ignore[arg-type]
                              detail="wrong answer", result_digest=RESULT)
    assert (None if signed is None else signed.message.outcome) == receipt
    rec = alice.record(job(1))
    assert (rec.status, rec.charge, rec.reason) == (verdict, 0, "wrong answer")
    if receipt == "timeout":
        assert signed is not None and signed.message.result_digest == ""
        assert alice.reputation(BOB.peer_id) < NEUTRAL


def test_paid_jobs_are_recorded_in_the_same_transaction_as_their_escrow(
        alice: Ledger) -> None:
    alice.deposit(10 * C)
    for n in (1, 2, 3):
        alice.lock(job(n), BOB.peer_id, 2 * C)
    alice.release(job(1), C // 4, result_digest=RESULT)
    alice.refund(job(2), "timeout", detail="no result within 630 s")
    got = {r.job_id: r for r in alice.records()}
    assert (got[job(1)].status, got[job(1)].charge, got[job(1)].max_charge,
            got[job(1)].result) == ("accepted", C // 4, 2 * C, RESULT)
    assert (got[job(2)].status, got[job(2)].reason) == ("timeout", "no result within 630 s")
    assert got[job(3)].status == "running"
    assert [r.job_id for r in alice.records(status="running")] == [job(3)]
    assert alice.verify() is None


def test_notes_add_timings_place_and_status_and_are_bounded(alice: Ledger,
                                                           tmp_path: Path) -> None:
    alice.start_free(job(1), CAROL.peer_id)
    phases = {f"phase{i}": float(i) for i in range(MAX_PHASES + 10)}
    alice.note(job(1), phases=phases, out_dir=str(tmp_path), result_status="ok")
    rec = alice.record(job(1))
    assert len(rec.phases) == MAX_PHASES and rec.wall_s == sum(range(MAX_PHASES)) / 1000
    assert (rec.out_dir, rec.result_status) == (str(tmp_path), "ok")
    alice.note(job(1), result_status="a provider's own word")  # not one we know
    assert alice.record(job(1)).result_status == "error"
    with pytest.raises(LocalLedgerError, match="out_dir"):
        alice.note(job(1), out_dir="x" * (MAX_PATH + 1))
    alice.note(job(1), held=True)
    assert alice.record(job(1)).status == "held"
    alice.note(job(2), phases={"run": 1.0})  # no record: nothing happens
    assert [r.job_id for r in alice.records()] == [job(1)]


def test_limit_keeps_the_latest_and_escrows_older_than_records_are_listed(
        db_path: Path, clock: Clock) -> None:
    with Ledger.open(db_path, ALICE, clock=clock) as alice:
        alice.deposit(10 * C)
        for n in range(5):
            clock.now += 1000
            alice.lock(job(n), BOB.peer_id, C)
        alice.release(job(0), C, result_digest=RESULT)
    db = sqlite3.connect(db_path)  # a ledger written before records existed
    db.execute("DELETE FROM records WHERE job_id IN (?, ?)", (job(0), job(1)))
    db.commit()
    db.close()
    with Ledger.open(db_path, ALICE, clock=clock) as alice:
        listed = alice.records()
        assert [r.job_id for r in listed] == [job(n) for n in range(5)]
        assert (listed[0].status, listed[0].charge, listed[1].status) == ("accepted", C,
                                                                          "running")
        assert [r.job_id for r in alice.records(limit=2)] == [job(3), job(4)]
        assert alice.verify() is None  # records are not part of the chain


def test_a_free_rejection_that_names_no_result_is_recorded_without_a_receipt(
        alice: Ledger) -> None:
    alice.start_free(job(1), BOB.peer_id)
    assert alice.close_free(job(1), "rejected", detail="outvoted") is None
    assert (alice.record(job(1)).status, alice.receipts()) == ("rejected", [])
    alice.start_free(job(2), BOB.peer_id)
    with pytest.raises(LocalLedgerError, match="result_digest"):
        alice.close_free(job(2), "accepted")  # an acceptance always names the result
    assert alice.record(job(2)).status == "running"
