"""Offer scoring: one comparable number per ad from price, speed, load, data locality,
proximity and reputation. Lower is better.

The default formula (`DefaultStrategy`), per ad:

    throughput = GPU job: the sum of the job's `gpus` fastest GPUs' GFLOP/s (bf16 if asked)
                 CPU job: the ad's CPU GFLOP/s * min(1, job cpus / ad cpus)
                 nothing benchmarked: a pessimistic default (per GPU / per core)
    inflation  = min(max_load_inflation, 1 / (1 - load))   load = ad.load, or for a GPU job
                                                           the busier of it and mean GPU use
    compute_s  = gflop / throughput   (unknown gflop: unknown_runtime_share * max_seconds)
    run_s      = min(max_seconds, compute_s * inflation)   queue_s = run_s - compute_s
    transfer_s = input bytes not in ad.cached * 8 / bandwidth
    rtt_ms     = measured, else Vivaldi estimate from ad.coords, else default_rtt_ms
    seconds    = run_s + transfer_s + rtt_ms / 1000
    cost       = pricing.total(price, run_s of every reserved cpu, gpu and GB, uncached GB)
    total      = (cost + value_of_time_credits_per_s * seconds)
                 * (1 + reputation_weight * (0.5 - reputation))      reputation 0..1, prior 0.5

Expired ads score `inf`. `rank` scores every ad through a column-wise fast path built on
per-ad features computed once per ad object (and memoised); `DefaultStrategy.score` is the
plain per-ad reference and agrees with it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from itertools import repeat
from typing import Protocol, runtime_checkable

from protocol import CapacityAd, Resources
from scheduler.pricing import GB, MICRO, total
from scheduler.vivaldi import Coord, estimate_rtt_ms, from_ad

_INF = math.inf
_NAN = math.nan


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobEstimate:
    """What we know about a job before placing it."""

    resources: Resources
    gflop: float = 0.0
    """Estimated compute in GFLOP; 0 when unknown."""
    input_digests: tuple[str, ...] = ()
    input_bytes_by_digest: dict[str, int] = dataclasses.field(default_factory=dict)
    """Size of each input; a digest missing here counts as 0 bytes."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Observations:
    """What this node has measured about the network and its peers."""

    rtt_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    bandwidth_mbps: float = 50.0
    reputation: dict[str, float] = dataclasses.field(default_factory=dict)
    """Peer id -> 0..1; peers missing here get the neutral prior 0.5."""
    local_coord: Coord | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScoreParts:
    """One ad's score and the estimates behind it."""

    cost_credits: float
    seconds: float
    """Compute + queue + transfer + RTT."""
    transfer_s: float
    rtt_ms: float
    reputation: float
    locality: float
    """Share of the input bytes already cached by the provider (1.0 with no inputs)."""
    total: float
    """Lower is better."""


class Strategy(Protocol):
    """Scores one ad for one job; `rank` sorts by `ScoreParts.total`."""

    def score(self, ad: CapacityAd, job: JobEstimate, obs: Observations, *,
              now_ms: int) -> ScoreParts: ...


@runtime_checkable
class BatchStrategy(Strategy, Protocol):
    """A strategy that can also score many ads at once, as columns."""

    def score_columns(self, ads: Sequence[CapacityAd], job: JobEstimate, obs: Observations,
                      *, now_ms: int) -> list[list[float]]: ...


# Per-ad features that do not depend on the job, as one plain tuple (see _features).
_Features = tuple[
    str, int, int, int, int, int, int,    # peer, start, minimum, cpu/gpu/gb-s/transfer rates
    float, int,                           # cpu GFLOP/s total, ad cpus
    tuple[float, ...], tuple[float, ...],  # fp32 / bf16 GPU GFLOP/s prefix sums, fastest first
    float, float,                         # load for a CPU job, load for a GPU job
    float, float, float,                  # Vivaldi x, y, height (nan without coords)
    frozenset[str], int,                  # cached digests, expires
]
_MEMO: dict[int, tuple[CapacityAd, _Features]] = {}
_MEMO_MAX = 1 << 18


def _prefix(rates: list[float]) -> tuple[float, ...]:
    out = [0.0]
    for r in sorted(rates, reverse=True):
        out.append(out[-1] + r)
    return tuple(out)


def _compute_features(ad: CapacityAd) -> _Features:
    p = ad.price
    cpu = 0.0
    fp32: list[float] = []
    bf16: list[float] = []
    utils: list[float] = []
    for d in ad.devices:
        if d.kind == "cuda":
            fp32.extend([d.gflops] * d.count)
            bf16.extend([d.bf16_gflops or d.gflops] * d.count)
            utils.append(d.utilization)
        else:
            cpu += d.gflops * d.count
    gpu_load = max(ad.load, sum(utils) / len(utils)) if utils else ad.load
    c = from_ad(ad.coords)
    x, y, h = (c.x, c.y, c.height) if c is not None else (_NAN, _NAN, _NAN)
    return (ad.peer_id, p.start, p.minimum, p.per_cpu_second, p.per_gpu_second,
            p.per_gb_second, p.per_gb_transfer, cpu, ad.cpus, _prefix(fp32), _prefix(bf16),
            ad.load, gpu_load, x, y, h, frozenset(ad.cached), ad.expires)


def _features(ad: CapacityAd) -> _Features:
    """The ad's job-independent features, memoised by object identity (ads are frozen)."""
    hit = _MEMO.get(id(ad))
    if hit is not None and hit[0] is ad:
        return hit[1]
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    f = _compute_features(ad)
    _MEMO[id(ad)] = (ad, f)
    return f


def _inflation(load: float, cap: float) -> float:
    return cap if load >= 1.0 else min(cap, 1.0 / (1.0 - load))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DefaultStrategy:
    """Cost plus the value of the time it takes, scaled by a reputation penalty.

    value_of_time_credits_per_s: credits one second of waiting is worth (cost vs time).
    reputation_weight: 1.0 makes the multiplier 1.5 - reputation (0.5 neutral -> 1.0).
    default_cpu_gflops / default_gpu_gflops: pessimistic throughput per requested core /
      GPU for ads that report no benchmark.
    max_load_inflation: cap of 1 / (1 - load).
    unknown_runtime_share: share of max_seconds a job of unknown gflop is assumed to run.
    default_rtt_ms: RTT when neither measured nor estimable from coordinates.
    use_bf16: rate GPUs by their bf16 throughput (falls back to fp32 when not measured).
    """

    value_of_time_credits_per_s: float = 0.001
    reputation_weight: float = 1.0
    default_cpu_gflops: float = 5.0
    default_gpu_gflops: float = 1000.0
    max_load_inflation: float = 10.0
    unknown_runtime_share: float = 0.25
    default_rtt_ms: float = 50.0
    use_bf16: bool = False

    def score(self, ad: CapacityAd, job: JobEstimate, obs: Observations, *,
              now_ms: int) -> ScoreParts:
        """The reference per-ad score (see the module docstring for the formula)."""
        f = _compute_features(ad)
        res = job.resources
        if res.gpus > 0:
            prefix = f[10] if self.use_bf16 else f[9]
            thr = prefix[min(res.gpus, len(prefix) - 1)]
            thr = thr if thr > 0.0 else self.default_gpu_gflops * res.gpus
            load = f[12]
        else:
            thr = f[7] * min(1.0, res.cpus / f[8]) if f[8] > 0 else 0.0
            thr = thr if thr > 0.0 else self.default_cpu_gflops * res.cpus
            load = f[11]
        infl = _inflation(load, self.max_load_inflation)
        work_s = (job.gflop / thr if job.gflop > 0.0
                  else self.unknown_runtime_share * res.max_seconds)
        run_s = min(float(res.max_seconds), work_s * infl)
        sizes = job.input_bytes_by_digest
        all_bytes = sum(sizes.get(d, 0) for d in job.input_digests)
        missing = sum(sizes.get(d, 0) for d in job.input_digests if d not in f[16])
        transfer_s = missing * 8.0 / (max(obs.bandwidth_mbps, 1e-3) * 1e6)
        rtt = self._rtt(ad, obs)
        seconds = run_s + transfer_s + rtt / 1000.0
        micro = total(ad.price, cpu_s=res.cpus * run_s, gpu_s=res.gpus * run_s,
                      gb_s=res.memory_mb / 1024 * run_s, gb=missing / GB)
        cost = micro / MICRO
        rep = obs.reputation.get(ad.peer_id, 0.5)
        value = ((cost + self.value_of_time_credits_per_s * seconds)
                 * (1.0 + self.reputation_weight * (0.5 - rep)))
        if ad.expires <= now_ms:
            value = _INF
        locality = 1.0 if all_bytes == 0 else (all_bytes - missing) / all_bytes
        return ScoreParts(cost_credits=cost, seconds=seconds, transfer_s=transfer_s,
                          rtt_ms=rtt, reputation=rep, locality=locality, total=value)

    def _rtt(self, ad: CapacityAd, obs: Observations) -> float:
        measured = obs.rtt_ms.get(ad.peer_id)
        if measured is not None and math.isfinite(measured) and measured > 0.0:
            return measured
        theirs = from_ad(ad.coords)
        if obs.local_coord is not None and theirs is not None:
            return estimate_rtt_ms(obs.local_coord, theirs)
        return self.default_rtt_ms

    def score_columns(self, ads: Sequence[CapacityAd], job: JobEstimate, obs: Observations,
                      *, now_ms: int) -> list[list[float]]:
        """`score` for many ads as columns, in ScoreParts field order (the fast path)."""
        n = len(ads)
        if n == 0:
            return [[] for _ in range(7)]
        cols = list(zip(*map(_features, ads), strict=True))
        peers: tuple[str, ...] = cols[0]
        res = job.resources
        cap = self.max_load_inflation
        loads: tuple[float, ...]
        if res.gpus > 0:
            g, dflt = res.gpus, self.default_gpu_gflops * res.gpus
            prefixes: tuple[tuple[float, ...], ...] = cols[10] if self.use_bf16 else cols[9]
            thr = [p[g] if g < len(p) else p[-1] for p in prefixes]
            loads = cols[12]
        else:
            c, dflt = res.cpus, self.default_cpu_gflops * res.cpus
            thr = [t * (c / k if c < k else 1.0) if k > 0 else 0.0
                   for t, k in zip(cols[7], cols[8], strict=True)]
            loads = cols[11]
        max_s = float(res.max_seconds)
        if job.gflop > 0.0:
            w = job.gflop
            run = [min(max_s, w / (t if t > 0.0 else dflt)
                       * (cap if ld >= 1.0 else min(cap, 1.0 / (1.0 - ld))))
                   for t, ld in zip(thr, loads, strict=True)]
        else:
            w = self.unknown_runtime_share * max_s
            run = [min(max_s, w * (cap if ld >= 1.0 else min(cap, 1.0 / (1.0 - ld))))
                   for ld in loads]
        # Bytes to move: one C-level pass per input digest.
        sizes = job.input_bytes_by_digest
        all_bytes = sum(sizes.get(d, 0) for d in job.input_digests)
        missing: list[float] = [float(all_bytes)] * n
        if all_bytes:
            cached: tuple[frozenset[str], ...] = cols[16]
            for d in job.input_digests:
                size = sizes.get(d, 0)
                if size:
                    hit = map(operator.contains, cached, repeat(d))
                    missing = list(map(operator.sub, missing,
                                       map(operator.mul, hit, repeat(size))))
            locality = [(all_bytes - m) / all_bytes for m in missing]
        else:
            locality = [1.0] * n
        per_byte_s = 8.0 / (max(obs.bandwidth_mbps, 1e-3) * 1e6)
        transfer = list(map(operator.mul, missing, repeat(per_byte_s)))
        rtt = self._rtt_column(peers, cols[13], cols[14], cols[15], obs)
        seconds = [r + t + q / 1000.0 for r, t, q in zip(run, transfer, rtt, strict=True)]
        # pricing.total, inlined: max(minimum, start + ceil(rates * run_s + transfer rate * GB))
        cpus, gpus, mem_gb = res.cpus, res.gpus, res.memory_mb / 1024
        ceil = math.ceil
        cost = [max(mn, st + ceil(pc * (cpus * r) + pg * (gpus * r) + pm * (mem_gb * r)
                                  + pt * (m / GB))) / MICRO
                for mn, st, pc, pg, pm, pt, r, m in zip(
                    cols[2], cols[1], cols[3], cols[4], cols[5], cols[6], run, missing,
                    strict=True)]
        rep = list(map(obs.reputation.get, peers, repeat(0.5)))
        vot, rw = self.value_of_time_credits_per_s, self.reputation_weight
        totals = [(c + vot * s) * (1.0 + rw * (0.5 - p)) if e > now_ms else _INF
                  for c, s, p, e in zip(cost, seconds, rep, cols[17], strict=True)]
        return [cost, seconds, transfer, rtt, rep, locality, totals]

    def _rtt_column(self, peers: tuple[str, ...], xs: tuple[float, ...], ys: tuple[float, ...],
                    hs: tuple[float, ...], obs: Observations) -> list[float]:
        dflt = self.default_rtt_ms
        local = obs.local_coord
        if local is None:
            est = [dflt] * len(peers)
        else:
            lx, ly, lh = local.x, local.y, local.height
            dist = map(math.hypot, map(operator.sub, xs, repeat(lx)),
                       map(operator.sub, ys, repeat(ly)))
            est = [v if v == v else dflt  # nan: the ad carries no usable coordinate
                   for v in map(operator.add, dist, map(operator.add, hs, repeat(lh)))]
        if not obs.rtt_ms:
            return est
        measured = {p: v for p, v in obs.rtt_ms.items() if math.isfinite(v) and v > 0.0}
        return [v if v is not None else e
                for v, e in zip(map(measured.get, peers), est, strict=True)]


def rank(ads: Sequence[CapacityAd], job: JobEstimate, obs: Observations, *,
         strategy: Strategy = DefaultStrategy(), now_ms: int,
         limit: int | None = None) -> list[tuple[CapacityAd, ScoreParts]]:
    """Ads with their scores, best (lowest total) first; ties keep the input order.

    `limit` keeps only the best few: every ad is still scored and sorted, but only the kept
    ones get a ScoreParts object, which is most of the cost for very long lists.
    """
    if not isinstance(strategy, BatchStrategy):
        scored = [(ad, strategy.score(ad, job, obs, now_ms=now_ms)) for ad in ads]
        scored.sort(key=lambda pair: pair[1].total)
        return scored if limit is None else scored[:limit]
    cols = strategy.score_columns(ads, job, obs, now_ms=now_ms)
    totals = cols[6]
    order = sorted(range(len(totals)), key=totals.__getitem__)
    if limit is not None:
        order = order[:limit]
    cost, seconds, transfer, rtt, rep, locality = cols[:6]
    return [(ads[i], ScoreParts(cost_credits=cost[i], seconds=seconds[i],
                                transfer_s=transfer[i], rtt_ms=rtt[i], reputation=rep[i],
                                locality=locality[i], total=totals[i]))
            for i in order]
