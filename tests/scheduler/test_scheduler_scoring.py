"""Offer scoring: each signal moves the score the right way; rank is best-first and stable."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import CapacityAd, Device, Identity, Price, Resources
from scheduler.scoring import (
    PER_AD_BELOW,
    AdColumns,
    DefaultStrategy,
    JobEstimate,
    Observations,
    ScoreArrays,
    ScoreParts,
    rank,
    rank_columns,
)
from scheduler.vivaldi import Coord, to_ad
from tests.factories import plain_ad

NOW = 1_000_000
PEERS = [Identity.generate().peer_id for _ in range(6)]
D1, D2 = "a" * 64, "b" * 64
CPU_JOB = JobEstimate(resources=Resources(cpus=2, max_seconds=3600), gflop=1000.0)
GPU_JOB = JobEstimate(resources=Resources(gpus=1, cpus=1, max_seconds=3600), gflop=1e6)
DATA_JOB = JobEstimate(resources=Resources(), gflop=100.0, input_digests=(D1, D2),
                       input_bytes_by_digest={D1: 750_000_000, D2: 250_000_000})
OBS = Observations()
DEFAULT = DefaultStrategy()


def cpu(gflops: float = 100.0) -> Device:
    return Device(kind="cpu", model="c", memory_mb=8192, compute_capability="", count=1,
                  gflops=gflops)


def gpu(gflops: float, count: int = 1, utilization: float = 0.0) -> Device:
    return Device(kind="cuda", model="g", memory_mb=81920, compute_capability="9.0",
                  count=count, gflops=gflops, utilization=utilization)


def ad(peer: int = 0, **changes: object) -> CapacityAd:
    return plain_ad(**{"peer_id": PEERS[peer], "cpus": 2, "devices": (cpu(),),
                       "price": Price(per_cpu_second=100), "sandbox_tier": "A", **changes})


def best(ads: list[CapacityAd], job: JobEstimate = CPU_JOB, obs: Observations = OBS,
         strategy: DefaultStrategy = DEFAULT) -> CapacityAd:
    return rank(ads, job, obs, strategy=strategy, now_ms=NOW)[0][0]


def parts(a: CapacityAd, job: JobEstimate = CPU_JOB, obs: Observations = OBS) -> ScoreParts:
    return DefaultStrategy().score(a, job, obs, now_ms=NOW)


TIME_IS_MONEY = DefaultStrategy(value_of_time_credits_per_s=1.0)
TIME_IS_FREE = DefaultStrategy(value_of_time_credits_per_s=0.0)


@pytest.mark.parametrize(("name", "a", "b", "job", "strategy"), [
    ("cheaper wins", ad(price=Price(per_cpu_second=50)), ad(1), CPU_JOB, DefaultStrategy()),
    ("cheaper start fee wins", ad(price=Price(per_cpu_second=100, start=5)), ad(1, price=Price(
        per_cpu_second=100, start=500_000)), CPU_JOB, DefaultStrategy()),
    ("faster wins when time matters", ad(devices=(cpu(1000.0),), price=Price(per_cpu_second=1)),
     ad(1, devices=(cpu(1.0),), price=Price()), CPU_JOB, TIME_IS_MONEY),
    ("free slow wins when time is free", ad(devices=(cpu(1.0),), price=Price()),
     ad(1, devices=(cpu(1000.0),), price=Price(per_cpu_second=1)), CPU_JOB, TIME_IS_FREE),
    ("idle beats loaded", ad(load=0.1), ad(1, load=0.9), CPU_JOB, DefaultStrategy()),
    ("GPU job rates GPUs", ad(devices=(cpu(1.0), gpu(50_000.0))),
     ad(1, devices=(cpu(5000.0), gpu(1_000.0))), GPU_JOB, TIME_IS_MONEY),
    ("cached inputs win", ad(cached=(D1,)), ad(1), DATA_JOB, DefaultStrategy()),
])
def test_pairwise_preference(name: str, a: CapacityAd, b: CapacityAd, job: JobEstimate,
                             strategy: DefaultStrategy) -> None:
    assert best([b, a], job, strategy=strategy) is a, name
    assert best([a, b], job, strategy=strategy) is a, name


def test_cached_inputs_reduce_transfer_and_raise_locality() -> None:
    none, some, all_ = (parts(ad(cached=c), DATA_JOB) for c in ((), (D1,), (D1, D2)))
    assert none.transfer_s == pytest.approx(1e9 * 8 / 50e6)
    assert some.transfer_s == pytest.approx(0.25e9 * 8 / 50e6)
    assert all_.transfer_s == 0.0
    assert (none.locality, some.locality, all_.locality) == (0.0, 0.75, 1.0)
    assert parts(ad()).locality == 1.0  # no inputs: nothing to move


@pytest.mark.parametrize(("obs", "coords", "want"), [
    (Observations(rtt_ms={PEERS[0]: 7.0}, local_coord=Coord(x=0.0, y=0.0, height=1.0)),
     (30.0, 40.0, 1.0, 0.2), 7.0),
    (Observations(local_coord=Coord(x=0.0, y=0.0, height=1.0)), (30.0, 40.0, 1.0, 0.2), 52.0),
    (Observations(rtt_ms={PEERS[0]: math.nan}, local_coord=Coord(x=0.0, y=0.0, height=1.0)),
     (30.0, 40.0, 1.0, 0.2), 52.0),
    (Observations(local_coord=Coord()), (), 50.0),
    (Observations(local_coord=Coord()), (1.0, 2.0), 50.0),
    (Observations(), (30.0, 40.0, 1.0, 0.2), 50.0),
])
def test_rtt_measured_then_vivaldi_then_default(obs: Observations, coords: tuple[float, ...],
                                                 want: float) -> None:
    a = ad(coords=coords)
    assert parts(a, obs=obs).rtt_ms == pytest.approx(want)
    assert rank([a], CPU_JOB, obs, now_ms=NOW)[0][1].rtt_ms == pytest.approx(want)


def test_closer_wins_by_vivaldi() -> None:
    obs = Observations(local_coord=Coord(x=0.0, y=0.0, height=1.0, error=0.2))
    near = ad(coords=to_ad(Coord(x=5.0, y=0.0, height=1.0, error=0.2)))
    far = ad(1, coords=to_ad(Coord(x=500.0, y=0.0, height=1.0, error=0.2)))
    assert best([far, near], obs=obs, strategy=TIME_IS_MONEY) is near


def test_reputation_prior_and_penalty_ordering() -> None:
    obs = Observations(reputation={PEERS[0]: 0.9, PEERS[1]: 0.1})
    good, bad, stranger = ad(0), ad(1), ad(2)
    ranked = rank([bad, stranger, good], CPU_JOB, obs, now_ms=NOW)
    assert [a for a, _ in ranked] == [good, stranger, bad]
    assert [p.reputation for _, p in ranked] == [0.9, 0.5, 0.1]
    neutral = ranked[1][1]
    assert neutral.total == pytest.approx(neutral.cost_credits + 0.001 * neutral.seconds)
    assert ranked[2][1].total == pytest.approx(neutral.total * 1.4)


@pytest.mark.parametrize(("load", "factor"), [(0.0, 1.0), (0.5, 2.0), (0.75, 4.0),
                                              (0.95, 10.0), (1.0, 10.0)])
def test_load_inflates_compute_time(load: float, factor: float) -> None:
    base = parts(ad()).seconds - 0.05
    assert parts(ad(load=load)).seconds - 0.05 == pytest.approx(base * factor)


def test_gpu_job_uses_gpu_throughput_and_utilization() -> None:
    fast = parts(ad(devices=(cpu(1.0), gpu(10_000.0))), GPU_JOB)
    assert fast.seconds == pytest.approx(1e6 / 10_000.0 + 0.05)
    two = parts(ad(devices=(gpu(10_000.0, count=2),)),
                dataclasses.replace(GPU_JOB, resources=Resources(gpus=2, max_seconds=3600)))
    assert two.seconds == pytest.approx(1e6 / 20_000.0 + 0.05)
    busy = parts(ad(devices=(gpu(10_000.0, utilization=0.5),)), GPU_JOB)
    assert busy.seconds == pytest.approx(2e6 / 10_000.0 + 0.05)
    unknown = parts(ad(devices=(gpu(0.0),)), GPU_JOB)
    assert unknown.seconds == pytest.approx(1e6 / 1000.0 + 0.05)


def test_cost_uses_estimated_seconds_not_the_timeout() -> None:
    p = parts(ad(price=Price(per_cpu_second=1_000_000)))  # 1 credit per cpu-second
    # 1000 GFLOP at 100 GFLOP/s on 2 of 2 cores: 10 s on 2 cpus
    assert p.cost_credits == pytest.approx(20.0)


def test_expired_ads_rank_last() -> None:
    dead, live = ad(expires=NOW, price=Price()), ad(1)
    ranked = rank([dead, live], CPU_JOB, OBS, now_ms=NOW)
    assert [a for a, _ in ranked] == [live, dead]
    assert ranked[1][1].total == math.inf


def test_rank_is_stable_best_first_and_limited() -> None:
    same = [ad(i) for i in range(4)]
    cheap = ad(5, price=Price())
    ranked = rank([*same, cheap], CPU_JOB, OBS, now_ms=NOW)
    assert [a for a, _ in ranked] == [cheap, *same]
    totals = [p.total for _, p in ranked]
    assert totals == sorted(totals)
    assert [a for a, _ in rank([*same, cheap], CPU_JOB, OBS, now_ms=NOW, limit=2)] == [
        cheap, same[0]]
    assert rank([], CPU_JOB, OBS, now_ms=NOW) == []


def test_fast_path_agrees_with_the_reference_score() -> None:
    rng = random.Random(3)
    ads = [ad(rng.randrange(6), load=rng.random(), cpus=rng.choice((1, 2, 8)),
              devices=(cpu(rng.choice((0.0, 50.0, 400.0))),
                       gpu(rng.choice((0.0, 9000.0)), rng.randrange(1, 4), rng.random())),
              price=Price(start=rng.randrange(1000), per_cpu_second=rng.randrange(100),
                          per_gpu_second=rng.randrange(1000), per_gb_second=rng.randrange(9),
                          per_gb_transfer=rng.randrange(10**6), minimum=rng.randrange(10**5)),
              cached=rng.choice(((), (D1,), (D2, D1))),
              coords=rng.choice(((), (1.0, 2.0, 3.0, 0.5))),
              expires=NOW + rng.randrange(-5, 5))
           for _ in range(200)]
    obs = Observations(rtt_ms={PEERS[1]: 12.0}, reputation={PEERS[2]: 0.8},
                       local_coord=Coord(x=3.0, y=3.0, height=1.0), bandwidth_mbps=100.0)
    for job in (CPU_JOB, GPU_JOB, DATA_JOB, JobEstimate(resources=Resources(gpus=2))):
        strategy = DefaultStrategy(use_bf16=job is GPU_JOB)
        for a, fast in rank(ads, job, obs, strategy=strategy, now_ms=NOW):
            slow = strategy.score(a, job, obs, now_ms=NOW)
            for f in dataclasses.fields(ScoreParts):
                assert getattr(fast, f.name) == pytest.approx(getattr(slow, f.name)), f.name


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RegionFirst:
    region: str

    def score(self, ad: CapacityAd, job: JobEstimate, obs: Observations, *,
              now_ms: int) -> ScoreParts:
        t = 0.0 if ad.region == self.region else 1.0
        return ScoreParts(cost_credits=0.0, seconds=0.0, transfer_s=0.0, rtt_ms=0.0,
                          reputation=0.5, locality=0.0, total=t)


def test_a_custom_strategy_plugs_in() -> None:
    us, eu, eu2 = ad(0, region="us"), ad(1, region="eu"), ad(2, region="eu")
    ranked = rank([us, eu, eu2], CPU_JOB, OBS, strategy=RegionFirst(region="eu"), now_ms=NOW)
    assert [a for a, _ in ranked] == [eu, eu2, us]


# --- the numpy path (DefaultStrategy.score_arrays over AdColumns) vs the per-ad reference

DIGESTS = [c * 64 for c in "abcdef"]
SMALL = st.floats(0.0, 1e5, allow_nan=False, allow_infinity=False)
WIDE = st.floats(-3e6, 3e6)
devices = st.builds(
    Device, kind=st.sampled_from(["cpu", "cuda"]), model=st.just("m"), memory_mb=st.just(1),
    compute_capability=st.just(""), count=st.integers(1, 64),
    gflops=st.sampled_from([0.0, 1.0, 9000.0]) | SMALL,
    bf16_gflops=st.sampled_from([0.0, 30000.0]) | SMALL, utilization=st.floats(0.0, 1.0))
coords = st.one_of(
    st.just(()),
    st.tuples(st.floats(-500, 500), st.floats(-500, 500), st.floats(0, 50), st.floats(0, 2)),
    st.tuples(WIDE, WIDE, WIDE, WIDE),  # often unusable (out of range): default RTT
    st.tuples(SMALL, SMALL))
prices = st.builds(Price, start=st.integers(0, 10**6), per_cpu_second=st.integers(0, 10**4),
                   per_gpu_second=st.integers(0, 10**5), per_gb_second=st.integers(0, 10**3),
                   per_gb_transfer=st.integers(0, 10**6), minimum=st.integers(0, 10**6))
ads_st = st.builds(
    lambda peer, **kw: ad(peer, **kw), peer=st.integers(0, len(PEERS) - 1),
    devices=st.lists(devices, max_size=5).map(tuple), cpus=st.integers(0, 128),
    price=prices, coords=coords, cached=st.lists(st.sampled_from(DIGESTS), max_size=4).map(
        tuple), load=st.floats(0.0, 1.0), expires=st.integers(NOW - 3, NOW + 3))
jobs = st.builds(
    JobEstimate,
    resources=st.builds(Resources, gpus=st.integers(0, 70), cpus=st.integers(1, 64),
                        memory_mb=st.integers(1, 10**6), max_seconds=st.integers(1, 604800)),
    gflop=st.sampled_from([0.0]) | st.floats(0.0, 1e9),
    input_digests=st.lists(st.sampled_from([*DIGESTS, "f" * 64]), max_size=5).map(tuple),
    input_bytes_by_digest=st.dictionaries(st.sampled_from(DIGESTS), st.integers(0, 10**12)))
peer_ids = st.sampled_from(PEERS)
observations = st.builds(
    Observations,
    rtt_ms=st.dictionaries(peer_ids, st.sampled_from([0.0, -1.0, math.nan, math.inf]) | SMALL),
    bandwidth_mbps=st.sampled_from([0.0, 50.0]) | SMALL,
    reputation=st.dictionaries(peer_ids, st.floats(0.0, 1.0)),
    local_coord=st.none() | st.builds(Coord, x=st.floats(-500, 500), y=st.floats(-500, 500),
                                      height=st.floats(0, 50)))
strategies = st.builds(DefaultStrategy, value_of_time_credits_per_s=st.floats(0.0, 10.0),
                       reputation_weight=st.floats(0.0, 2.0), use_bf16=st.booleans(),
                       max_load_inflation=st.floats(1.0, 100.0))


def assert_parts_match(fast: ScoreParts, slow: ScoreParts) -> None:
    for f in dataclasses.fields(ScoreParts):
        want = getattr(slow, f.name)
        assert getattr(fast, f.name) == pytest.approx(want, rel=1e-12, abs=1e-12), f.name


@settings(max_examples=150, deadline=None)
@given(ads=st.lists(ads_st, max_size=12), job=jobs, obs=observations, strategy=strategies,
       limit=st.none() | st.integers(0, 14))
def test_numpy_path_agrees_with_the_reference(
        ads: list[CapacityAd], job: JobEstimate, obs: Observations, strategy: DefaultStrategy,
        limit: int | None) -> None:
    ranked = rank_columns(AdColumns.of(ads), job, obs, strategy=strategy, now_ms=NOW,
                          limit=limit)
    assert len(ranked) == (len(ads) if limit is None else min(limit, len(ads)))
    for a, fast in ranked:
        assert_parts_match(fast, strategy.score(a, job, obs, now_ms=NOW))
    totals = [p.total for _, p in ranked]
    assert totals == sorted(totals)
    every = sorted(strategy.score(a, job, obs, now_ms=NOW).total for a in ads)
    assert totals == pytest.approx(every[:len(totals)], rel=1e-12, abs=1e-12)
    assert all(p.total == math.inf for a, p in ranked if a.expires <= NOW)


@pytest.mark.parametrize("n", [3, PER_AD_BELOW - 1, PER_AD_BELOW, 2 * PER_AD_BELOW])
def test_rank_per_ad_below_the_threshold_agrees_with_the_columns(n: int) -> None:
    rng = random.Random(n)
    ads = [ad(i % len(PEERS), cpus=rng.randint(1, 64), load=rng.random(),
              price=Price(start=rng.randint(0, 10**6), per_cpu_second=rng.randint(0, 10**4)))
           for i in range(n)]
    for job in (CPU_JOB, GPU_JOB, DATA_JOB):
        small = rank(ads, job, OBS, now_ms=NOW, limit=5)
        big = rank_columns(AdColumns.of(ads), job, OBS, now_ms=NOW, limit=5)
        assert [a for a, _ in small] == [a for a, _ in big]
        for (_, p), (_, q) in zip(small, big, strict=True):
            assert_parts_match(p, q)


def test_arrays_order_ties_limits_and_nan() -> None:
    nan, inf = math.nan, math.inf
    t = np.array([3.0, 1.0, inf, 1.0, nan, 0.5, 1.0])
    arrays = ScoreArrays(cost_credits=t, seconds=t, transfer_s=t, rtt_ms=t, reputation=t,
                         locality=t, total=t)
    assert arrays.order().tolist() == [5, 1, 3, 6, 0, 2, 4]
    assert arrays.order(3).tolist() == [5, 1, 3]
    assert arrays.order(0).tolist() == []
    assert arrays.order(-2).tolist() == [5, 1, 3, 6, 0]  # like slicing a list
    assert arrays.order(99).tolist() == [5, 1, 3, 6, 0, 2, 4]
    only_nan = np.array([nan, 2.0, nan])
    arrays = dataclasses.replace(arrays, total=only_nan)
    assert arrays.order(2).tolist() == [1, 0]
    assert [p.total for p in ScoreArrays.parts(arrays, [1])] == [2.0]


def test_columns_grow_and_index_gpu_groups() -> None:
    cols = AdColumns(capacity=1)
    small = ad(0, devices=(gpu(100.0, count=2),))
    big = ad(1, devices=tuple(gpu(float(r), count=c) for r, c in ((5.0, 3), (50.0, 1),
                                                                   (20.0, 2))))
    cols.extend([small])
    cols.extend([big, small])
    assert len(cols) == 3 and cols.rows_of(PEERS[0]) == {0, 2}
    # fastest first: 50 x1, 20 x2, 5 x3
    assert cols.gpu_throughput(1, bf16=False).tolist() == [100.0, 50.0, 100.0]
    assert cols.gpu_throughput(4, bf16=False).tolist() == [200.0, 95.0, 200.0]
    assert cols.gpu_throughput(99, bf16=False).tolist() == [200.0, 105.0, 200.0]
    cols.remove(0)  # the last row moves into row 0
    assert [a is small for a in cols.ads] == [True, False]
    assert cols.rows_of(PEERS[0]) == {0} and cols.rows_of(PEERS[1]) == {1}
    cols.set(1, small)
    assert cols.gpu_throughput(4, bf16=False).tolist() == [200.0, 200.0]
    with pytest.raises(IndexError, match="row 2 out of range for 2 rows"):
        cols.remove(2)
