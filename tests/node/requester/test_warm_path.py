"""The warm path of a session over memory hosts: a provider measured seconds ago is not
pinged again, receipts go out beside the next job (and all arrive), peers.json is not
rewritten when nothing changed, and every exchange says how long each phase took."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ledger import Ledger
from node.errors import PriceRefused
from node.net.host import Stream
from node.net.memory import MemoryHost, memory_network
from node.net.peers import RTT_FRESH_S, PeerBook
from node.requester import events
from node.requester.exchange import PHASES, run_job
from node.requester.payments import RECEIPTS_IN_FLIGHT, Payments
from node.requester.placement import Placer
from protocol import Identity, wire
from tests.node.requester.fake_provider import job_request, providers, ranked


def count_pings(host: MemoryHost) -> list[str]:
    pinged: list[str] = []
    real = host.ping

    async def ping(peer_id: str, **kw: Any) -> float:
        pinged.append(peer_id)
        return await real(peer_id, **kw)

    host.ping = ping  # type: ignore[method-assign]
    return pinged


async def test_a_provider_measured_seconds_ago_is_not_pinged_again(tmp_path: Path) -> None:
    async with memory_network() as net:
        (fake,) = providers(net, 1)
        me = net.add()
        pinged = count_pings(me)
        peers = PeerBook(None)
        for i in range(3):
            placer = Placer(host=me, peers=peers, rng=random.Random(i))
            got = await placer.place(ranked(fake), job_request(tmp_path / f"in{i}"),
                                     tmp_path / f"out{i}", deadline_s=60)
            assert got.outcome.result.provider == fake.peer_id
        assert pinged == [fake.peer_id]  # once for three jobs
        assert peers.measured_recently(fake.peer_id)
        # canary: once the measurement is older than RTT_FRESH_S it is taken again
        peers.measured_at[fake.peer_id] = time.monotonic() - RTT_FRESH_S - 1
        assert not peers.measured_recently(fake.peer_id)
        placer = Placer(host=me, peers=peers, rng=random.Random(9))
        await placer.place(ranked(fake), job_request(tmp_path / "in9"), tmp_path / "out9",
                           deadline_s=60)
        assert pinged == [fake.peer_id, fake.peer_id]


async def test_receipts_go_out_in_the_background_and_every_one_arrives(tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(10_000)
        async with memory_network() as net:
            (fake,) = providers(net, 1)
            host = net.add(me)
            pay = Payments(ledger, host)
            job_ids = []
            async with trio.open_nursery() as background:
                pay.background = background
                for i in range(3):
                    outcome = await run_job(host, fake.ad(), job_request(tmp_path / f"in{i}"),
                                            tmp_path / f"out{i}", payments=pay)
                    await pay.accept(outcome.signed)  # returns before the receipt is out
                    job_ids.append(outcome.result.job_id)
                    assert ledger.job(job_ids[-1]).state == "released"
            # the nursery closed only once every receipt was delivered
            assert sorted(r.job_id for r in fake.receipts()) == sorted(job_ids)
            assert all(r.outcome == "accepted" for r in fake.receipts())
            # a closed nursery: the settlement tells the provider itself
            outcome = await run_job(host, fake.ad(), job_request(tmp_path / "late"),
                                    tmp_path / "out-late", payments=pay)
            await pay.accept(outcome.signed)
            assert fake.receipts()[-1].job_id == outcome.result.job_id
            await trio.testing.wait_all_tasks_blocked()


async def test_background_receipts_to_one_provider_stay_within_its_stream_share(
        tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(100_000)
        async with memory_network() as net:
            (fake,) = providers(net, 1)
            now, most = 0, 0

            async def slow_settle(stream: Stream) -> None:
                nonlocal now, most
                now += 1
                most = max(most, now)
                try:
                    await trio.sleep(0.05)
                    await fake.handle_settle(stream)
                finally:
                    now -= 1

            fake.host.handle(wire.SETTLE_PROTOCOL, slow_settle)
            host = net.add(me)
            pay = Payments(ledger, host)
            outcomes = [await run_job(host, fake.ad(), job_request(tmp_path / f"in{i}"),
                                      tmp_path / f"out{i}", payments=pay) for i in range(12)]
            async with trio.open_nursery() as background:
                pay.background = background
                for outcome in outcomes:
                    await pay.accept(outcome.signed)
            assert sorted(r.job_id for r in fake.receipts()) == sorted(
                o.result.job_id for o in outcomes)  # none refused for want of a stream
            assert 1 < most <= RECEIPTS_IN_FLIGHT


async def test_a_declined_quote_is_refunded_and_nothing_stays_locked(tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(10_000)
        async with memory_network() as net:
            (fake,) = providers(net, 1, max_charge=5_000)
            host = net.add(me)
            pay = Payments(ledger, host)
            async with trio.open_nursery() as background:
                pay.background = background
                request = job_request(tmp_path / "in", max_price=1_000)
                with pytest.raises(PriceRefused, match="above your cap"):
                    await run_job(host, fake.ad(), request, tmp_path / "out", payments=pay)
            assert ledger.balance().escrow == 0 and pay.unsettled == 0
            assert len(fake.declined) == 1


async def test_every_exchange_reports_its_phases_in_order(tmp_path: Path) -> None:
    seen: list[events.Event] = []
    async with memory_network() as net:
        (fake,) = providers(net, 1)
        host = net.add()
        await run_job(host, fake.ad(), job_request(tmp_path / "in"), tmp_path / "out",
                      emit=seen.append)
    timings = [e for e in seen if isinstance(e, events.Timing)]
    assert tuple(t.phase for t in timings) == PHASES
    assert all(t.ms >= 0 and t.provider == fake.peer_id and len(t.job_id) == 64
               for t in timings)


def test_peers_json_is_rewritten_only_when_something_changed(tmp_path: Path) -> None:
    book = PeerBook.load(tmp_path)
    assert book.path is not None
    book.save()
    assert not book.path.exists()  # nothing to say yet
    book.record_rtt("peer-a", 3.0, ())
    book.save()
    first = book.path.read_text()
    book.path.write_text(first.replace("peer-a", "peer-b"))  # another process's save
    book.save()  # nothing changed here since: the other process's file stays
    assert "peer-b" in book.path.read_text()
    book.record_rtt("peer-a", 5.0, ())  # canary: a change is written (and merged)
    book.save()
    saved = book.path.read_text()
    assert "peer-a" in saved and "peer-b" in saved
