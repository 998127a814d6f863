"""A plain CapacityAd for scheduler tests; override any field by keyword."""

from __future__ import annotations

import dataclasses

from protocol import CapacityAd, Device, Identity, Price, Runtime

NOW = 1_000_000


def ad(**changes: object) -> CapacityAd:
    base = CapacityAd(
        peer_id=Identity.generate().peer_id, addrs=(), cpus=4, memory_mb=8192,
        devices=(Device(kind="cpu", model="c", memory_mb=8192, compute_capability="",
                        count=1, gflops=0.0),),
        runtimes=(Runtime(name="python3", version="3.11", packages={}, digest=""),), price=Price(),
        sandbox_tier="none", region="", coords=(), cached=(), load=0.0, seq=1,
        expires=NOW + 1000)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]
