"""Placing one job over memory hosts: scripted providers speak the real frames, signed by
real identities; no sockets, no processes, a virtual clock where time matters."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ledger import Ledger
from node.errors import NoProviders, PeerRefused, PriceRefused, ResultRejected
from node.net.memory import memory_network
from node.net.peers import PeerBook
from node.requester import events
from node.requester.exchange import run_job
from node.requester.payments import Payments
from node.requester.placement import Placer, verification_policy
from protocol import Identity
from tests.node.requester.fake_provider import job_request, providers, ranked


def placer(host: Any, **kw: Any) -> tuple[Placer, list[events.Event]]:
    seen: list[events.Event] = []
    return Placer(host=host, peers=PeerBook(None), rng=random.Random(1), emit=seen.append,
                  **kw), seen


async def test_a_job_runs_on_the_best_provider_and_its_outputs_arrive(tmp_path: Path) -> None:
    async with memory_network() as net:
        best, other = providers(net, 2)
        me = net.add()
        p, seen = placer(me)
        request = job_request(tmp_path / "in", files={"data.bin": b"\x00" * 3_000_000})
        got = await p.place(ranked(best, other), request, tmp_path / "out", deadline_s=60)
    assert got.outcome.result.provider == best.peer_id and got.attempts == ()
    assert got.outcome.result.stdout == "42\n" and got.verification == "none"
    assert (tmp_path / "out" / "out.txt").read_bytes() == b"ok"
    assert best.inputs == {"job.py": b"print(42)\n", "data.bin": b"\x00" * 3_000_000}
    assert [s.requester for s in best.specs] == [me.peer_id] and other.specs == []
    kinds = [type(e).__name__ for e in seen]
    assert kinds[:2] == ["Route", "Quoted"] and "Uploading" in kinds and "LogLine" in kinds
    assert [e.route for e in seen if isinstance(e, events.Route)] == ["direct"]
    assert kinds[-1] == "Verified"


@pytest.mark.parametrize(("move", "error"), [
    ("vanish", r"^provider \w{16} went away while running job \w{12}; nothing was charged$"),
    ("refuse", r"provider refused the job \(bad_request\): not here"),
    ("forged", "result is not intact"),
])
async def test_a_provider_that_fails_is_replaced_by_the_next(tmp_path: Path, move: str,
                                                             error: str) -> None:
    async with memory_network() as net:
        bad, good = providers(net, 2)
        bad.script = [move]  # type: ignore[list-item]
        p, seen = placer(net.add())
        got = await p.place(ranked(bad, good), job_request(tmp_path / "in"), tmp_path / "out",
                            deadline_s=60)
    assert got.outcome.result.provider == good.peer_id
    assert [a.provider for a in got.attempts] == [bad.peer_id]
    assert re.search(error, got.attempts[0].error), got.attempts[0].error
    assert [e.provider for e in seen if isinstance(e, events.Retried)] == [bad.peer_id]


async def test_when_every_provider_fails_the_error_names_each(tmp_path: Path) -> None:
    async with memory_network() as net:
        a, b = providers(net, 2)
        a.script, b.script = ["refuse"], ["vanish"]
        p, _ = placer(net.add())
        with pytest.raises(NoProviders, match=rf"^every candidate provider failed \("
                           rf"{a.peer_id[:16]}: provider refused the job \(bad_request\): "
                           rf"not here; {b.peer_id[:16]}: "):
            await p.place(ranked(a, b), job_request(tmp_path / "in"), tmp_path / "out",
                          deadline_s=60)


async def test_a_provider_taken_off_the_network_is_skipped(tmp_path: Path) -> None:
    async with memory_network() as net:
        gone, good = providers(net, 2)
        net.take_down(gone.peer_id)
        p, _ = placer(net.add())
        got = await p.place(ranked(gone, good), job_request(tmp_path / "in"),
                            tmp_path / "out", deadline_s=60)
    assert got.outcome.result.provider == good.peer_id
    assert "could not open /offload/job/1.0.0" in got.attempts[0].error


async def test_a_busy_provider_is_asked_again_after_its_retry_after(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_network() as net:
        (busy,) = providers(net, 1, retry_after_s=5.0)
        busy.script = ["busy", "busy"]
        p, seen = placer(net.add())
        start = trio.current_time()
        got = await p.place(ranked(busy), job_request(tmp_path / "in"), tmp_path / "out",
                            deadline_s=120)
    assert got.outcome.result.provider == busy.peer_id and got.attempts == ()
    assert len(busy.specs) == 3  # each try is a fresh, freshly signed spec
    retries = [e for e in seen if isinstance(e, events.BusyRetry)]
    assert [e.tries for e in retries] == [1, 2]
    assert trio.current_time() - start >= 10.0


async def test_a_provider_that_goes_silent_times_out_and_the_next_delivers(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    async with memory_network() as net:
        silent, good = providers(net, 2)
        silent.script = ["silent"]
        p, _ = placer(net.add())
        got = await p.place(ranked(silent, good), job_request(tmp_path / "in"),
                            tmp_path / "out", deadline_s=600)
    assert got.outcome.result.provider == good.peer_id
    assert got.attempts[0].error.startswith(f"provider {silent.peer_id[:16]} sent no quote")


async def test_redundancy_outvotes_a_wrong_provider_and_pays_only_the_agreeing(
        tmp_path: Path) -> None:
    me = Identity.generate()
    with Ledger.open(tmp_path / "ledger.db", me) as ledger:
        ledger.deposit(10_000)
        async with memory_network() as net:
            a, b, wrong = providers(net, 3)
            wrong.script = ["wrong"]
            host = net.add(me)
            pay = Payments(ledger, host)
            p, _ = placer(host, payments=pay, replicas=3,
                          policy=verification_policy(3, "none", PeerBook(None).trust))
            got = await p.place(ranked(a, b, wrong), job_request(tmp_path / "in"),
                                tmp_path / "out", deadline_s=60)
            await trio.testing.wait_all_tasks_blocked()
        assert {r.provider for r in got.replicas if r.agreed} == {a.peer_id, b.peer_id}
        assert [r.outcome for r in wrong.receipts()] == ["rejected"]
        assert [r.outcome for r in a.receipts() + b.receipts()] == ["accepted", "accepted"]
        assert ledger.balance().paid == 2 * 400
        assert pay.unsettled == 0


async def test_a_quote_above_the_cap_is_declined_before_any_input_moves(
        tmp_path: Path) -> None:
    async with memory_network() as net:
        (dear,) = providers(net, 1, max_charge=5_000_000)
        me = net.add()
        with pytest.raises(PriceRefused, match=r"^price: provider \w{16} asks up to 5.000000 "
                           r"credits for this job, above your cap of 1.000000; raise "
                           r"--max-price or ask for less time or fewer resources$"):
            await run_job(me, dear.ad(), job_request(tmp_path / "in", max_price=1_000_000),
                          tmp_path / "out")
        await trio.testing.wait_all_tasks_blocked()
    assert dear.inputs == {} and len(dear.declined) == 1
    assert dear.declined[0].startswith("price: provider")


async def test_a_result_from_another_signer_is_rejected(tmp_path: Path) -> None:
    async with memory_network() as net:
        (forger,) = providers(net, 1)
        forger.script = ["forged"]
        with pytest.raises(ResultRejected, match=r"^result is not intact"):
            await run_job(net.add(), forger.ad(), job_request(tmp_path / "in"),
                          tmp_path / "out")


async def test_a_busy_answer_is_a_named_refusal_to_run_job(tmp_path: Path) -> None:
    async with memory_network() as net:
        (busy,) = providers(net, 1)
        busy.script = ["busy"]
        with pytest.raises(PeerRefused, match=r"^provider refused the job \(busy\): all "
                           r"slots and the queue are full") as info:
            await run_job(net.add(), busy.ad(), job_request(tmp_path / "in"),
                          tmp_path / "out")
    assert info.value.retry_after_s == 5.0

