"""A distributed map over memory providers: items land in input order; a provider that
fails is dropped and its items move; a busy one is asked again; a straggler's copy is
refunded, never paid."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from ledger import Ledger
from node.net.memory import memory_network
from node.net.peers import PeerBook
from node.requester import events
from node.requester.mapper import run_map
from node.requester.payments import Payments
from protocol import Identity
from tests.node.requester.fake_provider import job_request, providers, ranked


async def test_items_move_off_a_failing_provider_and_land_in_order(tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(100_000)
        async with memory_network() as net:
            good, bad = providers(net, 2)
            bad.script = ["vanish"] * 20
            host = net.add(me)
            pay = Payments(ledger, host)
            seen: list[events.Event] = []
            requests = [job_request(tmp_path / f"in{i}", f"print({i})\n") for i in range(5)]
            report = await run_map(host, ranked(good, bad), requests, tmp_path / "out",
                                   peers=PeerBook(None), payments=pay, emit=seen.append,
                                   rng=random.Random(2))
            await trio.testing.wait_all_tasks_blocked()
        paid = ledger.balance().paid
    assert [i.index for i in report.items] == [0, 1, 2, 3, 4]
    assert all(i.outcome is not None and i.error is None for i in report.items)
    assert {i.outcome.result.provider for i in report.items if i.outcome} == {good.peer_id}
    for i in range(5):
        assert (tmp_path / "out" / str(i) / "out.txt").read_bytes() == b"ok"
    assert sorted(good.inputs) == ["job.py"] and len(good.specs) == 5
    assert 1 <= len(bad.specs) <= 2  # dropped after its first failure(s)
    assert [r.outcome for r in good.receipts()] == ["accepted"] * 5
    assert bad.settled == [] and paid == 5 * 400
    assert any(isinstance(e, events.Retried) and e.provider == bad.peer_id for e in seen)
    assert pay.unsettled == 0


async def test_an_item_no_provider_could_run_says_why(tmp_path: Path) -> None:
    async with memory_network() as net:
        (bad,) = providers(net, 1)
        bad.script = ["refuse"] * 10
        report = await run_map(net.add(), ranked(bad), [job_request(tmp_path / "in")],
                               tmp_path / "out", peers=PeerBook(None))
    (item,) = report.items
    assert item.outcome is None and item.attempts == 1
    assert item.error == (f"{bad.peer_id[:16]}: provider refused the job (bad_request): "
                          "not here")


async def test_a_busy_provider_is_asked_again_within_the_map(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_network() as net:
        (busy,) = providers(net, 1, retry_after_s=3.0)
        busy.script = ["busy", "busy"]
        seen: list[events.Event] = []
        report = await run_map(net.add(), ranked(busy), [job_request(tmp_path / "in")],
                               tmp_path / "out", peers=PeerBook(None), emit=seen.append,
                               per_provider=1, rng=random.Random(0))
    assert report.items[0].outcome is not None and len(busy.specs) == 3
    assert [e.tries for e in seen if isinstance(e, events.BusyRetry)] == [1, 2]
