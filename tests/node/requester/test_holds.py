"""Held payments: an unreplicated result's escrow stays locked for its hold, is released
when it ends, and refused (with signed evidence) to a provider caught meanwhile. Real
ledger and holds file under tmp_path; the provider is a scripted memory host."""

from __future__ import annotations

import json
from pathlib import Path

import trio
import trio.testing

from ledger import Ledger
from node.home import Home
from node.net.memory import memory_network
from node.requester.exchange import run_job
from node.requester.holds import Hold, HoldBook
from node.requester.payments import Payments
from protocol import Identity, sha256_hex
from tests.node.requester.fake_provider import job_request, providers


async def test_a_hold_keeps_the_escrow_locked_until_it_ends_then_pays(tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(10_000)
        async with memory_network() as net:
            (provider,) = providers(net, 1)
            pay = Payments(ledger, net.add(me), holds=HoldBook.load(tmp_path))
            outcome = await run_job(pay.host, provider.ad(),  # type: ignore[arg-type]
                                    job_request(tmp_path / "in"), tmp_path / "out",
                                    payments=pay)
            job_id = outcome.result.job_id
            assert await pay.hold(outcome.signed, 1000.0, strikes=0)
            assert pay.unsettled == 0  # the hold, not this session, owns it now
            (hold,) = HoldBook.load(tmp_path).all()  # on disk, for any later session
            assert (hold.job_id, hold.charge, hold.until) == (job_id, 400, 1000.0)
            assert await pay.settle_holds(999.0, lambda peer: 0) == []
            assert ledger.job(job_id).state == "locked" and provider.settled == []
            assert await pay.settle_holds(1000.0, lambda peer: 0) == []
            await trio.testing.wait_all_tasks_blocked()
        assert ledger.job(job_id).state == "released" and pay.holds.all() == []
        assert [r.outcome for r in provider.receipts()] == ["accepted"]
        assert ledger.balance().available == 10_000 - 400


async def test_a_provider_caught_during_the_hold_is_refused_the_payment(
        tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(10_000)
        async with memory_network() as net:
            (provider,) = providers(net, 1)
            pay = Payments(ledger, net.add(me), holds=HoldBook.load(tmp_path))
            outcome = await run_job(pay.host, provider.ad(),  # type: ignore[arg-type]
                                    job_request(tmp_path / "in"), tmp_path / "out",
                                    payments=pay)
            assert await pay.hold(outcome.signed, 1000.0, strikes=2)
            assert await pay.settle_holds(10.0, lambda peer: 2) == []  # not caught again
            refused = await pay.settle_holds(10.0, lambda peer: 3)
            await trio.testing.wait_all_tasks_blocked()
        assert [h.job_id for h in refused] == [outcome.result.job_id]
        job = ledger.job(outcome.result.job_id)
        assert (job.state, job.reason) == ("refunded", "rejected")
        (receipt,) = provider.receipts()
        assert receipt.outcome == "rejected" and receipt.result_digest == outcome.signed.digest
        assert ledger.balance().available == 10_000 and pay.holds.all() == []


async def test_nothing_is_held_without_an_escrow(tmp_path: Path) -> None:
    async with memory_network() as net:
        (provider,) = providers(net, 1)
        host = net.add()
        pay = Payments(None, host, holds=HoldBook.load(tmp_path))
        outcome = await run_job(host, provider.ad(), job_request(tmp_path / "in"),
                                tmp_path / "out", payments=pay)
        assert not await pay.hold(outcome.signed, 1000.0)
    assert not Home(tmp_path).holds.exists()


def test_two_books_on_one_home_merge_their_changes(tmp_path: Path) -> None:
    first, second = HoldBook.load(tmp_path), HoldBook.load(tmp_path)

    def hold(n: int) -> Hold:
        return Hold(job_id=sha256_hex(f"job {n}".encode()), provider="p", charge=n,
                    result_digest=sha256_hex(f"result {n}".encode()), until=float(n))

    first.add(hold(1))
    second.add(hold(2))  # read-merge-write: hold 1 survives
    assert sorted(h.charge for h in first.all()) == [1, 2]
    first.remove(hold(2).job_id)
    assert [h.charge for h in second.all()] == [1]
    assert [d["charge"] for d in json.loads(Home(tmp_path).holds.read_text())] == [1]
    memory = HoldBook(None)  # no home: kept in memory only
    memory.add(hold(3))
    assert [h.charge for h in memory.all()] == [3] and len(memory) == 1
