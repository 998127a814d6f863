"""Property: no sequence of deposits and job outcomes creates or loses credit."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import EscrowStateError, InsufficientFunds, Ledger, UnknownJob
from tests.ledger.conftest import ALICE, BOB, CAROL, RESULT, Clock, job

PROVIDERS = [BOB.peer_id, CAROL.peer_id]
REASONS = ["rejected", "timeout", "failed", "cancelled"]


class Books(RuleBasedStateMachine):
    """The ledger against a plain model of what every step should do."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger.open(":memory:", ALICE, clock=Clock())
        self.deposited = 0
        self.available = 0
        self.paid = {p: 0 for p in PROVIDERS}
        self.jobs: dict[int, dict[str, Any]] = {}
        self.next_job = 0

    def teardown(self) -> None:
        assert self.ledger.verify() is None
        self.ledger.close()

    @rule(amount=st.integers(1, 10**9))
    def deposit(self, amount: int) -> None:
        self.ledger.deposit(amount)
        self.deposited += amount
        self.available += amount

    @rule(amount=st.integers(1, 10**9), provider=st.sampled_from(PROVIDERS))
    def lock(self, amount: int, provider: str) -> None:
        n = self.next_job
        self.next_job += 1
        if amount > self.available:
            with pytest.raises(InsufficientFunds):
                self.ledger.lock(job(n), provider, amount)
            return
        self.ledger.lock(job(n), provider, amount)
        self.available -= amount
        self.jobs[n] = {"state": "locked", "amount": amount, "provider": provider}

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), share=st.floats(0.0, 1.0))
    def release(self, data: st.DataObject, share: float) -> None:
        n = data.draw(st.sampled_from(sorted(self.jobs)))
        j = self.jobs[n]
        charge = int(j["amount"] * share)
        if j["state"] != "locked":
            with pytest.raises(EscrowStateError, match="was already"):
                self.ledger.release(job(n), charge, result_digest=RESULT)
            return
        pay = self.ledger.release(job(n), charge, result_digest=RESULT)
        self.paid[j["provider"]] += charge
        self.available += j["amount"] - charge
        j["state"] = "released"
        assert pay.cheque.message.cumulative == self.paid[j["provider"]]

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data(), reason=st.sampled_from(REASONS))
    def refund(self, data: st.DataObject, reason: str) -> None:
        n = data.draw(st.sampled_from(sorted(self.jobs)))
        j = self.jobs[n]
        if j["state"] != "locked":
            with pytest.raises(EscrowStateError, match="was already"):
                self.ledger.refund(job(n), reason, result_digest=RESULT)  # type: ignore[arg-type]
            return
        self.ledger.refund(job(n), reason, result_digest=RESULT)  # type: ignore[arg-type]
        self.available += j["amount"]
        j["state"] = "refunded"

    @rule()
    def release_unknown(self) -> None:
        with pytest.raises(UnknownJob):
            self.ledger.release(job("never locked"), 0, result_digest=RESULT)

    @invariant()
    def no_credit_created_or_lost(self) -> None:
        b = self.ledger.balance()
        escrow = sum(j["amount"] for j in self.jobs.values() if j["state"] == "locked")
        assert (b.available, b.escrow, b.paid, b.deposited) == (
            self.available, escrow, sum(self.paid.values()), self.deposited)
        assert b.available + b.escrow + b.paid == b.deposited
        assert sum(self.ledger.accounts().values()) == 0
        assert {j.job_id: j.state for j in self.ledger.jobs()} == {
            job(n): j["state"] for n, j in self.jobs.items()}


Books.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestBooks = Books.TestCase
