"""The Ledger API: deposits, escrow outcomes, cheques, receipts, and what each refuses."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ledger import (
    Balance,
    ChequeMisaddressed,
    ChequeRefused,
    ChequeReplayed,
    ChequeRolledBack,
    EscrowStateError,
    InsufficientFunds,
    InvalidAmount,
    Ledger,
    LocalLedgerError,
    ReceiptRefused,
    UnknownJob,
    WrongOwner,
)
from protocol import Cheque, sign
from tests.ledger.conftest import ALICE, BOB, CAROL, RESULT, Clock, job

C = 1_000_000  # one credit


def funded(ledger: Ledger, credits: int = 10) -> Ledger:
    ledger.deposit(credits * C)
    return ledger


def test_deposit_and_balance(alice: Ledger) -> None:
    assert alice.balance() == Balance(available=0, escrow=0, paid=0, earned=0, deposited=0)
    e = alice.deposit(5 * C)
    assert (e.seq, e.kind, e.amount, e.memo["channel"]) == (1, "deposit", 5 * C, "local")
    assert str(e.memo["ref"]).startswith("local:")
    assert alice.balance() == Balance(available=5 * C, escrow=0, paid=0, earned=0,
                                      deposited=5 * C)


@pytest.mark.parametrize("amount", [0, -1, 10**15 + 1, 1.5, True])
def test_amounts_are_positive_micro_credit_integers(alice: Ledger, amount: object) -> None:
    with pytest.raises(InvalidAmount, match="amount must be a whole number of micro-credits"):
        alice.deposit(amount)  # type: ignore[arg-type]


def test_release_pays_the_charge_and_refunds_the_rest(alice: Ledger) -> None:
    funded(alice)
    alice.lock(job(1), BOB.peer_id, 3 * C)
    assert alice.balance().available == 7 * C and alice.balance().escrow == 3 * C
    pay = alice.release(job(1), C, result_digest=RESULT)
    assert alice.balance() == Balance(available=9 * C, escrow=0, paid=C, earned=0,
                                      deposited=10 * C)
    r = pay.receipt.message
    assert (r.outcome, r.charge, r.provider, r.result_digest) == ("accepted", C, BOB.peer_id,
                                                                  RESULT)
    c = pay.cheque.message
    assert (c.payee, c.cumulative, c.serial, c.channel) == (BOB.peer_id, C, 1, "local")
    j = alice.job(job(1))
    assert (j.state, j.charge, j.verified, j.result) == ("released", C, True, RESULT)
    # the next cheque to the same provider is cumulative
    alice.lock(job(2), BOB.peer_id, 2 * C)
    c2 = alice.release(job(2), C // 2, result_digest=RESULT).cheque.message
    assert (c2.cumulative, c2.serial) == (C + C // 2, 2)
    assert alice.latest_cheque(BOB.peer_id, direction="out") is not None


@pytest.mark.parametrize("reason", ["rejected", "timeout", "failed", "cancelled"])
def test_every_refund_returns_everything(alice: Ledger, reason: str) -> None:
    funded(alice)
    alice.lock(job(1), BOB.peer_id, 4 * C)
    receipt = alice.refund(job(1), reason, detail="digest mismatch",  # type: ignore[arg-type]
                           result_digest=RESULT if reason == "rejected" else "")
    assert alice.balance() == Balance(available=10 * C, escrow=0, paid=0, earned=0,
                                      deposited=10 * C)
    j = alice.job(job(1))
    assert (j.state, j.reason, j.verified) == ("refunded", reason, False)
    if reason in ("rejected", "timeout"):
        assert receipt is not None and receipt.message.outcome == reason
        assert receipt.message.charge == 0
    else:
        assert receipt is None


def test_a_double_release_is_refused_and_changes_nothing(alice: Ledger) -> None:
    funded(alice)
    alice.lock(job(1), BOB.peer_id, 3 * C)
    alice.release(job(1), C, result_digest=RESULT)
    before, entries = alice.balance(), len(alice.history())
    with pytest.raises(EscrowStateError, match="was already released; it pays out once"):
        alice.release(job(1), C, result_digest=RESULT)
    with pytest.raises(EscrowStateError, match=r"was already released; .* cannot refund"):
        alice.refund(job(1), "cancelled")
    assert alice.balance() == before and len(alice.history()) == entries
    assert alice.verify() is None


def test_refusals_name_the_fix(alice: Ledger) -> None:
    alice.deposit(C)
    with pytest.raises(InsufficientFunds, match="run `offload ledger deposit AMOUNT`"):
        alice.lock(job(1), BOB.peer_id, 2 * C)
    with pytest.raises(UnknownJob, match="no escrow for job"):
        alice.release(job(9), 1, result_digest=RESULT)
    alice.lock(job(1), BOB.peer_id, C // 2)
    with pytest.raises(EscrowStateError, match=r"already has an escrow \(locked\)"):
        alice.lock(job(1), BOB.peer_id, 1)
    with pytest.raises(InvalidAmount, match="charge at most the quote"):
        alice.release(job(1), C, result_digest=RESULT)
    with pytest.raises(LocalLedgerError, match="a node does not pay itself"):
        alice.lock(job(2), ALICE.peer_id, 1)
    with pytest.raises(LocalLedgerError, match="job_id must be 64 lowercase hex"):
        alice.lock("job-2", BOB.peer_id, 1)
    with pytest.raises(LocalLedgerError, match="a rejection names the result"):
        alice.refund(job(1), "rejected")
    assert alice.balance().escrow == C // 2 and alice.verify() is None


def test_two_connections_racing_to_release_pay_once(db_path: Path, clock: Clock) -> None:
    with Ledger.open(db_path, ALICE, clock=clock) as setup:
        funded(setup, 100)
        for n in range(40):
            setup.lock(job(n), BOB.peer_id, C)
    outcomes: dict[str, list[str]] = {"release": [], "refund": []}
    barrier = threading.Barrier(2)

    def racer(kind: str) -> None:
        with Ledger.open(db_path, ALICE, clock=clock) as ledger:
            barrier.wait()
            for n in range(40):
                try:
                    if kind == "release":
                        ledger.release(job(n), C // 4, result_digest=RESULT)
                    else:
                        ledger.refund(job(n), "cancelled")
                    outcomes[kind].append(job(n))
                except EscrowStateError:
                    pass

    threads = [threading.Thread(target=racer, args=(k,)) for k in outcomes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    released, refunded = set(outcomes["release"]), set(outcomes["refund"])
    assert not released & refunded and len(released) + len(refunded) == 40
    with Ledger.open(db_path, ALICE, clock=clock) as ledger:
        b = ledger.balance()
        assert b.paid == len(released) * (C // 4) and b.escrow == 0
        assert b.available + b.escrow + b.paid == b.deposited == 100 * C
        assert ledger.verify() is None


def test_a_ledger_opens_only_for_its_owner(db_path: Path) -> None:
    Ledger.open(db_path, ALICE).close()
    with pytest.raises(WrongOwner, match="open it with that node's --home"):
        Ledger.open(db_path, BOB)


# -- provider side ---------------------------------------------------------------------


def test_the_provider_keeps_rising_cheques(alice: Ledger, bob: Ledger) -> None:
    funded(alice)
    cheques = []
    for n, charge in enumerate((C, 0, 2 * C)):
        alice.lock(job(n), BOB.peer_id, 3 * C)
        cheques.append(alice.release(job(n), charge, result_digest=RESULT).cheque)
    for c in cheques:
        bob.accept_cheque(c.raw)
    assert bob.balance().earned == 3 * C == alice.balance().paid
    latest = bob.latest_cheque(ALICE.peer_id)
    assert latest is not None and latest.message.serial == 3
    assert bob.verify() is None


def test_a_repeated_serial_is_refused(alice: Ledger, bob: Ledger) -> None:
    funded(alice)
    alice.lock(job(1), BOB.peer_id, 3 * C)
    c = alice.release(job(1), C, result_digest=RESULT).cheque
    bob.accept_cheque(c.raw)
    with pytest.raises(ChequeReplayed, match=r"serial 1 .* is not above the last accepted "
                                             "serial 1; each cheque is accepted once"):
        bob.accept_cheque(c.raw)
    assert bob.balance().earned == C


def test_a_falling_cumulative_is_refused(bob: Ledger, clock: Clock) -> None:
    def cheque(cumulative: int, serial: int) -> bytes:
        return sign(Cheque(payer=ALICE.peer_id, payee=BOB.peer_id, channel="local",
                           cumulative=cumulative, serial=serial, issued_at=clock()), ALICE).raw

    bob.accept_cheque(cheque(5 * C, 1))
    with pytest.raises(ChequeRolledBack, match="promises 4000000 in all, less than the "
                                               "5000000 already promised"):
        bob.accept_cheque(cheque(4 * C, 2))
    bob.accept_cheque(cheque(5 * C, 3))  # the canary: same amount, higher serial
    assert bob.balance().earned == 5 * C


def test_cheques_to_others_or_forged_are_refused(bob: Ledger, clock: Clock) -> None:
    to_carol = sign(Cheque(payer=ALICE.peer_id, payee=CAROL.peer_id, channel="local",
                           cumulative=C, serial=1, issued_at=clock()), ALICE)
    with pytest.raises(ChequeMisaddressed, match="cheque pays"):
        bob.accept_cheque(to_carol.raw)
    other_channel = sign(Cheque(payer=ALICE.peer_id, payee=BOB.peer_id, channel="eth:0x1",
                                cumulative=C, serial=1, issued_at=clock()), ALICE)
    with pytest.raises(ChequeMisaddressed, match="on channel 'eth:0x1'"):
        bob.accept_cheque(other_channel.raw)
    good = sign(Cheque(payer=ALICE.peer_id, payee=BOB.peer_id, channel="local",
                       cumulative=C, serial=1, issued_at=clock()), ALICE)
    forged = good.raw.replace(good.signature, bytes(64))
    with pytest.raises(ChequeRefused, match="cheque does not verify: signature"):
        bob.accept_cheque(forged)
    assert bob.balance().earned == 0


def test_receipts_are_kept_once_and_checked(alice: Ledger, bob: Ledger, clock: Clock) -> None:
    funded(alice)
    alice.lock(job(1), BOB.peer_id, C)
    raw = alice.release(job(1), C, result_digest=RESULT).receipt.raw
    got = bob.record_receipt(raw)
    assert got is not None and got.requester == ALICE.peer_id
    assert bob.record_receipt(raw) is None
    with pytest.raises(ReceiptRefused, match=r"receipt refused: .*in the future"):
        bob.record_receipt(raw, now_ms=clock() - 3_600_000)
    with pytest.raises(ReceiptRefused, match="receipt refused: not a valid msgpack"):
        bob.record_receipt(b"\xc1")
    assert len(bob.receipts()) == 1 and bob.verify() is None


def test_history_jobs_and_export(alice: Ledger) -> None:
    funded(alice)
    alice.lock(job(1), BOB.peer_id, C)
    alice.release(job(1), C // 2, result_digest=RESULT)
    kinds = [e.kind for e in alice.history()]
    assert kinds == ["deposit", "lock", "release"]
    assert [e.kind for e in alice.history(limit=1)] == ["release"]
    doc = alice.export()
    assert [e["seq"] for e in doc["entries"]] == [1, 2, 3]
    assert doc["jobs"][0]["verified"] is True and doc["receipts"][0]["outcome"] == "accepted"
    assert doc["balance"]["paid"] == C // 2
    assert doc["entries"][1]["prev"] == doc["entries"][0]["hash"]
