"""`unmet`: which of the job's sizes no ad offers, named with the largest one offered."""

from __future__ import annotations

import pytest

from scheduler import Requirements
from scheduler.requirements import holds, unmet
from tests.factories import NOW, device
from tests.factories import plain_ad as ad

SMALL = ad(cpus=2, memory_mb=24 * 1024)
BIG = ad(cpus=16, memory_mb=4096, devices=(device(count=2),))


@pytest.mark.parametrize(("req", "why"), [
    (Requirements(cpus=99), "largest offer has 16 cpus, the job asks for 99"),
    (Requirements(memory_mb=100_000 * 1024),
     "largest offer has 24.0 GiB memory, the job asks for 100000.0"),
    (Requirements(gpus=4), "largest offer has 2 GPUs, the job asks for 4"),
    (Requirements(cpus=8, memory_mb=8192),
     "no single offer has 8 cpus, 8.0 GiB memory and 0 GPUs together"),
    (Requirements(cpus=2, memory_mb=8192), None),  # SMALL holds it
    (Requirements(cpus=16, gpus=2, runtime="other"), None),  # big enough; runtime is why
])
def test_unmet_names_the_size_no_ad_offers(req: Requirements, why: str | None) -> None:
    assert unmet([SMALL, BIG], req, now_ms=NOW) == why


def test_expired_ads_and_no_ads_explain_nothing() -> None:
    assert unmet([], Requirements(cpus=99), now_ms=NOW) is None
    assert unmet([ad(cpus=128, expires=NOW)], Requirements(cpus=99), now_ms=NOW) is None
    assert unmet([ad(cpus=128, expires=NOW), SMALL], Requirements(cpus=99), now_ms=NOW) == (
        "largest offer has 2 cpus, the job asks for 99")


def test_holds_is_every_size_at_once() -> None:
    assert holds(BIG, Requirements(cpus=16, gpus=2, memory_mb=4096))
    assert not holds(BIG, Requirements(cpus=16, gpus=2, memory_mb=4097))
    assert not holds(SMALL, Requirements(cpus=3))
