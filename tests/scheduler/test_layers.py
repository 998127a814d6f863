"""scheduler.layers: every cut priced from an exact table, and the cut each objective picks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.errors import SchedulerError
from scheduler.layers import (
    Block,
    Power,
    Remote,
    choose,
    cut_table,
    drifted,
    hopeless,
    partition,
)

# three blocks: a cheap one with a huge output, a costly one with a small output, a last one
BLOCKS = (Block("a", 0.010, 8_000_000), Block("b", 0.100, 4_000), Block("c", 0.020, 400))
POWER = Power(watts=10.0, joules_per_byte=1e-6, source="test")
FAST = Remote(peer="P", speedup=10.0, rtt_s=0.005, bytes_per_s=1e8, credits_per_s=2.0)


def test_the_table_has_every_cut_with_its_parts() -> None:
    cuts = cut_table(BLOCKS, 1_000_000, FAST, POWER)
    assert [c.k for c in cuts] == [0, 1, 2, 3]
    c0, c1, c2, c3 = cuts
    assert c0.head_s == 0 and c0.up_bytes == 1_000_000 and c0.down_bytes == 400
    assert c0.tail_s == pytest.approx(0.130 / 10)
    assert c0.transfer_s == pytest.approx(1_000_400 / 1e8)
    assert c0.latency_s == pytest.approx(0.013 + 0.010004 + 0.005)
    assert c1.up_bytes == 8_000_000 and c1.latency_s == pytest.approx(
        0.010 + 8_000_400 / 1e8 + 0.012 + 0.005)
    assert c2.up_bytes == 4_000 and c2.cost_credits == pytest.approx(0.002 * 2.0)
    assert c3.peer is None and c3.latency_s == pytest.approx(0.130) and c3.transfer_s == 0
    assert c3.energy_j == pytest.approx(0.130 * 10) and c3.cost_credits == 0
    assert c2.energy_j == pytest.approx(0.110 * 10 + 4_400 * 1e-6)


def test_each_objective_picks_the_cut_the_table_says() -> None:
    assert choose(BLOCKS, 1_000_000, FAST, POWER).chosen.k == 0  # 28 ms, all away
    slow_link = Remote(peer="P", speedup=10.0, rtt_s=0.005, bytes_per_s=1e6)
    # through 1 MB/s the input costs a second: cut after b (4 kB leave) is least latency
    assert choose(BLOCKS, 1_000_000, slow_link, POWER).chosen.k == 2
    # energy: the head's joules against bytes sent at 1 uJ/B: all away wins at 10 W
    assert choose(BLOCKS, 1_000_000, FAST, POWER, objective="energy").chosen.k == 0
    free_cpu = Power(watts=0.0, joules_per_byte=1e-6, source="test")
    assert choose(BLOCKS, 1_000_000, FAST, free_cpu, objective="energy").chosen.k == 3
    cost = choose(BLOCKS, 1_000_000, FAST, POWER, objective="cost", max_latency_s=0.2)
    assert cost.chosen.k == 3 and cost.reason == "least cost within 0.2 s"
    tight = choose(BLOCKS, 1_000_000, FAST, POWER, objective="cost", max_latency_s=0.05)
    assert tight.chosen.k == 0  # the only cut within 50 ms
    none = choose(BLOCKS, 1_000_000, FAST, POWER, objective="cost", max_latency_s=0.001)
    assert none.chosen.k == 0 and "no cut within" in none.reason


def test_calibrated_times_replace_the_speedup() -> None:
    measured = Remote(peer="P", speedup=10.0, rtt_s=0.005, bytes_per_s=1e8,
                      remote_s=(0.5, 0.5, 0.5))  # the provider is in fact slow
    plan = choose(BLOCKS, 1_000_000, measured, POWER)
    assert plan.chosen.k == 3 and plan.cuts[2].tail_s == pytest.approx(0.5)


def test_no_provider_leaves_only_cut_n() -> None:
    plan = choose(BLOCKS, 10, None, POWER)
    assert [c.k for c in plan.cuts] == [3] and plan.chosen.peer is None
    assert plan.to_json()["chosen"] == 3 and plan.to_json()["power"]["source"] == "test"


def test_remote_is_hopeless_only_when_even_a_free_link_loses_by_the_margin() -> None:
    # all here 130 ms; the best floor (no transfer) is cut 0: 13 ms there + 5 ms RTT
    slow_link = Remote(peer="P", speedup=10.0, rtt_s=0.005, bytes_per_s=1e3)
    plan = choose(BLOCKS, 1_000_000, slow_link, POWER)
    assert plan.chosen.k == 3 and not hopeless(plan, 2.0)  # the guessed link decides: measure
    far = Remote(peer="P", speedup=10.0, rtt_s=0.300, bytes_per_s=1e9)  # 313 ms at best
    assert hopeless(choose(BLOCKS, 1_000_000, far, POWER), 2.0)
    assert not hopeless(choose(BLOCKS, 1_000_000, far, POWER), 3.0)
    assert hopeless(choose(BLOCKS, 10, None, POWER), 2.0)  # no provider: nothing to measure


def test_bad_inputs_are_named_errors() -> None:
    with pytest.raises(SchedulerError):
        cut_table((), 1, FAST, POWER)
    with pytest.raises(SchedulerError):
        cut_table(BLOCKS, 1, Remote(peer="P", speedup=0, rtt_s=0, bytes_per_s=1), POWER)
    with pytest.raises(SchedulerError):
        cut_table(BLOCKS, 1, Remote(peer="P", speedup=1, rtt_s=0, bytes_per_s=1,
                                    remote_s=(1.0,)), POWER)
    with pytest.raises(SchedulerError):
        choose(BLOCKS, 1, FAST, POWER, objective="speed")  # type: ignore[arg-type]


def test_drift_is_a_share_of_the_planned_link() -> None:
    assert not drifted(FAST, 0.006, 0.9e8)
    assert drifted(FAST, 0.005, 0.3e8)
    assert drifted(FAST, 0.050, 1e8)
    near = Remote(peer="P", speedup=1, rtt_s=0.0003, bytes_per_s=1e8)
    assert not drifted(near, 0.0009, 1e8)  # sub-millisecond RTTs jitter: not a drift


@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 10**8)), min_size=1, max_size=8),
       st.floats(0.01, 100), st.floats(0, 0.5), st.floats(1e3, 1e10))
def test_the_chosen_cut_is_the_least_latency_of_the_table(
        raw: list[tuple[float, int]], speedup: float, rtt: float, bw: float) -> None:
    blocks = [Block(str(i), s, b) for i, (s, b) in enumerate(raw)]
    remote = Remote(peer="P", speedup=speedup, rtt_s=rtt, bytes_per_s=bw)
    plan = choose(blocks, 1000, remote, POWER)
    assert plan.chosen.latency_s == min(c.latency_s for c in plan.cuts)
    assert len(plan.cuts) == len(blocks) + 1


def test_a_pipeline_balances_its_stages_within_memory() -> None:
    assert partition([1, 1, 1, 1], [1, 1, 1, 1], 2, 10) == ((0, 2), (2, 4))
    assert partition([3, 1, 1, 1], [1, 1, 1, 1], 2, 10) == ((0, 1), (1, 4))
    assert partition([3, 1, 1, 1], [1, 1, 1, 1], 3, 2) == ((0, 1), (1, 3), (3, 4))
    # memory forces a worse balance: the heavy last block must stand alone
    assert partition([1, 1, 1, 1], [1, 1, 1, 1], 2, 3) == ((0, 2), (2, 4))
    assert partition([1, 1, 1, 1], [1, 1, 1, 3], 2, 3) == ((0, 3), (3, 4))
    with pytest.raises(SchedulerError, match="do not fit"):
        partition([1, 1, 1, 1], [1, 1, 1, 1], 2, 1)
    with pytest.raises(SchedulerError, match="above a stage"):
        partition([1], [5], 1, 4)
    with pytest.raises(SchedulerError, match="each stage holds a block"):
        partition([1, 1], [1, 1], 3, 10)


@given(st.lists(st.tuples(st.floats(0, 10), st.integers(1, 5)), min_size=1, max_size=9),
       st.integers(1, 4), st.integers(5, 20))
def test_a_partition_covers_every_block_once_in_order(
        raw: list[tuple[float, int]], stages: int, limit: int) -> None:
    secs, weights = [s for s, _ in raw], [w for _, w in raw]
    stages = min(stages, len(raw))
    try:
        groups = partition(secs, weights, stages, limit)
    except SchedulerError:
        return
    assert groups[0][0] == 0 and groups[-1][1] == len(raw) and len(groups) == stages
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))
    assert all(sum(weights[s:e]) <= limit and e > s for s, e in groups)


def test_the_table_has_a_line_per_cut_and_marks_the_chosen_one() -> None:
    plan = choose(BLOCKS, 1_000_000, FAST, POWER)
    lines = plan.table()
    assert lines[0].split()[:2] == ["cut", "here"] and len(lines) == len(plan.cuts) + 1
    assert [ln.endswith("<- chosen") for ln in lines[1:]] == [c.k == 0 for c in plan.cuts]
