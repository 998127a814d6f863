"""Vivaldi coordinates: pure updates, ad round trips and convergence on a simulated network."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from scheduler.vivaldi import ORIGIN, Coord, estimate_rtt_ms, from_ad, to_ad, update


def test_estimate_is_distance_plus_heights() -> None:
    a = Coord(x=0.0, y=0.0, height=1.0, error=0.5)
    b = Coord(x=3.0, y=4.0, height=2.0, error=0.5)
    assert estimate_rtt_ms(a, b) == pytest.approx(8.0)
    assert estimate_rtt_ms(b, a) == estimate_rtt_ms(a, b)


@pytest.mark.parametrize("rtt", [0.0, -5.0, math.nan, math.inf])
def test_update_ignores_bad_samples(rtt: float) -> None:
    c = Coord(x=1.0, y=2.0, height=3.0, error=0.4)
    assert update(c, ORIGIN, rtt) is c


def test_update_is_pure_and_moves_away_from_the_origin() -> None:
    moved = update(ORIGIN, ORIGIN, 100.0)
    assert moved == update(ORIGIN, ORIGIN, 100.0)
    assert estimate_rtt_ms(moved, ORIGIN) > estimate_rtt_ms(ORIGIN, ORIGIN)
    assert Coord() == ORIGIN


def test_update_pulls_a_too_distant_node_closer() -> None:
    local = Coord(x=100.0, y=0.0, height=0.01, error=1.0)
    remote = Coord(x=0.0, y=0.0, height=0.01, error=1.0)
    after = update(local, remote, 10.0)
    assert estimate_rtt_ms(after, remote) < estimate_rtt_ms(local, remote)
    assert 0.0 < after.error <= 1.5


@pytest.mark.parametrize(("t", "ok"), [
    ((1.0, 2.0, 3.0, 0.5), True),
    ((1, 2, 3, 0), True),
    ((), False),
    ((1.0, 2.0, 3.0), False),
    ((1.0, 2.0, 3.0, 0.5, 9.0), False),
    ((math.nan, 2.0, 3.0, 0.5), False),
    ((1.0, math.inf, 3.0, 0.5), False),
    ((1.0, 2.0, -3.0, 0.5), False),
    ((1.0, 2.0, 3.0, -0.5), False),
    ((1e12, 2.0, 3.0, 0.5), False),
])
def test_from_ad(t: tuple[float, ...], ok: bool) -> None:
    assert (from_ad(t) is not None) is ok


def test_ad_round_trip() -> None:
    c = Coord(x=-12.5, y=7.25, height=3.0, error=0.3)
    assert from_ad(to_ad(c)) == c


def test_simulated_network_converges() -> None:
    rng = random.Random(1234)
    n = 20
    pos = [(rng.uniform(0, 150), rng.uniform(0, 150)) for _ in range(n)]

    def true_rtt(i: int, j: int) -> float:
        return math.dist(pos[i], pos[j]) + 1.0

    coords = [ORIGIN] * n
    for _ in range(300 * n // 2):
        i, j = rng.sample(range(n), 2)
        sample = true_rtt(i, j) * rng.uniform(0.95, 1.05)
        coords[i] = update(coords[i], coords[j], sample)
    errors = [abs(estimate_rtt_ms(coords[i], coords[j]) - true_rtt(i, j)) / true_rtt(i, j)
              for i in range(n) for j in range(n) if i != j]
    assert statistics.median(errors) < 0.25
    assert statistics.median(c.error for c in coords) < 0.5
