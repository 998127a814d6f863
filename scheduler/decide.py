"""The offload decision: run here, send the whole job away, or split it across providers.

Every option is priced the same way the offer scoring prices a provider:

    objective = cost in credits + value_of_time (credits per second) * seconds

Here costs nothing in credits (it is the user's own machine) but takes the time its own
benchmark says. A provider costs its price for the run and takes run + transfer + RTT.
A job of N independent items can also be split: items go to several parties (this node
may be one) in proportion to their throughput; the split takes as long as its slowest
part and costs the sum of the parts.

A job of unknown size is assumed to take `unknown_runtime_share * max_seconds` HERE; the
other options scale by their measured throughput.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Literal

from protocol import CapacityAd
from scheduler.pricing import GB, MICRO, total
from scheduler.scoring import JobEstimate, ScoreParts

LOCAL = "local"
Decision = Literal["local", "offload", "split"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LocalCapacity:
    """This node's own measured throughput (from its benchmark)."""

    cpu_gflops: float
    cpus: int
    memory_mb: int
    gpu_gflops: tuple[float, ...] = ()
    """Per GPU, any order."""

    def throughput(self, cpus: int, gpus: int) -> float:
        """GFLOP/s a job asking for `cpus` / `gpus` gets here; 0.0 if it cannot run here."""
        if gpus > len(self.gpu_gflops):
            return 0.0
        if gpus > 0:
            return sum(sorted(self.gpu_gflops, reverse=True)[:gpus])
        return self.cpu_gflops * min(1.0, cpus / self.cpus) if self.cpus > 0 else 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Part:
    """One party's share of a plan: this node (`peer == "local"`) or a provider."""

    peer: str
    items: int
    seconds: float
    cost_credits: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """One way to run the job; `parts` has one entry unless it is a split."""

    kind: Decision
    parts: tuple[Part, ...]
    seconds: float
    cost_credits: float
    objective: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    decision: Decision
    reason: str
    gflop: float
    gflop_assumed: bool
    items: int
    chosen: Option
    options: tuple[Option, ...]
    """The best option of each kind that was possible, best first."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _Party:
    peer: str
    run_s: float
    """Whole job's run time on this party."""
    overhead_s: float
    """Transfer + RTT, paid once per part."""
    ad: CapacityAd | None
    penalty: float = 1.0
    """Reputation multiplier of the objective (1.0: neutral, or this machine)."""


_PartFn = Callable[[_Party, int], Part]
_OptionFn = Callable[[Decision, Sequence[Part]], Option]


def gflop_estimate(job: JobEstimate, local: LocalCapacity, *,
                   unknown_runtime_share: float = 0.25) -> tuple[float, bool]:
    """The job's GFLOP: the declared number, else the assumed local run time's worth."""
    if job.gflop > 0.0:
        return job.gflop, False
    res = job.resources
    rate = local.throughput(res.cpus, res.gpus) or local.cpu_gflops or 1.0
    return unknown_runtime_share * res.max_seconds * rate, True


def decide(job: JobEstimate, local: LocalCapacity | None,
           offers: Sequence[tuple[CapacityAd, ScoreParts]], *, items: int = 1,
           value_of_time_credits_per_s: float = 0.001, max_split: int = 8,
           part_overhead_s: float = 0.5, gflop_assumed: bool = False,
           reputation_weight: float = 1.0) -> Plan:
    """Choose local, offload or split for `job` (whose gflop is already estimated).

    `offers` are ranked ads with their ScoreParts for this same job; unusable ones (inf
    total) are skipped. `part_overhead_s` is the fixed cost of starting one remote part
    (dispatch, sandbox start). A provider's share of an objective is scaled by its
    reputation as scoring scales it (`1 + reputation_weight * (0.5 - reputation)`); this
    machine counts as neutral. Raises ValueError when no option is possible at all.
    """
    if items < 1:
        raise ValueError("items must be >= 1")
    res = job.resources
    vot = value_of_time_credits_per_s
    parties: list[_Party] = []
    if local is not None and job.gflop > 0.0:
        rate = local.throughput(res.cpus, res.gpus)
        if rate > 0.0 and local.memory_mb >= res.memory_mb:
            parties.append(_Party(peer=LOCAL, run_s=job.gflop / rate, overhead_s=0.0, ad=None))
    for ad, parts in offers:
        if not math.isfinite(parts.total):
            continue
        run_s = max(0.0, parts.seconds - parts.transfer_s - parts.rtt_ms / 1000.0)
        parties.append(_Party(peer=ad.peer_id, run_s=run_s,
                              overhead_s=parts.transfer_s + parts.rtt_ms / 1000.0
                              + part_overhead_s, ad=ad,
                              penalty=1.0 + reputation_weight * (0.5 - parts.reputation)))
    if not parties:
        raise ValueError("the job can run neither here nor on any offered provider")

    def part(p: _Party, n: int) -> Part:
        run = p.run_s * n / items
        cost = 0.0 if p.ad is None else _cost(p.ad, job, run) / MICRO
        return Part(peer=p.peer, items=n, seconds=p.overhead_s + run, cost_credits=cost)

    penalty = {p.peer: p.penalty for p in parties}

    def option(kind: Decision, ps: Sequence[Part]) -> Option:
        seconds = max(x.seconds for x in ps)
        cost = sum(x.cost_credits for x in ps)
        scale = sum(penalty[x.peer] * x.items for x in ps) / sum(x.items for x in ps)
        return Option(kind=kind, parts=tuple(ps), seconds=seconds, cost_credits=cost,
                      objective=(cost + vot * seconds) * scale)

    options: list[Option] = []
    local_party = next((p for p in parties if p.peer == LOCAL), None)
    if local_party is not None:
        options.append(option("local", [part(local_party, items)]))
    remote = [p for p in parties if p.peer != LOCAL]
    if remote:
        options.append(min((option("offload", [part(p, items)]) for p in remote),
                           key=lambda o: o.objective))
    if items > 1 and len(parties) > 1:
        split = _best_split(parties, items, max_split, part, option)
        if split is not None:
            options.append(split)
    options.sort(key=lambda o: (o.objective, _PREFER[o.kind]))
    chosen = options[0]
    return Plan(decision=chosen.kind, reason=_reason(chosen, options), gflop=job.gflop,
                gflop_assumed=gflop_assumed, items=items, chosen=chosen, options=tuple(options))


_PREFER = {"local": 0, "offload": 1, "split": 2}


def _best_split(parties: Sequence[_Party], items: int, max_split: int,
                part: _PartFn, option: _OptionFn) -> Option | None:
    """Greedy: add parties fastest first while the split's objective improves."""
    by_speed = sorted(parties, key=lambda p: p.run_s + p.overhead_s)
    best: Option | None = None
    for k in range(2, min(max_split, items, len(by_speed)) + 1):
        chosen = by_speed[:k]
        shares = allocate(items, [1.0 / max(p.run_s, 1e-9) for p in chosen])
        ps = [part(p, n) for p, n in zip(chosen, shares, strict=True) if n > 0]
        if len(ps) < 2:
            continue
        candidate = option("split", ps)
        if best is not None and candidate.objective >= best.objective:
            break
        best = candidate
    return best


def allocate(items: int, rates: Sequence[float]) -> list[int]:
    """`items` split in proportion to `rates` (largest remainder); sums to `items`."""
    if items < 0 or not rates or any(r < 0 or not math.isfinite(r) for r in rates):
        raise ValueError("allocate needs items >= 0 and finite rates >= 0")
    whole = sum(rates)
    if whole <= 0.0:
        rates, whole = [1.0] * len(rates), float(len(rates))
    exact = [items * r / whole for r in rates]
    shares = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(rates)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: items - sum(shares)]:
        shares[i] += 1
    return shares


def _cost(ad: CapacityAd, job: JobEstimate, run_s: float) -> int:
    res = job.resources
    sizes = job.input_bytes_by_digest
    missing = sum(sizes.get(d, 0) for d in job.input_digests if d not in ad.cached)
    return total(ad.price, cpu_s=res.cpus * run_s, gpu_s=res.gpus * run_s,
                 gb_s=res.memory_mb / 1024 * run_s, gb=missing / GB)


def _reason(chosen: Option, options: Sequence[Option]) -> str:
    others = [o for o in options if o is not chosen]
    if not others:
        return f"{chosen.kind} is the only possible option"
    runner_up = others[0]
    return (f"{chosen.kind} costs {chosen.cost_credits:.6f} credits and takes "
            f"{chosen.seconds:.2f} s (objective {chosen.objective:.6f}); the next best, "
            f"{runner_up.kind}, scores {runner_up.objective:.6f}")

