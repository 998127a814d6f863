"""Comparators, quorum, canaries, adaptive replication, blacklist backoff, policies, sim."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import pytest

from bench.sim_verification import SimConfig, simulate
from scheduler.verification import (
    DAY_S,
    CanaryBook,
    Escrow,
    Mode,
    Policy,
    TrustTracker,
    Verdict,
    exact,
    quorum,
    tolerance,
)

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(("a", "b", "same"), [
    ({}, {}, True),
    ({"out": "aa"}, {"out": "aa"}, True),
    ({"out": "aa"}, {"out": "ab"}, False),
    ({"out": "aa"}, {"out": "aa", "log": "cc"}, False),
    ({"out": "aa"}, {"log": "aa"}, False),
])
def test_exact(a: dict[str, str], b: dict[str, str], same: bool) -> None:
    assert exact(a, b) is same
    assert exact(b, a) is same


@pytest.mark.parametrize(("rel", "abs_", "a", "b", "same"), [
    (0.0, 0.0, [1.0, 2.0], [1.0, 2.0], True),
    (0.0, 0.0, [1.0], [1.0 + 1e-15], False),
    (1e-6, 0.0, [1.0], [1.0 + 1e-7], True),
    (1e-6, 0.0, [1.0], [1.0 + 1e-5], False),
    (0.0, 1e-3, [0.0], [5e-4], True),
    (0.0, 1e-3, [0.0], [2e-3], False),
    (1e-6, 0.0, [0.0], [1e-12], False),  # rel alone never matches near zero
    (1.0, 1.0, [1.0], [1.0, 1.0], False),  # length differs
    (1.0, 1.0, [], [], True),
    (1.0, 1.0, [NAN], [NAN], False),
    (1.0, 1.0, [NAN], [1.0], False),
    (1.0, 1.0, [INF], [INF], True),
    (1.0, 1.0, [INF], [-INF], False),
    (1e-3, 0.0, [INF], [1e308], False),
])
def test_tolerance(rel: float, abs_: float, a: list[float], b: list[float], same: bool) -> None:
    assert tolerance(rel, abs_)(a, b) is same
    assert tolerance(rel, abs_)(b, a) is same


@pytest.mark.parametrize(("rel", "abs_"), [(-1.0, 0.0), (0.0, -1.0), (NAN, 0.0), (0.0, INF)])
def test_tolerance_rejects_bad_bounds(rel: float, abs_: float) -> None:
    with pytest.raises(ValueError, match="tolerance needs finite rel >= 0 and abs_ >= 0"):
        tolerance(rel, abs_)


def d(x: str) -> dict[str, str]:
    return {"out": x}


@pytest.mark.parametrize(("results", "k", "accepted", "agreeing", "disagreeing"), [
    ([("a", "x"), ("b", "x"), ("c", "y")], 2, "x", ("a", "b"), ("c",)),  # 2-of-3, one liar
    ([("a", "y"), ("b", "x"), ("c", "x")], 2, "x", ("b", "c"), ("a",)),
    ([("a", "x"), ("b", "y")], 2, None, (), ()),  # tie: need more replicas
    ([("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")], 2, None, (), ()),  # tie of pairs
    ([("a", "x"), ("b", "y"), ("c", "z")], 2, None, (), ()),
    ([("a", "x"), ("b", "x")], 3, None, (), ()),  # k larger than n
    ([("a", "x")], 1, "x", ("a",), ()),
    ([], 1, None, (), ()),
    ([("a", "x"), ("a", "x"), ("b", "y")], 2, None, (), ()),  # a provider counts once
    ([("a", "x"), ("b", "x"), ("c", "x"), ("d", "y"), ("e", "y")], 3, "x",
     ("a", "b", "c"), ("d", "e")),
])
def test_quorum(results: list[tuple[str, str]], k: int, accepted: str | None,
                agreeing: tuple[str, ...], disagreeing: tuple[str, ...]) -> None:
    v = quorum([(p, d(x)) for p, x in results], k=k, same=exact)
    assert v.accepted == (None if accepted is None else d(accepted))
    assert (v.agreeing, v.disagreeing) == (agreeing, disagreeing)
    assert v.providers == tuple(dict.fromkeys(p for p, _ in results))


def test_quorum_tolerance_needs_mutual_agreement() -> None:
    same = tolerance(0.0, 1.0)
    # a~b, b~c, a!~c: two overlapping pairs tie, no one is blamed
    v = quorum([("a", [0.0]), ("b", [1.0]), ("c", [2.0])], k=2, same=same)
    assert v == Verdict(accepted=None, agreeing=(), disagreeing=(), providers=("a", "b", "c"))
    v = quorum([("a", [0.0]), ("b", [0.5]), ("c", [1.0]), ("d", [9.0])], k=3, same=same)
    assert v.agreeing == ("a", "b", "c") and v.disagreeing == ("d",)


def test_quorum_rejects_k_below_one() -> None:
    with pytest.raises(ValueError, match="quorum needs k >= 1, got 0"):
        quorum([("a", d("x"))], k=0, same=exact)


def test_canary() -> None:
    book = CanaryBook({"matmul": {"out": "11"}})
    book.add("sum", {"out": "22", "log": "33"})
    assert book.kinds() == ("matmul", "sum") and "sum" in book
    assert book.check_canary("matmul", {"out": "11"})
    assert not book.check_canary("matmul", {"out": "12"})
    assert not book.check_canary("sum", {"out": "22"})
    assert book.pick(random.Random(0)) in book.kinds()
    with pytest.raises(KeyError, match="no canary of kind 'nope'"):
        book.check_canary("nope", {})
    with pytest.raises(ValueError, match="no canaries known"):
        CanaryBook().pick(random.Random(0))


def test_adaptive_probability_sequence() -> None:
    t = TrustTracker(threshold=10, min_probability=0.05)
    seen = []
    for _ in range(25):
        seen.append(t.replicate_probability("p"))
        t.record_agreement("p")
    assert seen[:10] == [1.0] * 10
    assert seen[10:20] == pytest.approx([1 / cv for cv in range(10, 20)])
    assert seen[20:] == [0.05] * 5  # floored
    t.record_mismatch("p", now=0.0)
    assert t.cv("p") == 0 and t.replicate_probability("p") == 1.0
    assert t.replicate_probability("unknown") == 1.0


def test_should_replicate_draws_with_probability() -> None:
    t = TrustTracker()
    rng = random.Random(7)
    assert all(t.should_replicate("new", rng) for _ in range(100))
    for _ in range(20):
        t.record_agreement("old")
    share = sum(t.should_replicate("old", rng) for _ in range(20_000)) / 20_000
    assert share == pytest.approx(0.05, abs=0.01)


def test_blacklist_backoff_doubles_and_caps() -> None:
    t = TrustTracker(base_ban_s=15.0, max_ban_s=DAY_S)
    bans = [t.record_mismatch("p", now=1000.0) - 1000.0 for _ in range(16)]
    # the ban end never shrinks, each repeat doubles from the same now
    assert bans[:5] == [15.0, 30.0, 60.0, 120.0, 240.0]
    assert bans[-1] == DAY_S and max(bans) == DAY_S
    assert t.strikes("p") == 16
    for _ in range(200):  # no overflow however many strikes
        t.record_mismatch("q", now=0.0)
    assert t.banned_until("q") == DAY_S


@pytest.mark.parametrize(("now", "banned"), [
    (100.0, True), (114.9, True), (115.0, False), (1e9, False)])
def test_blacklist_expiry(now: float, banned: bool) -> None:
    t = TrustTracker()
    t.record_mismatch("p", now=100.0)
    assert t.is_blacklisted("p", now) is banned
    assert not t.is_blacklisted("other", now)


def test_second_ban_after_expiry_is_double() -> None:
    t = TrustTracker()
    assert t.record_mismatch("p", now=0.0) == 15.0
    assert not t.is_blacklisted("p", 20.0)
    assert t.record_mismatch("p", now=20.0) == 50.0


def test_tracker_is_bounded_lru() -> None:
    t = TrustTracker(capacity=3)
    for p in ("a", "b", "c"):
        t.record_agreement(p)
    t.record_agreement("a")  # a is now most recent
    t.record_agreement("d")  # evicts b
    assert len(t) == 3
    assert (t.cv("a"), t.cv("b"), t.cv("c"), t.cv("d")) == (2, 0, 1, 1)
    for i in range(1000):
        t.record_mismatch(f"x{i}", now=0.0)
    assert len(t) == 3


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"threshold": 0}, "threshold >= 1"),
    ({"capacity": 0}, "capacity >= 1"),
    ({"min_probability": 0.0}, "min_probability must be in"),
    ({"base_ban_s": 10.0, "max_ban_s": 5.0}, "base_ban_s <= max_ban_s"),
])
def test_tracker_rejects_bad_settings(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrustTracker(**kwargs)  # type: ignore[arg-type]


def plans(policy: Policy, peer: str, n: int = 200) -> set[int]:
    rng = random.Random(3)
    return {policy.plan(peer, rng) for _ in range(n)}


def test_policy_plans() -> None:
    assert plans(Policy.none(), "p") == {1}
    assert plans(Policy.redundancy(3), "p") == {3}
    tracker = TrustTracker(min_probability=0.5)
    adaptive = Policy.adaptive(tracker)
    assert adaptive.mode is Mode.ADAPTIVE
    assert plans(adaptive, "p") == {2}  # untrusted: always replicated
    for _ in range(10):
        tracker.record_agreement("p")
    assert plans(adaptive, "p") == {1, 2}  # trusted: spot checks
    assert (adaptive.quorum_size(1), adaptive.quorum_size(2)) == (1, 2)
    with pytest.raises(ValueError, match="Policy needs 1 <= k <= max_replicas"):
        Policy.redundancy(6)


def judge(policy: Policy, results: Sequence[tuple[str, str]],
          planned: int) -> Verdict[Mapping[str, str]]:
    return policy.judge([(p, d(x)) for p, x in results], planned=planned, same=exact, now=0.0)


def test_policy_judge_rewards_and_punishes() -> None:
    policy = Policy.redundancy(2)
    v = judge(policy, [("a", "x"), ("b", "y")], planned=2)
    assert v.accepted is None and policy.needs_more(v, ran=2)
    assert policy.tracker.strikes("a") == policy.tracker.strikes("b") == 0  # nobody blamed
    v = judge(policy, [("a", "x"), ("b", "y"), ("c", "x")], planned=2)
    assert v.disagreeing == ("b",) and not policy.needs_more(v, ran=3)
    assert policy.tracker.is_blacklisted("b", 1.0) and policy.tracker.cv("a") == 1
    assert not policy.needs_more(Verdict(accepted=None, agreeing=(), disagreeing=(),
                                         providers=()), ran=5)


def test_unreplicated_result_leaves_trust_alone() -> None:
    policy = Policy.adaptive()
    v = judge(policy, [("a", "x")], planned=1)
    assert v.accepted == d("x") and policy.tracker.cv("a") == 0
    assert policy.punish("a", now=5.0) == 20.0


def test_simulation_adaptive_catches_cheaters() -> None:
    cfg = SimConfig(providers=100, jobs=4000, sleepers=0.0, seed=5)
    late = simulate(cfg, "adaptive")["last_half"]
    assert isinstance(late, dict)
    assert late["wrong_results"] > 0
    assert late["caught_share"] > 0.95
    assert late["extra_compute_pct"] < 30
    none = simulate(cfg, "none")["last_half"]
    assert isinstance(none, dict) and none["caught_share"] == 0.0


def test_simulation_is_deterministic() -> None:
    cfg = SimConfig(providers=50, jobs=500, seed=2)
    assert simulate(cfg, "adaptive") == simulate(cfg, "adaptive")


def test_escrow_settles_after_the_hold_and_seizes_on_catch() -> None:
    e: Escrow[str] = Escrow(hold_s=10.0)
    assert e.hold("a", "a1", now=0.0) == [] and e.hold("b", "b1", now=1.0) == []
    e.hold("a", "a2", now=5.0)
    assert (len(e), e.held("a"), e.held("z")) == (3, 2, 0)
    assert e.settle(9.9) == []
    assert e.settle(11.0) == [("a", "a1"), ("b", "b1")]
    assert e.seize("a") == ["a2"] and e.seize("a") == []
    assert e.settle(100.0) == []  # a seized result never settles
    assert len(e) == 0


def test_escrow_caps_held_results_per_peer() -> None:
    e: Escrow[int] = Escrow(hold_s=60.0, max_per_peer=2)
    assert e.hold("a", 1, now=0.0) == [] and e.hold("a", 2, now=0.0) == []
    assert e.hold("a", 3, now=1.0) == [("a", 1)]  # oldest settles early
    assert e.settle(1000.0) == [("a", 2), ("a", 3)]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"hold_s": -1.0}, "finite hold_s >= 0"), ({"hold_s": INF}, "finite hold_s >= 0"),
    ({"hold_s": 1.0, "max_per_peer": 0}, "max_per_peer >= 1")])
def test_escrow_rejects_bad_settings(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Escrow(**kwargs)  # type: ignore[arg-type]


def test_simulation_escrow_catches_sleepers_that_adaptive_misses() -> None:
    cfg = SimConfig(providers=60, jobs=8000, sleepers=1.0, hold_s=2000.0, seed=3)
    adaptive = simulate(cfg, "adaptive")["last_half"]
    escrow = simulate(cfg, "escrow")["last_half"]
    assert isinstance(adaptive, dict) and isinstance(escrow, dict)
    assert escrow["wrong_results"] > 0
    assert adaptive["caught_share"] < 0.9 < 0.98 < escrow["caught_share"]
    assert escrow["rerun_compute_pct"] > 0


def test_market_simulation_runs_and_is_deterministic() -> None:
    from bench.sim_market import MarketConfig, run

    cfg = MarketConfig(providers=60, jobs=150, seed=4)
    first = run(cfg)["placers"]
    assert isinstance(first, dict) and set(first) == {"oracle", "scoring", "cheapest"}
    oracle, scoring = first["oracle"], first["scoring"]
    assert oracle["wrong_results"] == 0 and oracle["verification_extra_compute_pct"] == 0.0
    assert scoring["done_share"] > 0.9 and scoring["cost_vs_oracle"] > 0
    assert run(cfg)["placers"] == first
