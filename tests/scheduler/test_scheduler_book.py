"""The offer book: one ad per peer (newest seq), removals keep the columns consistent, and
its ranking is the per-ad reference's."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import CapacityAd, Device, Identity, Price, Resources
from scheduler.book import OfferBook
from scheduler.scoring import (
    DefaultStrategy,
    JobEstimate,
    Observations,
    ScoreParts,
    rank,
)
from scheduler.vivaldi import Coord
from tests.factories import cpu_device, plain_ad

NOW = 1_000_000
PEERS = [Identity.generate().peer_id for _ in range(6)]
D1, D2, D3 = "a" * 64, "b" * 64, "c" * 64
DATA_GPU_JOB = JobEstimate(resources=Resources(gpus=2, cpus=2, max_seconds=3600), gflop=1e6,
                           input_digests=(D1, D2, D3),
                           input_bytes_by_digest={D1: 10**9, D2: 2 * 10**9, D3: 5 * 10**8})
OBS = Observations(rtt_ms={PEERS[1]: 9.0, PEERS[4]: math.nan},
                   reputation={PEERS[2]: 0.9, PEERS[3]: 0.1},
                   local_coord=Coord(x=1.0, y=2.0, height=1.0))
DEFAULT = DefaultStrategy()


def gpu(gflops: float, count: int) -> Device:
    return Device(kind="cuda", model="g", memory_mb=1, compute_capability="9.0", count=count,
                  gflops=gflops)


def ad(peer: int, seq: int = 1, groups: int = 1, **changes: object) -> CapacityAd:
    """An ad with `groups` distinct kinds of GPU (0-3)."""
    gpus = (gpu(1000.0 * (peer + 1), 1 + peer % 3), gpu(700.0, 1), gpu(5000.0, 2))[:groups]
    return plain_ad(**{
        "peer_id": PEERS[peer], "cpus": 8, "devices": (cpu_device(memory_mb=1, gflops=100.0),
                                                        *gpus),
        "price": Price(per_gpu_second=100 * (peer + 1), start=seq), "sandbox_tier": "A",
        "coords": (float(peer), 0.0, 1.0, 0.2), "seq": seq, **changes})


def check_against_reference(book: OfferBook, want: dict[str, CapacityAd]) -> None:
    assert len(book) == len(want)
    assert {a.peer_id: a for a in book} == want
    for peer, a in want.items():
        assert peer in book and book.get(peer) is a
    many_gpus = dataclasses.replace(DATA_GPU_JOB, resources=Resources(gpus=8))
    cpu_only = dataclasses.replace(DATA_GPU_JOB, resources=Resources(cpus=4))
    for job in (DATA_GPU_JOB, many_gpus, cpu_only):
        ranked = book.rank(job, OBS, now_ms=NOW)
        assert {a.peer_id for a, _ in ranked} == set(want)
        for a, fast in ranked:
            slow = DEFAULT.score(a, job, OBS, now_ms=NOW)
            for f in dataclasses.fields(ScoreParts):
                assert getattr(fast, f.name) == pytest.approx(getattr(slow, f.name),
                                                              rel=1e-12)
        totals = [p.total for _, p in ranked]
        assert totals == sorted(totals)


def test_newer_seq_replaces_older_and_stale_is_ignored() -> None:
    book = OfferBook()
    first = ad(0, seq=5)
    assert book.add(first) and len(book) == 1
    assert not book.add(ad(0, seq=5, load=0.5))  # same seq: kept the first
    assert not book.add(ad(0, seq=4))
    assert book.get(PEERS[0]) is first
    newer = ad(0, seq=6, cached=(D1,))
    assert book.add(newer) and book.get(PEERS[0]) is newer and len(book) == 1
    assert book.columns.rows_caching(D1).tolist() == [0]
    assert book.get(PEERS[1]) is None and PEERS[1] not in book and 42 not in book


def test_update_keeps_the_newest_per_peer_and_counts_stored() -> None:
    book = OfferBook([ad(0, seq=2)])
    stored = book.update([ad(1, seq=1), ad(1, seq=3), ad(1, seq=2), ad(0, seq=1),
                          ad(0, seq=9), ad(2)])
    assert stored == 3  # peer 1 (seq 3), peer 0 (seq 9), peer 2
    assert {a.peer_id: a.seq for a in book} == {PEERS[0]: 9, PEERS[1]: 3, PEERS[2]: 1}
    assert book.update([]) == 0


def test_discard_and_prune() -> None:
    book = OfferBook([ad(0), ad(1, expires=NOW), ad(2, cached=(D2,)),
                      ad(3, expires=NOW - 5, cached=(D2,)), ad(4)])
    assert book.discard(PEERS[0]) and not book.discard(PEERS[0])
    assert book.prune(NOW) == 2
    assert {a.peer_id for a in book} == {PEERS[2], PEERS[4]}
    assert [book.columns.ads[r].peer_id for r in book.columns.rows_caching(D2)] == [PEERS[2]]
    assert book.prune(NOW) == 0
    check_against_reference(book, {PEERS[2]: book.get(PEERS[2]),  # type: ignore[dict-item]
                                   PEERS[4]: book.get(PEERS[4])})  # type: ignore[dict-item]


def test_book_ranks_like_scoring_rank() -> None:
    ads = [ad(i, cached=((D1,), (D2, D3), ())[i % 3], load=i / 10) for i in range(6)]
    book = OfferBook(ads)
    want = rank(ads, DATA_GPU_JOB, OBS, now_ms=NOW)
    assert book.rank(DATA_GPU_JOB, OBS, now_ms=NOW) == want
    assert book.rank(DATA_GPU_JOB, OBS, now_ms=NOW, limit=2) == want[:2]
    arrays = book.scores(DATA_GPU_JOB, OBS, now_ms=NOW)
    assert [book.columns.ads[i] for i in arrays.order().tolist()] == [a for a, _ in want]
    assert OfferBook().rank(DATA_GPU_JOB, OBS, now_ms=NOW) == []


@dataclasses.dataclass(frozen=True, slots=True)
class CheapestStart:
    """A custom strategy without score_arrays: scored once per ad."""

    def score(self, ad: CapacityAd, job: JobEstimate, obs: Observations, *,
              now_ms: int) -> ScoreParts:
        t = float(ad.price.start)
        return ScoreParts(cost_credits=t, seconds=0.0, transfer_s=0.0, rtt_ms=0.0,
                          reputation=0.5, locality=1.0, total=t)


def test_a_custom_strategy_ranks_the_book() -> None:
    book = OfferBook([ad(0, seq=3), ad(1, seq=1), ad(2, seq=2)])
    ranked = book.rank(DATA_GPU_JOB, OBS, now_ms=NOW, strategy=CheapestStart(), limit=2)
    assert [(a.peer_id, p.total) for a, p in ranked] == [(PEERS[1], 1.0), (PEERS[2], 2.0)]


ops = st.lists(st.tuples(st.sampled_from(["add", "discard", "prune", "update"]),
                         st.integers(0, 5), st.integers(1, 4), st.integers(0, 3),
                         st.lists(st.sampled_from([D1, D2, D3]), max_size=3)),
               max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=ops, seed=st.integers(0, 2**16))
def test_any_history_matches_a_dict_of_newest_ads(
        ops: list[tuple[str, int, int, int, list[str]]], seed: int) -> None:
    rng = random.Random(seed)
    book, want = OfferBook(), dict[str, CapacityAd]()
    for op, peer, seq, groups, cached in ops:
        a = ad(peer, seq=seq, groups=groups, cached=tuple(cached), load=rng.random(),
               expires=NOW + rng.choice((-1, 0, 1000)))
        if op == "add" or op == "update":
            stored = book.add(a) if op == "add" else book.update([a]) == 1
            old = want.get(a.peer_id)
            assert stored is (old is None or seq > old.seq)
            if stored:
                want[a.peer_id] = a
        elif op == "discard":
            assert book.discard(a.peer_id) is (want.pop(a.peer_id, None) is not None)
        else:
            dead = [p for p, x in want.items() if x.expires <= NOW]
            assert book.prune(NOW) == len(dead)
            for p in dead:
                del want[p]
        cols = book.columns
        for d in (D1, D2, D3):
            assert {cols.ads[r].peer_id for r in cols.rows_caching(d).tolist()} == {
                p for p, x in want.items() if d in x.cached}
    check_against_reference(book, want)
