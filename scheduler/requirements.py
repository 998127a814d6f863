"""A job's hard needs (runtime and its packages, cpus, memory, gpus, sandbox tiers,
--where) and the check of an ad against them (`meets`; `unmet` says which size or package
no ad offers); what passes is ranked by scoring.py."""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable

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
    packages: tuple[PackageNeed, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PackageNeed:
    """A package the runtime must have, at an optional version bound ("numpy>=2")."""

    name: str
    op: str = ""
    version: str = ""

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.version}"

    def met_by(self, packages: dict[str, str]) -> bool:
        have = {_canonical(k): v for k, v in packages.items()}.get(_canonical(self.name))
        if have is None:
            return False
        return not self.op or _OPS[self.op](_version(have), _version(self.version))


_SPEC = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]{0,99})\s*(?:(==|!=|>=|<=|>|<)\s*"
                   r"([0-9][0-9A-Za-z.+!-]{0,63}))?\s*")
_OPS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
    ">": operator.gt, "<": operator.lt}


def package_spec(text: str) -> PackageNeed:
    """"numpy", "numpy>=2", "torch==2.13.0"; ValueError names what is wrong."""
    m = _SPEC.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a package name with an optional bound "
                         "(e.g. 'numpy' or 'numpy>=2')")
    return PackageNeed(m[1], m[2] or "", m[3] or "")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> tuple[int, ...]:
    """The leading release numbers ("2.13.0+cpu" is (2, 13, 0)), zero-padded for compare."""
    parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:4]]
    return tuple(parts + [0] * (4 - len(parts)))


def lacking(ad: CapacityAd, req: Requirements) -> list[PackageNeed]:
    """The needed packages the ad's runtime (by name) does not have."""
    runtimes = [r for r in ad.runtimes if r.name == req.runtime]
    return [p for p in req.packages if not any(p.met_by(r.packages) for r in runtimes)]


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
    if not holds(ad, req) or ad.sandbox_tier not in req.tiers or lacking(ad, req):
        return False
    return req.where is None or req.where(ad, now_ms=now_ms)


def unmet(ads: list[CapacityAd], req: Requirements, *, now_ms: int) -> str | None:
    """Why no live ad can hold the job, by size ("largest offer has 2 cpus, the job asks
    for 99") or package ("no provider's python3 runtime has package scipy"); None when one
    can (the job's other needs are what failed)."""
    live = [a for a in ads if a.expires > now_ms]
    if not live:
        return None
    if any(holds(a, req) for a in live):
        return _no_package(live, req)
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


def _no_package(live: list[CapacityAd], req: Requirements) -> str | None:
    """The first needed package no live ad's runtime has, with what they do have."""
    for need in req.packages:
        if not any(need not in lacking(a, req) for a in live):
            offered = sorted({f"{k} {v}" for a in live for r in a.runtimes
                              if r.name == req.runtime for k, v in r.packages.items()})
            return (f"no provider's {req.runtime} runtime has package {need} (they offer "
                    f"{', '.join(offered) or 'no reported packages'})")
    if req.packages and not any(holds(a, req) and not lacking(a, req) for a in live):
        return (f"no provider's {req.runtime} runtime has all of the packages "
                f"{', '.join(map(str, req.packages))} together")
    return None
