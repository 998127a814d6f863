"""Every write path refuses an amount, balance or sum above MAX_AMOUNT with a named error,
at the boundary and one past it, and `ledger verify` still passes afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledger import (
    MAX_AMOUNT,
    ChequeRefused,
    InvalidAmount,
    Ledger,
    LedgerError,
    ReceiptRefused,
    RemoteLedgerError,
)
from ledger.chain import make_entry
from ledger.errors import AmountOverCap, ChequeOverCap
from ledger.store import Store, head, insert_entry, verify_file
from protocol import Cheque, Identity, Receipt
from protocol.codec import pack
from protocol.limits import MAX_AMOUNT as PROTOCOL_MAX_AMOUNT
from tests.ledger.conftest import ALICE, BOB, CAROL, NOW_MS, RESULT, Clock, job

DAVE = Identity(bytes([4]) * 32)


def signed_raw(signer: Identity, cls: type[Any], body: dict[str, Any]) -> bytes:
    """A validly signed envelope packed by hand, so out-of-range ints can be sent."""
    sig = signer.sign(cls.domain() + pack(body))
    return pack({"v": 1, "type": cls.type_name, "body": body, "sig": sig})


def cheque_raw(payer: Identity, cumulative: int, serial: int = 1,
               payee: Identity = BOB) -> bytes:
    return signed_raw(payer, Cheque, {"payer": payer.peer_id, "payee": payee.peer_id,
                                      "channel": "local", "cumulative": cumulative,
                                      "serial": serial, "issued_at": NOW_MS})


def receipt_raw(charge: int, n: int = 0) -> bytes:
    return signed_raw(ALICE, Receipt, {
        "job_id": job(f"receipt {n}"), "requester": ALICE.peer_id, "provider": BOB.peer_id,
        "outcome": "accepted", "reason": "", "charge": charge, "result_digest": RESULT,
        "issued_at": NOW_MS})


def assert_verifies(ledger: Ledger) -> None:
    assert ledger.verify() is None
    for value in (ledger.balance().earned, ledger.balance().available, *ledger.accounts().values()):
        assert type(value) is int and abs(value) <= MAX_AMOUNT


def test_one_cap_shared_with_protocol() -> None:
    assert MAX_AMOUNT == PROTOCOL_MAX_AMOUNT == 10**15


def test_deposit_at_the_cap_and_one_past(alice: Ledger) -> None:
    with pytest.raises(InvalidAmount, match=r"in 1\.\.1000000000000000, not 1000000000000001"):
        alice.deposit(MAX_AMOUNT + 1)
    alice.deposit(MAX_AMOUNT - 1)
    alice.deposit(1)  # the boundary: exactly MAX_AMOUNT available
    assert alice.balance().available == MAX_AMOUNT
    with pytest.raises(AmountOverCap, match=r"depositing 0\.000001 credits would take the "
                                            r"books past the cap of 1000000000\.000000"):
        alice.deposit(1)
    assert_verifies(alice)


def test_lock_release_refund_at_the_cap(alice: Ledger) -> None:
    alice.deposit(MAX_AMOUNT)
    with pytest.raises(InvalidAmount, match=r"not 1000000000000001"):
        alice.lock(job(1), BOB.peer_id, MAX_AMOUNT + 1)
    alice.lock(job(1), BOB.peer_id, MAX_AMOUNT)
    alice.refund(job(1), "cancelled")
    alice.lock(job(2), BOB.peer_id, MAX_AMOUNT)
    with pytest.raises(InvalidAmount, match=r"charge 1000000000000001 .* is outside "
                                            r"0\.\.1000000000000000"):
        alice.release(job(2), MAX_AMOUNT + 1, result_digest=RESULT)
    payment = alice.release(job(2), MAX_AMOUNT, result_digest=RESULT)
    assert payment.cheque.message.cumulative == MAX_AMOUNT
    assert alice.balance().paid == MAX_AMOUNT
    with pytest.raises(AmountOverCap, match=r"deposited 1000000000\.000000 in all"):
        alice.deposit(1)  # all deposits together stay within the cap: paid cannot pass it
    assert_verifies(alice)


def test_a_cheque_at_the_cap_and_one_past(bob: Ledger) -> None:
    with pytest.raises(ChequeRefused, match=r"cumulative is 1000000000000001, outside"):
        bob.accept_cheque(cheque_raw(ALICE, MAX_AMOUNT + 1))
    bob.accept_cheque(cheque_raw(ALICE, MAX_AMOUNT))
    assert bob.balance().earned == MAX_AMOUNT
    with pytest.raises(ChequeOverCap, match=r"earned would pass 1000000000000000") as info:
        bob.accept_cheque(cheque_raw(CAROL, 1))
    assert isinstance(info.value, RemoteLedgerError)
    assert_verifies(bob)


def test_the_overflowing_cheques_of_the_issue_are_refused(bob: Ledger) -> None:
    """Two cheques of 2**63-1 from two payers used to turn `earned` into a float."""
    for payer in (ALICE, CAROL):
        with pytest.raises(ChequeRefused, match="outside its range"):
            bob.accept_cheque(cheque_raw(payer, 2**63 - 1))
    with pytest.raises(ChequeRefused, match="outside its range"):
        bob.accept_cheque(cheque_raw(DAVE, 2**63))
    assert bob.balance().earned == 0
    assert_verifies(bob)


def test_cheques_from_many_payers_sum_within_the_cap(bob: Ledger) -> None:
    half = MAX_AMOUNT // 2
    bob.accept_cheque(cheque_raw(ALICE, half))
    bob.accept_cheque(cheque_raw(CAROL, MAX_AMOUNT - half))  # exactly the cap
    with pytest.raises(ChequeOverCap):
        bob.accept_cheque(cheque_raw(DAVE, 1))
    with pytest.raises(ChequeOverCap):
        bob.accept_cheque(cheque_raw(ALICE, half + 1, serial=2))
    bob.accept_cheque(cheque_raw(ALICE, half, serial=2))  # nothing more: still fits
    assert bob.balance().earned == MAX_AMOUNT
    assert_verifies(bob)


@pytest.mark.parametrize("charge", [MAX_AMOUNT + 1, 2**63, 2**64 - 1])
def test_a_receipt_over_the_cap_is_refused(bob: Ledger, charge: int) -> None:
    with pytest.raises(ReceiptRefused, match=rf"charge is {charge}, outside its range"):
        bob.record_receipt(receipt_raw(charge))
    got = bob.record_receipt(receipt_raw(MAX_AMOUNT, 1))
    assert got is not None and got.charge == MAX_AMOUNT
    assert_verifies(bob)


def test_insert_entry_refuses_amounts_and_balances_over_the_cap(tmp_path: Path) -> None:
    """The one place every entry is written checks too, whatever its caller did."""
    store = Store(tmp_path / "raw.db", ALICE.peer_id)

    def entry(kind: Any, amount: int, **kw: Any) -> Any:
        with store.read() as db:
            seq, prev = head(db)
        return make_entry(ALICE, seq=seq + 1, ts=NOW_MS, kind=kind, amount=amount, prev=prev,
                          **kw)

    def write(e: Any, rest: int = 0) -> None:
        with store.write() as db:
            insert_entry(db, e, rest=rest)

    with pytest.raises(AmountOverCap, match=r"deposit of 1000000000000001 micro-credits is "
                                            r"outside 0\.\.1000000000000000"):
        write(entry("deposit", MAX_AMOUNT + 1))
    with pytest.raises(AmountOverCap, match=r"outside 0\.\.1000000000000000"):
        write(entry("deposit", 2**63))
    write(entry("deposit", MAX_AMOUNT))
    with pytest.raises(AmountOverCap, match=r"account 'external' would hold -1000000000000001"):
        write(entry("deposit", 1))
    with pytest.raises(AmountOverCap, match=r"rest of 1000000000000001"):
        write(entry("release", 0, job_id=job(1), peer=BOB.peer_id), rest=MAX_AMOUNT + 1)
    with pytest.raises(AmountOverCap, match=r"cheque_in of 1000000000000001 micro-credits"):
        write(entry("cheque_in", MAX_AMOUNT + 1, peer=BOB.peer_id))
    with pytest.raises(AmountOverCap, match=r"account 'available' would hold 1000000000000001"):
        write(entry("refund", 1, job_id=job(1), peer=BOB.peer_id))
    with store.read() as db:
        assert head(db)[0] == 1  # nothing of the refused writes stayed
        assert verify_file(db, ALICE.peer_id) is None
    store.close()


def test_cap_errors_are_ledger_errors() -> None:
    assert issubclass(AmountOverCap, InvalidAmount)
    assert issubclass(ChequeOverCap, ChequeRefused)
    assert issubclass(ChequeOverCap, RemoteLedgerError)
    assert issubclass(AmountOverCap, LedgerError)


def test_a_fresh_ledger_file_records_nothing_refused(db_path: Path, clock: Clock) -> None:
    """Refusals leave no entry: reopening the file shows the same books."""
    with Ledger.open(db_path, BOB, clock=clock) as bob:
        bob.accept_cheque(cheque_raw(ALICE, MAX_AMOUNT))
        with pytest.raises(ChequeOverCap):
            bob.accept_cheque(cheque_raw(CAROL, 1))
    with Ledger.open(db_path, BOB, clock=clock) as again:
        assert [e.kind for e in again.history()] == ["cheque_in"]
        assert_verifies(again)
