"""Requirement checks of an ad against a job's hard needs."""

from __future__ import annotations

import pytest

from protocol import Device
from scheduler import Requirements, meets
from tests.factories import NOW
from tests.factories import plain_ad as ad


@pytest.mark.parametrize(("changes", "req", "ok"), [
    ({}, Requirements(), True),
    ({"expires": NOW}, Requirements(), False),
    ({"runtimes": ()}, Requirements(), False),
    ({}, Requirements(cpus=8), False),
    ({}, Requirements(memory_mb=9000), False),
    ({}, Requirements(gpus=1), False),
    ({"devices": (Device(kind="cuda", model="g", memory_mb=1, compute_capability="8.0",
                         count=2, gflops=1.0),)}, Requirements(gpus=2), True),
    ({}, Requirements(tiers=("A",)), False),
])
def test_meets(changes: dict[str, object], req: Requirements, ok: bool) -> None:
    assert meets(ad(**changes), req, now_ms=NOW) is ok
