"""A job's hard needs (runtime, cpus, memory, gpus, sandbox tiers, --where) and the check
of an ad against them; what passes is ranked by scoring.py."""

from __future__ import annotations

import dataclasses

from protocol import CapacityAd
from scheduler.filters import Filter


@dataclasses.dataclass(frozen=True, slots=True)
class Requirements:
    runtime: str = "python3"
    cpus: int = 1
    memory_mb: int = 0
    gpus: int = 0
    tiers: tuple[str, ...] = ("A", "B", "none")
    where: Filter | None = None


def meets(ad: CapacityAd, req: Requirements, *, now_ms: int) -> bool:
    if ad.expires <= now_ms:
        return False
    if req.runtime not in {r.name for r in ad.runtimes}:
        return False
    if ad.cpus < req.cpus or ad.memory_mb < req.memory_mb:
        return False
    gpus = sum(d.count for d in ad.devices if d.kind == "cuda")
    if gpus < req.gpus or ad.sandbox_tier not in req.tiers:
        return False
    return req.where is None or req.where(ad, now_ms=now_ms)
