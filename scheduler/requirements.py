"""A job's hard needs (runtime, cpus, memory, gpus, sandbox tiers, --where) and the check
of an ad against them (`meets`; `unmet` says which size no ad offers); what passes is
ranked by scoring.py."""

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


def gpu_count(ad: CapacityAd) -> int:
    return sum(d.count for d in ad.devices if d.kind == "cuda")


def holds(ad: CapacityAd, req: Requirements) -> bool:
    """Whether the ad's machine is big enough: cpus, memory and GPUs."""
    return ad.cpus >= req.cpus and ad.memory_mb >= req.memory_mb and gpu_count(ad) >= req.gpus


def meets(ad: CapacityAd, req: Requirements, *, now_ms: int) -> bool:
    if ad.expires <= now_ms:
        return False
    if req.runtime not in {r.name for r in ad.runtimes}:
        return False
    if not holds(ad, req) or ad.sandbox_tier not in req.tiers:
        return False
    return req.where is None or req.where(ad, now_ms=now_ms)


def unmet(ads: list[CapacityAd], req: Requirements, *, now_ms: int) -> str | None:
    """Why no live ad can hold the job, by size ("largest offer has 2 cpus, the job asks
    for 99"); None when one can (the job's other needs are what failed)."""
    live = [a for a in ads if a.expires > now_ms]
    if not live or any(holds(a, req) for a in live):
        return None
    cpus = max(a.cpus for a in live)
    if cpus < req.cpus:
        return f"largest offer has {cpus} cpus, the job asks for {req.cpus}"
    mb = max(a.memory_mb for a in live)
    if mb < req.memory_mb:
        return (f"largest offer has {mb / 1024:.1f} GiB memory, the job asks for "
                f"{req.memory_mb / 1024:.1f}")
    gpus = max(gpu_count(a) for a in live)
    if gpus < req.gpus:
        return f"largest offer has {gpus} GPUs, the job asks for {req.gpus}"
    return (f"no single offer has {req.cpus} cpus, {req.memory_mb / 1024:.1f} GiB memory "
            f"and {req.gpus} GPUs together")
