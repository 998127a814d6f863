"""The money path over memory hosts, against a real SQLite ledger: the quote is escrowed
before inputs move, an accepted result releases its charge (receipt and cheque reach the
provider), a rejected one and a timeout are refunded with signed evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ledger import InsufficientFunds, Ledger
from node.errors import PeerGone, PeerTimeout, PriceRefused
from node.net.memory import MemoryHost, memory_network
from node.requester import events
from node.requester.exchange import run_job
from node.requester.payments import Payments
from protocol import Cheque, Identity, open_signed
from tests.node.requester.fake_provider import FakeProvider, job_request, providers

FUNDS = 10_000


@asynccontextmanager
async def session(tmp_path: Path, *, funds: int = FUNDS, **fake: Any
                  ) -> AsyncIterator[tuple[Payments, FakeProvider, Ledger, MemoryHost,
                                           list[events.Event]]]:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        if funds:
            ledger.deposit(funds)
        async with memory_network() as net:
            (provider,) = providers(net, 1, **fake)
            host = net.add(me)
            seen: list[events.Event] = []
            yield Payments(ledger, host, emit=seen.append), provider, ledger, host, seen
            await trio.testing.wait_all_tasks_blocked()


async def test_the_quote_is_escrowed_and_an_accepted_result_releases_its_charge(
        tmp_path: Path) -> None:
    async with session(tmp_path) as (pay, provider, ledger, host, seen):
        outcome = await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                                tmp_path / "out", payments=pay)
        job_id = outcome.result.job_id
        assert ledger.job(job_id).state == "locked" and ledger.job(job_id).amount == 1_000
        assert ledger.balance().escrow == 1_000 and pay.is_locked(job_id)
        assert provider.settled == []  # nothing is paid until the caller accepts
        await pay.accept(outcome.signed)
        await trio.testing.wait_all_tasks_blocked()
        job = ledger.job(job_id)
        assert (job.state, job.charge, job.result) == ("released", 400, outcome.signed.digest)
        assert ledger.balance().available == FUNDS - 400 and ledger.balance().escrow == 0
        (receipt,) = provider.receipts()
        assert (receipt.outcome, receipt.charge, receipt.job_id) == ("accepted", 400, job_id)
        cheque = open_signed(provider.settled[0].cheque, Cheque).message
        assert cheque.payee == provider.peer_id and pay.paid == 400 and pay.unsettled == 0
        await pay.accept(outcome.signed)  # a second accept pays nothing more
        assert ledger.balance().available == FUNDS - 400 and len(provider.settled) == 1
        paid = [e for e in seen if isinstance(e, events.Paid)]
        assert [(e.amount, e.refunded) for e in paid] == [(400, 600)]


async def test_a_rejected_result_is_refunded_with_a_signed_rejection(tmp_path: Path) -> None:
    async with session(tmp_path) as (pay, provider, ledger, host, _):
        outcome = await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                                tmp_path / "out", payments=pay)
        await pay.reject(outcome.signed, "outvoted")
        await trio.testing.wait_all_tasks_blocked()
        job = ledger.job(outcome.result.job_id)
        assert (job.state, job.reason) == ("refunded", "rejected")
        assert ledger.balance().available == FUNDS
        (receipt,) = provider.receipts()
        assert (receipt.outcome, receipt.reason, receipt.charge) == ("rejected", "outvoted", 0)
        assert receipt.result_digest == outcome.signed.digest
        assert provider.settled[0].cheque == b""


async def test_a_provider_that_stalls_after_the_quote_is_refunded_as_a_timeout(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with session(tmp_path, script=["stall"]) as (pay, provider, ledger, host, seen):
        with pytest.raises(PeerTimeout, match=r"^no slot or place in line from \w{16} within "
                           r"15 s$"):
            await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                          tmp_path / "out", payments=pay)
        await trio.testing.wait_all_tasks_blocked()
        (job,) = ledger.jobs()
        assert (job.state, job.reason, job.amount) == ("refunded", "timeout", 1_000)
        assert ledger.balance().available == FUNDS and pay.unsettled == 0
        (receipt,) = provider.receipts()
        assert (receipt.outcome, receipt.result_digest) == ("timeout", "")
        assert [e.reason for e in seen if isinstance(e, events.Refunded)] == ["timeout"]


async def test_a_provider_that_vanishes_is_refunded_without_evidence(tmp_path: Path) -> None:
    async with session(tmp_path, script=["vanish"]) as (pay, provider, ledger, host, _):
        with pytest.raises(PeerGone, match=r"went away while running job"):
            await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                          tmp_path / "out", payments=pay)
        (job,) = ledger.jobs()
        assert (job.state, job.reason) == ("refunded", "failed")
        assert ledger.balance().available == FUNDS and provider.settled == []


async def test_a_quote_the_ledger_cannot_cover_is_declined_and_nothing_moves(
        tmp_path: Path) -> None:
    async with session(tmp_path, funds=500) as (pay, provider, ledger, host, _):
        with pytest.raises(InsufficientFunds):
            await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                          tmp_path / "out", payments=pay)
        await trio.testing.wait_all_tasks_blocked()
        assert ledger.jobs() == [] and ledger.balance().available == 500
        assert provider.inputs == {} and len(provider.declined) == 1
        assert provider.declined[0].startswith("requester: ")


async def test_a_price_refusal_locks_nothing(tmp_path: Path) -> None:
    async with session(tmp_path, max_charge=2_000_000) as (pay, provider, ledger, host, _):
        with pytest.raises(PriceRefused):
            await run_job(host, provider.ad(), job_request(tmp_path / "in",
                                                           max_price=1_000_000),
                          tmp_path / "out", payments=pay)
        assert ledger.jobs() == [] and pay.unsettled == 0


async def test_settle_all_refunds_what_the_session_still_holds(tmp_path: Path) -> None:
    async with session(tmp_path) as (pay, provider, ledger, host, _):
        outcome = await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                                tmp_path / "out", payments=pay)
        await pay.settle_all("cancelled")
        job = ledger.job(outcome.result.job_id)
        assert (job.state, job.reason) == ("refunded", "cancelled") and pay.unsettled == 0
        assert ledger.balance().available == FUNDS
