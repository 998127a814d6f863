"""Reputation from receipts: the numbers behind 'slow to earn, fast to lose' and sybil rings."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import Ledger, Params
from ledger.reputation import Tally, reputations, score, trust
from tests.ledger.conftest import ALICE, BOB, CAROL, RESULT, Clock, job

ME = "me"
RING = [f"R{i}" for i in range(10)]


def ring_praise() -> dict[tuple[str, str], Tally]:
    """Ten fresh identities, each with 50 accepted receipts about each of the others."""
    return {(a, b): Tally(good=50) for a in RING for b in RING if a != b}


def test_strangers_are_neutral_and_direct_experience_counts_slowly() -> None:
    assert reputations({}, ME) == {}
    assert score(0, 0) == 0.5
    assert reputations({(ME, "H"): Tally(good=1)}, ME)["H"] == pytest.approx(6 / 11)  # 0.545
    assert reputations({(ME, "H"): Tally(good=10)}, ME)["H"] == 0.75


def test_slow_to_earn_fast_to_lose() -> None:
    assert reputations({(ME, "H"): Tally(good=10, bad=1)}, ME)["H"] == 0.6
    # one timeout undid the last 10 good jobs; getting back to 0.75 takes 15 more
    assert reputations({(ME, "H"): Tally(good=25, bad=1)}, ME)["H"] == 0.75
    assert reputations({(ME, "H"): Tally(bad=1)}, ME)["H"] == pytest.approx(1 / 3)


def test_a_ring_of_fresh_identities_gains_nothing() -> None:
    evidence = {(ME, "H"): Tally(good=10), ("H", "P"): Tally(good=20), **ring_praise()}
    reps = reputations(evidence, ME)
    # 4500 mutual praises from identities no one we trust has worked with: exactly neutral
    assert {reps[r] for r in RING} == {0.5}
    assert max(trust(evidence, ME).get(r, 0.0) for r in RING) == 0.0
    # 20 receipts from H, whom we used 10 times, move P: hearsay from a trusted rater counts
    assert reps["P"] == pytest.approx(0.6)


def test_a_ring_with_a_foothold_gains_little() -> None:
    """One ring member did one real job for us: trust leaks into the ring, but every other
    member stays below what a single good job of our own is worth (0.545)."""
    evidence = {(ME, "H"): Tally(good=10), ("H", "P"): Tally(good=20), **ring_praise(),
                (ME, "R1"): Tally(good=1)}
    reps = reputations(evidence, ME)
    assert max(reps[r] for r in RING if r != "R1") == pytest.approx(0.5212, abs=1e-4)
    assert reps["R1"] == pytest.approx(0.5542, abs=1e-4)
    assert max(reps[r] for r in RING if r != "R1") < score(1, 0) < reps["R1"] < reps["P"]


def test_strangers_cannot_slander_a_provider_we_know() -> None:
    evidence = {(ME, "H"): Tally(good=10)}
    evidence.update({(f"S{i}", "H"): Tally(bad=10) for i in range(10)})
    assert reputations(evidence, ME)["H"] == 0.75
    # the same complaints from a rater we trust do count
    evidence[(ME, "S0")] = Tally(good=10)
    assert reputations(evidence, ME)["H"] < 0.6


def test_pre_trusted_peers_weigh_like_a_capped_rater() -> None:
    evidence = {("X", "P"): Tally(good=20)}
    assert reputations(evidence, ME)["P"] == 0.5
    assert reputations(evidence, ME, pre_trusted=["X"])["P"] == pytest.approx(2 / 3)


def test_the_ledger_weighs_its_own_receipts_and_gossip(tmp_path: Path, clock: Clock) -> None:
    with Ledger.open(tmp_path / "l.db", ALICE, clock=clock) as mine, \
            Ledger.open(tmp_path / "b.db", BOB, clock=clock) as bobs:
        mine.deposit(100)
        bobs.deposit(100)
        for n in range(10):
            mine.lock(job(n), BOB.peer_id, 1)
            mine.release(job(n), 1, result_digest=RESULT)
            bobs.lock(job(f"b{n}"), CAROL.peer_id, 1)
            bobs.release(job(f"b{n}"), 1, result_digest=RESULT)  # bob (a provider) praises carol
        assert mine.reputation(BOB.peer_id) == 0.75
        assert mine.reputation(CAROL.peer_id) == 0.5  # nothing heard yet
        for r in bobs.receipts():
            assert mine.record_receipt(r.raw) is not None
        assert 0.5 < mine.reputation(CAROL.peer_id) < 0.75
        assert mine.reputations().keys() == {BOB.peer_id, CAROL.peer_id}


def test_only_the_latest_receipts_count(tmp_path: Path, clock: Clock) -> None:
    with Ledger.open(tmp_path / "l.db", ALICE, clock=clock, params=Params(pair_cap=3)) as led:
        led.deposit(100)
        for n, good in enumerate([True] * 5 + [False] * 3):
            clock.now += 1000
            led.lock(job(n), BOB.peer_id, 1)
            if good:
                led.release(job(n), 1, result_digest=RESULT)
            else:
                led.refund(job(n), "timeout")
        assert led.evidence() == {(ALICE.peer_id, BOB.peer_id): Tally(good=0, bad=3)}
        assert led.reputation(BOB.peer_id) == pytest.approx(5 / 25)
