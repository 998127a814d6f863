"""Where to cut one model between this node and a provider (Neurosurgeon's question, in a
market): blocks 0..k-1 run here, blocks k..n-1 in a provider's session.

For each cut k of n blocks (0: all remote, n: all here, no provider touched):

    latency = head + up / bandwidth + tail + down / bandwidth + rtt
    head    = sum of the blocks' times here, for blocks < k
    tail    = sum of the blocks' times here / the provider's speed-up, for blocks >= k
              (or the times measured on the provider, once calibrated)
    up      = bytes into block k (the model's input for k = 0); down = the output's bytes
    cost    = the provider's price per second x tail (credits; 0 for cut n)
    energy  = head x local power + (up + down) x energy per byte (this device's joules)

`objective` picks the cut: the least latency; the least cost among cuts within
`max_latency_s` (the least latency when none is); the least energy. Ties go to the cut
that runs more here (fewer bytes leave). Pure: every number comes in as an argument.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

from scheduler.errors import SchedulerError

Objective = Literal["latency", "cost", "energy"]
OBJECTIVES: tuple[Objective, ...] = ("latency", "cost", "energy")


@dataclasses.dataclass(frozen=True, slots=True)
class Block:
    """One block as profiled here: seconds per call, and the bytes of its output."""

    name: str
    local_s: float
    out_bytes: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Remote:
    """The provider a tail would run on, and the link to it."""

    peer: str
    speedup: float
    """Its time for a block is ours / speedup (its benchmark over ours, until calibrated)."""
    rtt_s: float
    bytes_per_s: float
    credits_per_s: float = 0.0
    remote_s: tuple[float, ...] | None = None
    """Each block's measured time on the provider (the calibration pass), when known."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Power:
    """This device's power figures, and where they came from (said in the plan)."""

    watts: float
    joules_per_byte: float
    source: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cut:
    k: int
    """Blocks 0..k-1 here, k..n-1 remote."""
    head_s: float
    up_bytes: int
    down_bytes: int
    transfer_s: float
    tail_s: float
    rtt_s: float
    latency_s: float
    cost_credits: float
    energy_j: float
    peer: str | None
    """None: nothing runs away (cut n)."""

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CutPlan:
    objective: Objective
    cuts: tuple[Cut, ...]
    chosen: Cut
    power: Power
    reason: str

    def table(self) -> list[str]:
        """The cut table as text lines: a header, one line per cut, the chosen one marked."""
        lines = [f"{'cut':>3} {'here ms':>8} {'bytes out':>10} {'link ms':>8} {'there ms':>9} "
                 f"{'total ms':>9} {'credits':>9} {'energy J':>9}"]
        for c in self.cuts:
            mark = "  <- chosen" if c.k == self.chosen.k else ""
            lines.append(f"{c.k:>3} {c.head_s * 1e3:8.2f} {c.up_bytes:>10} "
                         f"{(c.transfer_s + c.rtt_s) * 1e3:8.2f} {c.tail_s * 1e3:9.2f} "
                         f"{c.latency_s * 1e3:9.2f} {c.cost_credits:9.6f} "
                         f"{c.energy_j:9.3f}{mark}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"objective": self.objective, "chosen": self.chosen.k, "reason": self.reason,
                "power": dataclasses.asdict(self.power),
                "cuts": [c.to_json() for c in self.cuts]}


def cut_table(blocks: Sequence[Block], input_bytes: int, remote: Remote | None,
              power: Power) -> tuple[Cut, ...]:
    """Every cut's predicted parts; with no provider, only cut n."""
    n = len(blocks)
    if n == 0:
        raise SchedulerError("a model to split has at least one block")
    if remote is not None:
        if remote.speedup <= 0 or remote.bytes_per_s <= 0 or remote.rtt_s < 0:
            raise SchedulerError("a provider's speed-up and bandwidth are above 0")
        if remote.remote_s is not None and len(remote.remote_s) != n:
            raise SchedulerError("calibrated times are one per block")
    cuts = []
    for k in range(n + 1):
        head = sum(b.local_s for b in blocks[:k])
        if k == n or remote is None:
            if k == n:
                cuts.append(Cut(k=k, head_s=head, up_bytes=0, down_bytes=0, transfer_s=0.0,
                                tail_s=0.0, rtt_s=0.0, latency_s=head, cost_credits=0.0,
                                energy_j=head * power.watts, peer=None))
            continue
        up = input_bytes if k == 0 else blocks[k - 1].out_bytes
        down = blocks[-1].out_bytes
        if remote.remote_s is not None:
            tail = sum(remote.remote_s[k:])
        else:
            tail = sum(b.local_s for b in blocks[k:]) / remote.speedup
        transfer = (up + down) / remote.bytes_per_s
        latency = head + transfer + tail + remote.rtt_s
        cuts.append(Cut(k=k, head_s=head, up_bytes=up, down_bytes=down, transfer_s=transfer,
                        tail_s=tail, rtt_s=remote.rtt_s, latency_s=latency,
                        cost_credits=tail * remote.credits_per_s,
                        energy_j=head * power.watts + (up + down) * power.joules_per_byte,
                        peer=remote.peer))
    return tuple(cuts)


def choose(blocks: Sequence[Block], input_bytes: int, remote: Remote | None, power: Power,
           *, objective: Objective = "latency",
           max_latency_s: float | None = None) -> CutPlan:
    if objective not in OBJECTIVES:
        raise SchedulerError(f"objective is one of {', '.join(OBJECTIVES)}, not {objective!r}")
    cuts = cut_table(blocks, input_bytes, remote, power)

    def key(c: Cut) -> tuple[float, int]:
        value = {"latency": c.latency_s, "cost": c.cost_credits, "energy": c.energy_j}
        return (value[objective], -c.k)

    pool = list(cuts)
    reason = f"least {objective}"
    if objective == "cost":
        bound = max_latency_s if max_latency_s is not None else math.inf
        within = [c for c in cuts if c.latency_s <= bound]
        if within:
            pool = within
            if max_latency_s is not None:
                reason = f"least cost within {max_latency_s:g} s"
        else:
            pool, reason = list(cuts), f"no cut within {bound:g} s: least latency"
            best = min(pool, key=lambda c: (c.latency_s, -c.k))
            return CutPlan(objective=objective, cuts=cuts, chosen=best, power=power,
                           reason=reason)
    best = min(pool, key=key)
    if remote is None:
        reason = "no provider: all here"
    return CutPlan(objective=objective, cuts=cuts, chosen=best, power=power, reason=reason)


def hopeless(plan: CutPlan, margin: float) -> bool:
    """Whether no remote cut could come within `margin` x all-here even through a link of
    no transfer time (its head, tail and RTT alone): one not worth measuring."""
    here = next(c.latency_s for c in plan.cuts if c.peer is None)
    floors = [c.head_s + c.tail_s + c.rtt_s for c in plan.cuts if c.peer is not None]
    return not floors or min(floors) > margin * here


def drifted(planned: Remote, measured_rtt_s: float, measured_bytes_per_s: float, *,
            threshold: float = 0.5) -> bool:
    """Whether a link moved more than `threshold` (a share) from what the plan used."""
    def off(a: float, b: float) -> bool:
        return abs(a - b) > threshold * max(a, b, 1e-9)
    return (off(planned.rtt_s, measured_rtt_s) and planned.rtt_s + measured_rtt_s > 2e-3) or \
        off(planned.bytes_per_s, measured_bytes_per_s)


def partition(seconds: Sequence[float], weights: Sequence[int], stages: int,
              max_weight: int) -> tuple[tuple[int, int], ...]:
    """Contiguous [start, end) groups of the blocks, one per stage, each within
    `max_weight` (a provider's memory for weights), the slowest as fast as it can be (the
    pipeline's throughput). Raises SchedulerError when no such split exists."""
    n = len(seconds)
    if len(weights) != n or n == 0:
        raise SchedulerError("a pipeline needs one time and one weight per block")
    if not 1 <= stages <= n:
        raise SchedulerError(f"{stages} stages for {n} blocks: each stage holds a block")
    if max(weights) > max_weight:
        raise SchedulerError(f"a block of {max(weights)} bytes is above a stage's "
                             f"{max_weight} bytes of memory for weights")
    inf = math.inf
    # best[j][i]: the least slowest-stage time of blocks[:i] in j stages; cut[j][i]: its
    # last stage's start
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for j in range(1, stages + 1):
        for i in range(j, n + 1):
            t = w = 0.0
            for s in range(i - 1, j - 2, -1):  # the last stage is blocks[s:i]
                t += seconds[s]
                w += weights[s]
                if w > max_weight:
                    break
                slowest = max(best[j - 1][s], t)
                if slowest < best[j][i]:
                    best[j][i], cut[j][i] = slowest, s
    if best[stages][n] == inf:
        raise SchedulerError(f"the blocks' {sum(weights)} bytes of weights do not fit "
                             f"{stages} stage(s) of {max_weight} bytes")
    bounds, i = [], n
    for j in range(stages, 0, -1):
        s = cut[j][i]
        bounds.append((s, i))
        i = s
    return tuple(reversed(bounds))
