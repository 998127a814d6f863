"""Quotes bound every charge; caps name the coefficients they refuse."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Price, Resources
from scheduler.pricing import charge, credits, max_charge, over_caps, total

PRICE = Price(start=1000, per_cpu_second=20, per_gpu_second=500, per_gb_second=2,
              per_gb_transfer=10_000, minimum=5000)


@pytest.mark.parametrize(("kw", "expected"), [
    ({"cpu_s": 0, "gpu_s": 0, "gb_s": 0, "gb": 0}, 5000),            # the minimum applies
    ({"cpu_s": 100, "gpu_s": 0, "gb_s": 0, "gb": 0}, 5000),  # 3000 is under the minimum
    ({"cpu_s": 1000, "gpu_s": 10, "gb_s": 100, "gb": 1}, 1000 + 20000 + 5000 + 200 + 10000),
    ({"cpu_s": 0.01, "gpu_s": 0, "gb_s": 0, "gb": 0.5}, 1000 + 1 + 5000),  # rounds up
])
def test_total(kw: dict[str, float], expected: int) -> None:
    assert total(PRICE, **kw) == expected


def test_max_charge_assumes_every_limit_is_used() -> None:
    res = Resources(cpus=2, gpus=1, memory_mb=2048, disk_mb=1024, max_seconds=100)
    expected = 1000 + 20 * 200 + 500 * 100 + 2 * 2 * 100 + 10_000 * (10**9 + 2**30) / 10**9
    assert max_charge(PRICE, res, input_bytes=10**9) == int(-(-expected // 1))


@settings(max_examples=300, deadline=None)
@given(cpus=st.integers(1, 16), gpus=st.integers(0, 8), mem=st.integers(1, 65536),
       disk=st.integers(1, 10240), secs=st.integers(1, 86400), used=st.floats(0, 2),
       wall=st.floats(0, 2), bytes_in=st.integers(0, 10**10), out_frac=st.floats(0, 1))
def test_a_charge_never_exceeds_its_quote(cpus: int, gpus: int, mem: int, disk: int, secs: int,
                                          used: float, wall: float, bytes_in: int,
                                          out_frac: float) -> None:
    res = Resources(cpus=cpus, gpus=gpus, memory_mb=mem, disk_mb=disk, max_seconds=secs)
    quoted = max_charge(PRICE, res, input_bytes=bytes_in)
    wall_s = secs * wall  # may overrun the timeout a little: clamped
    out = int(disk * 2**20 * out_frac)
    got = charge(PRICE, res, cpu_s=cpus * wall_s * used, wall_s=wall_s, bytes_in=bytes_in,
                 bytes_out=out, quoted=quoted)
    assert PRICE.minimum <= got <= quoted


def test_charge_is_computed_from_usage() -> None:
    res = Resources(cpus=1, memory_mb=1024, disk_mb=1, max_seconds=600)
    got = charge(PRICE, res, cpu_s=300.0, wall_s=400.0, bytes_in=0, bytes_out=0, quoted=10**9)
    assert got == 1000 + 20 * 300 + 2 * 400


def test_over_caps_names_each_coefficient_above_its_cap() -> None:
    caps = Price(start=1000, per_cpu_second=10, per_gpu_second=1000, per_gb_second=2,
                 per_gb_transfer=5000, minimum=10_000)
    assert over_caps(PRICE, caps) == ["per_cpu_second", "per_gb_transfer"]
    assert over_caps(PRICE, PRICE) == []


def test_credits_format() -> None:
    assert credits(1_234_567) == "1.234567" and credits(0) == "0.000000"
