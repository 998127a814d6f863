"""The offload decision: local, offload or split, with the numbers behind it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import CapacityAd, Device, Price, Resources
from scheduler.decide import LocalCapacity, Plan, allocate, decide, gflop_estimate
from scheduler.scoring import JobEstimate, Observations, rank
from tests.factories import NOW
from tests.factories import plain_ad as ad


def cpu_ad(gflops: float, *, per_cpu_second: int = 0, load: float = 0.0) -> CapacityAd:
    return ad(devices=(Device(kind="cpu", model="c", memory_mb=8192, compute_capability="",
                              count=1, gflops=gflops),),
              price=Price(per_cpu_second=per_cpu_second), load=load)


def plan(job: JobEstimate, local: LocalCapacity | None, ads: list[CapacityAd],
         **kw: float) -> Plan:
    ranked = rank(ads, job, Observations(), now_ms=NOW)
    return decide(job, local, ranked, **kw)  # type: ignore[arg-type]


JOB = JobEstimate(resources=Resources(cpus=4, max_seconds=600), gflop=10_000.0)
SLOW_HERE = LocalCapacity(cpu_gflops=10.0, cpus=4, memory_mb=8192)
FAST_HERE = LocalCapacity(cpu_gflops=10_000.0, cpus=4, memory_mb=8192)


def test_a_fast_local_machine_keeps_the_job() -> None:
    p = plan(JOB, FAST_HERE, [cpu_ad(100.0)])
    assert p.decision == "local"
    assert p.chosen.cost_credits == 0.0
    assert p.chosen.seconds == pytest.approx(1.0)
    assert {o.kind for o in p.options} == {"local", "offload"}


def test_a_slow_local_machine_offloads_to_a_fast_cheap_provider() -> None:
    fast = cpu_ad(10_000.0, per_cpu_second=10)
    p = plan(JOB, SLOW_HERE, [cpu_ad(50.0), fast])
    assert p.decision == "offload"
    assert p.chosen.parts[0].peer == fast.peer_id
    local = next(o for o in p.options if o.kind == "local")
    assert local.seconds == pytest.approx(1000.0)
    assert p.chosen.objective < local.objective
    assert "offload" in p.reason


def test_an_expensive_provider_loses_to_a_slower_free_local_run() -> None:
    pricey = cpu_ad(10_000.0, per_cpu_second=10_000_000)  # 10 credits per cpu-second
    p = plan(JOB, SLOW_HERE, [pricey], value_of_time_credits_per_s=0.001)
    assert p.decision == "local"


def test_many_items_split_across_providers_in_proportion_to_speed() -> None:
    a, b = cpu_ad(1000.0), cpu_ad(3000.0)
    p = plan(JOB, None, [a, b], items=100, value_of_time_credits_per_s=1.0)
    assert p.decision == "split"
    shares = {part.peer: part.items for part in p.chosen.parts}
    assert shares == {a.peer_id: 25, b.peer_id: 75}
    whole = next(o for o in p.options if o.kind == "offload")
    assert p.chosen.seconds < whole.seconds


def test_a_split_may_include_this_node() -> None:
    p = plan(JOB, LocalCapacity(cpu_gflops=1000.0, cpus=4, memory_mb=8192),
             [cpu_ad(1000.0)], items=10, value_of_time_credits_per_s=1.0)
    assert p.decision == "split"
    assert {part.peer for part in p.chosen.parts} >= {"local"}


def test_a_gpu_job_cannot_run_on_a_cpu_only_node() -> None:
    job = JobEstimate(resources=Resources(gpus=1, max_seconds=60), gflop=1e6)
    with pytest.raises(ValueError, match="neither here nor on any"):
        plan(job, FAST_HERE, [])


def test_unknown_size_is_assumed_from_the_local_benchmark() -> None:
    job = JobEstimate(resources=Resources(cpus=4, max_seconds=400))
    gflop, assumed = gflop_estimate(job, SLOW_HERE, unknown_runtime_share=0.25)
    assert (gflop, assumed) == (1000.0, True)
    assert gflop_estimate(JOB, SLOW_HERE) == (10_000.0, False)


def test_expired_offers_are_never_chosen() -> None:
    stale = ad(expires=NOW - 1)
    with pytest.raises(ValueError):
        plan(JOB, None, [stale])


@given(st.integers(0, 10_000), st.lists(st.floats(0.0, 1e6), min_size=1, max_size=20))
def test_allocate_hands_out_every_item_in_proportion(items: int, rates: list[float]) -> None:
    shares = allocate(items, rates)
    assert sum(shares) == items and all(s >= 0 for s in shares)
    whole = sum(rates)
    if whole > 0:
        for s, r in zip(shares, rates, strict=True):
            assert abs(s - items * r / whole) < 1.0 + 1e-9


def test_a_cheaper_provider_with_a_bad_reputation_loses_the_offload() -> None:
    cheap, dear = cpu_ad(10_000.0, per_cpu_second=8), cpu_ad(10_000.0, per_cpu_second=10)
    neutral = plan(JOB, SLOW_HERE, [cheap, dear])
    assert neutral.chosen.parts[0].peer == cheap.peer_id
    obs = Observations(reputation={cheap.peer_id: 0.0, dear.peer_id: 1.0})
    p = decide(JOB, SLOW_HERE, rank([cheap, dear], JOB, obs, now_ms=NOW))
    assert p.decision == "offload" and p.chosen.parts[0].peer == dear.peer_id
    local = next(o for o in p.options if o.kind == "local")
    assert local.objective == next(o for o in neutral.options if o.kind == "local").objective
