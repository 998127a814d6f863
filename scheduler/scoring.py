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

Expired ads score `inf`. `DefaultStrategy.score` is the per-ad reference;
`DefaultStrategy.score_arrays` computes the same numbers with numpy over `AdColumns`, the
job-independent features of many ads in columns (kept by `book.OfferBook`, or built for
one call of `rank`). A strategy without `score_arrays` is called once per ad.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from protocol import CapacityAd, Resources
from scheduler.pricing import GB, MICRO, total
from scheduler.vivaldi import Coord, estimate_rtt_ms, from_ad

if TYPE_CHECKING:  # numpy is imported where it is used: a small `rank` never needs it
    import numpy as np
    from numpy.typing import NDArray

    F64 = NDArray[np.float64]
    Rows = NDArray[np.intp]

PER_AD_BELOW = 32
"""`rank` scores fewer ads than this one by one (`DefaultStrategy.score`), without numpy."""


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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScoreArrays:
    """`ScoreParts` of many ads as arrays, row-aligned with the `AdColumns` scored."""

    cost_credits: F64
    seconds: F64
    transfer_s: F64
    rtt_ms: F64
    reputation: F64
    locality: F64
    total: F64

    def order(self, limit: int | None = None) -> Rows:
        """Rows best (lowest total) first, ties by row; only the best `limit` if given.

        With a limit the rows are partitioned first, so only the candidates are sorted.
        """
        import numpy as np
        t = self.total
        n = len(t)
        if limit is None or limit < 0 or limit >= n:
            full = np.argsort(t, kind="stable")
            return full if limit is None else full[:limit]
        if limit == 0:
            return np.empty(0, dtype=np.intp)
        kth = np.partition(t, limit - 1)[limit - 1]
        if math.isnan(kth):  # fewer than `limit` comparable totals: sort them all
            return np.argsort(t, kind="stable")[:limit]
        cand = np.flatnonzero(t <= kth)  # every tie of the kth value, in row order
        return cand[np.argsort(t[cand], kind="stable")][:limit]

    def parts(self, rows: Iterable[int]) -> list[ScoreParts]:
        """ScoreParts objects for the given rows (the costly step for very many rows)."""
        import numpy as np
        idx = np.fromiter(rows, dtype=np.intp)
        cols = [getattr(self, f.name)[idx].tolist() for f in dataclasses.fields(self)]
        return [ScoreParts(cost_credits=c, seconds=s, transfer_s=t, rtt_ms=r, reputation=p,
                           locality=lo, total=v)
                for c, s, t, r, p, lo, v in zip(*cols, strict=True)]


class Strategy(Protocol):
    """Scores one ad for one job; `rank` sorts by `ScoreParts.total`."""

    def score(self, ad: CapacityAd, job: JobEstimate, obs: Observations, *,
              now_ms: int) -> ScoreParts: ...


@runtime_checkable
class BatchStrategy(Strategy, Protocol):
    """A strategy that can also score many ads at once, from their feature columns."""

    def score_arrays(self, cols: AdColumns, job: JobEstimate, obs: Observations, *,
                     now_ms: int) -> ScoreArrays: ...


# Job-independent scalar features of an ad, one row of AdColumns each (see _features).
_SCALARS = ("start", "minimum", "per_cpu_second", "per_gpu_second", "per_gb_second",
            "per_gb_transfer", "cpu_gflops", "cpus", "cpu_load", "gpu_load", "x", "y",
            "height", "expires")
_IX = {name: i for i, name in enumerate(_SCALARS)}
Groups = tuple[tuple[float, int], ...]
"""GPU (rate, count) groups, fastest first; the top-g sum takes whole groups in order."""
_Features = tuple[tuple[float, ...], Groups, Groups]


def _features(ad: CapacityAd) -> _Features:
    """The ad's scalar features and its fp32 / bf16 GPU groups."""
    p = ad.price
    cpu = 0.0
    fp32: list[tuple[float, int]] = []
    bf16: list[tuple[float, int]] = []
    utils: list[float] = []
    for d in ad.devices:
        if d.kind == "cuda":
            fp32.append((d.gflops, d.count))
            bf16.append((d.bf16_gflops or d.gflops, d.count))
            utils.append(d.utilization)
        else:
            cpu += d.gflops * d.count
    gpu_load = max(ad.load, sum(utils) / len(utils)) if utils else ad.load
    c = from_ad(ad.coords)
    x, y, h = (c.x, c.y, c.height) if c is not None else (math.nan, math.nan, math.nan)
    scalars = (p.start, p.minimum, p.per_cpu_second, p.per_gpu_second, p.per_gb_second,
               p.per_gb_transfer, cpu, ad.cpus, ad.load, gpu_load, x, y, h, ad.expires)
    desc = sorted(fp32, key=lambda g: -g[0]), sorted(bf16, key=lambda g: -g[0])
    return tuple(map(float, scalars)), tuple(desc[0]), tuple(desc[1])


def _top_sum(groups: Groups, g: int) -> float:
    """GFLOP/s of the `g` fastest GPUs (all of them if fewer)."""
    acc, before = 0.0, 0
    for rate, count in groups:
        acc += rate * min(max(g - before, 0), count)
        before += count
    return acc


def _set_add(index: dict[str, set[int]], key: str, row: int) -> None:
    rows = index.get(key)
    if rows is None:
        index[key] = {row}
    else:
        rows.add(row)


def _set_drop(index: dict[str, set[int]], key: str, row: int) -> None:
    rows = index[key]
    rows.discard(row)
    if not rows:
        del index[key]


class AdColumns:
    """Job-independent features of many ads as numpy columns, one row per ad.

    Rows keep insertion order until `remove` moves the last row into the hole. Storage
    grows by doubling; peers and cached digests are indexed by row.
    """

    __slots__ = ("_ads", "_by_digest", "_by_peer", "_f", "_gpu", "_n")

    def __init__(self, capacity: int = 64) -> None:
        import numpy as np
        cap = max(capacity, 1)
        self._ads: list[CapacityAd] = []
        self._n = 0
        self._f: F64 = np.zeros((len(_SCALARS), cap))
        # [fp32 / bf16][rate / count before this group / count][group][row]
        self._gpu: F64 = np.zeros((2, 3, 0, cap))
        self._by_peer: dict[str, set[int]] = {}
        self._by_digest: dict[str, set[int]] = {}

    @classmethod
    def of(cls, ads: Sequence[CapacityAd]) -> AdColumns:
        """Columns of these ads, in order (duplicates of a peer stay separate rows)."""
        cols = cls(len(ads))
        cols.extend(ads)
        return cols

    def __len__(self) -> int:
        return self._n

    @property
    def ads(self) -> Sequence[CapacityAd]:
        """The ads by row (read only)."""
        return self._ads

    def feature(self, name: str) -> F64:
        """One scalar feature of every row (a view: do not write)."""
        return self._f[_IX[name], :self._n]

    def rows_of(self, peer: str) -> frozenset[int]:
        """The rows holding an ad of `peer`."""
        return frozenset(self._by_peer.get(peer, ()))

    def rows_caching(self, digest: str) -> Rows:
        """The rows whose ad caches `digest`."""
        import numpy as np
        rows = self._by_digest.get(digest, ())
        return np.fromiter(rows, dtype=np.intp, count=len(rows))

    def lookup(self, values: Mapping[str, float], default: float) -> F64:
        """A per-peer value for every row (`default` for peers missing in `values`)."""
        import numpy as np
        n = self._n
        if len(values) * 8 >= n:
            peers = (ad.peer_id for ad in self._ads)
            return np.fromiter(map(values.get, peers, repeat(default)), np.float64, count=n)
        out = np.full(n, default)
        for peer, v in values.items():
            for row in self._by_peer.get(peer, ()):
                out[row] = v
        return out

    def gpu_throughput(self, g: int, *, bf16: bool) -> F64:
        """GFLOP/s of each row's `g` fastest GPUs (0 without GPUs)."""
        import numpy as np
        n = self._n
        gpu = self._gpu[1 if bf16 else 0, :, :, :n]
        out = np.zeros(n)
        for j in range(gpu.shape[1]):
            rate, before, count = gpu[0, j], gpu[1, j], gpu[2, j]
            out += rate * np.clip(g - before, 0.0, count)
        return out

    def extend(self, ads: Sequence[CapacityAd]) -> None:
        """Append rows for these ads."""
        import numpy as np
        k = len(ads)
        if k == 0:
            return
        feats = [_features(ad) for ad in ads]
        start = self._n
        self._reserve(start + k, max(max(len(f[1]) for f in feats), self._gpu.shape[2]))
        self._f[:, start:start + k] = np.array([f[0] for f in feats]).T
        self._write_groups(start, feats)
        self._ads.extend(ads)
        self._n = start + k
        for row, ad in enumerate(ads, start):
            self._index(row, ad)

    def set(self, row: int, ad: CapacityAd) -> None:
        """Replace the ad in `row`."""
        if not 0 <= row < self._n:
            raise IndexError(f"row {row} out of range for {self._n} rows")
        self._unindex(row, self._ads[row])
        feats = _features(ad)
        self._reserve(self._n, max(len(feats[1]), self._gpu.shape[2]))
        self._f[:, row] = feats[0]
        self._gpu[:, :, :, row] = 0.0
        self._write_groups(row, [feats])
        self._ads[row] = ad
        self._index(row, ad)

    def remove(self, row: int) -> None:
        """Drop `row`; the last row moves into its place."""
        if not 0 <= row < self._n:
            raise IndexError(f"row {row} out of range for {self._n} rows")
        last = self._n - 1
        self._unindex(row, self._ads[row])
        if row != last:
            moved = self._ads[last]
            self._unindex(last, moved)
            self._f[:, row] = self._f[:, last]
            self._gpu[:, :, :, row] = self._gpu[:, :, :, last]
            self._ads[row] = moved
            self._index(row, moved)
        self._gpu[:, :, :, last] = 0.0
        self._ads.pop()
        self._n = last

    def _reserve(self, rows: int, groups: int) -> None:
        import numpy as np
        cap = self._f.shape[1]
        if rows <= cap and groups <= self._gpu.shape[2]:
            return
        new_cap = cap if rows <= cap else max(rows, 2 * cap)
        f = np.zeros((len(_SCALARS), new_cap))
        f[:, :self._n] = self._f[:, :self._n]
        gpu = np.zeros((2, 3, groups, new_cap))
        gpu[:, :, :self._gpu.shape[2], :self._n] = self._gpu[:, :, :, :self._n]
        self._f, self._gpu = f, gpu

    def _write_groups(self, start: int, feats: Sequence[_Features]) -> None:
        for i, (_, fp32, bf16) in enumerate(feats):
            for p, groups in enumerate((fp32, bf16)):
                before = 0
                for j, (rate, count) in enumerate(groups):
                    self._gpu[p, :, j, start + i] = (rate, before, count)
                    before += count

    def _index(self, row: int, ad: CapacityAd) -> None:
        _set_add(self._by_peer, ad.peer_id, row)
        for d in set(ad.cached):
            _set_add(self._by_digest, d, row)

    def _unindex(self, row: int, ad: CapacityAd) -> None:
        _set_drop(self._by_peer, ad.peer_id, row)
        for d in set(ad.cached):
            _set_drop(self._by_digest, d, row)


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
        f, fp32, bf16 = _features(ad)
        res = job.resources
        if res.gpus > 0:
            thr = _top_sum(bf16 if self.use_bf16 else fp32, res.gpus)
            thr = thr if thr > 0.0 else self.default_gpu_gflops * res.gpus
            load = f[_IX["gpu_load"]]
        else:
            cpu, cpus = f[_IX["cpu_gflops"]], f[_IX["cpus"]]
            thr = cpu * min(1.0, res.cpus / cpus) if cpus > 0 else 0.0
            thr = thr if thr > 0.0 else self.default_cpu_gflops * res.cpus
            load = f[_IX["cpu_load"]]
        infl = _inflation(load, self.max_load_inflation)
        work_s = (job.gflop / thr if job.gflop > 0.0
                  else self.unknown_runtime_share * res.max_seconds)
        run_s = min(float(res.max_seconds), work_s * infl)
        sizes = job.input_bytes_by_digest
        all_bytes = sum(sizes.get(d, 0) for d in job.input_digests)
        cached = frozenset(ad.cached)
        missing = sum(sizes.get(d, 0) for d in job.input_digests if d not in cached)
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
            value = math.inf
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

    def score_arrays(self, cols: AdColumns, job: JobEstimate, obs: Observations, *,
                     now_ms: int) -> ScoreArrays:
        """`score` for every row of `cols` at once, with numpy."""
        import numpy as np
        n, f, res = len(cols), cols.feature, job.resources
        if res.gpus > 0:
            thr = cols.gpu_throughput(res.gpus, bf16=self.use_bf16)
            dflt = self.default_gpu_gflops * res.gpus
            load = f("gpu_load")
        else:
            cpus = f("cpus")
            with np.errstate(divide="ignore"):
                share = np.minimum(1.0, res.cpus / cpus)
            thr = np.where(cpus > 0, f("cpu_gflops") * share, 0.0)
            dflt = self.default_cpu_gflops * res.cpus
            load = f("cpu_load")
        thr = np.where(thr > 0.0, thr, dflt)
        cap = self.max_load_inflation
        max_s = float(res.max_seconds)
        with np.errstate(divide="ignore", over="ignore"):  # inf, as in plain Python
            infl = np.where(load >= 1.0, cap, np.minimum(cap, 1.0 / (1.0 - load)))
            work = (job.gflop / thr if job.gflop > 0.0
                    else np.full(n, self.unknown_runtime_share * res.max_seconds))
            run = np.minimum(max_s, work * infl)
        sizes = job.input_bytes_by_digest
        all_bytes = sum(sizes.get(d, 0) for d in job.input_digests)
        missing = np.full(n, float(all_bytes))
        for d in job.input_digests:
            size = sizes.get(d, 0)
            if size:
                missing[cols.rows_caching(d)] -= size
        transfer = missing * 8.0 / (max(obs.bandwidth_mbps, 1e-3) * 1e6)
        rtt = self._rtt_array(cols, obs)
        seconds = run + transfer + rtt / 1000.0
        variable = (f("per_cpu_second") * (res.cpus * run) + f("per_gpu_second") * (res.gpus * run)
                    + f("per_gb_second") * (res.memory_mb / 1024 * run)
                    + f("per_gb_transfer") * (missing / GB))
        cost = np.maximum(f("minimum"), f("start") + np.ceil(variable)) / MICRO
        rep = cols.lookup(obs.reputation, 0.5)
        value = ((cost + self.value_of_time_credits_per_s * seconds)
                 * (1.0 + self.reputation_weight * (0.5 - rep)))
        value = np.where(f("expires") > now_ms, value, math.inf)
        locality = (np.ones(n) if all_bytes == 0 else (all_bytes - missing) / all_bytes)
        return ScoreArrays(cost_credits=cost, seconds=seconds, transfer_s=transfer, rtt_ms=rtt,
                           reputation=rep, locality=locality, total=value)

    def _rtt_array(self, cols: AdColumns, obs: Observations) -> F64:
        import numpy as np
        local = obs.local_coord
        if local is None:
            est = np.full(len(cols), self.default_rtt_ms)
        else:
            x, y, h = cols.feature("x"), cols.feature("y"), cols.feature("height")
            est = np.hypot(local.x - x, local.y - y) + local.height + h
            est = np.where(np.isnan(h), self.default_rtt_ms, est)  # no usable coordinate
        if not obs.rtt_ms:
            return est
        measured = cols.lookup(obs.rtt_ms, math.nan)
        return np.where(np.isfinite(measured) & (measured > 0.0), measured, est)


def _rank_each(ads: Sequence[CapacityAd], job: JobEstimate, obs: Observations,
               strategy: Strategy, now_ms: int,
               limit: int | None) -> list[tuple[CapacityAd, ScoreParts]]:
    scored = [(ad, strategy.score(ad, job, obs, now_ms=now_ms)) for ad in ads]
    scored.sort(key=lambda pair: (math.isnan(pair[1].total), pair[1].total))  # NaN last
    return scored if limit is None else scored[:limit]


def rank_columns(cols: AdColumns, job: JobEstimate, obs: Observations, *,
                 strategy: Strategy = DefaultStrategy(), now_ms: int,
                 limit: int | None = None) -> list[tuple[CapacityAd, ScoreParts]]:
    """The rows of `cols` with their scores, best first; ties keep row order.

    A `BatchStrategy` scores all rows with numpy and only the kept rows get a ScoreParts
    object; any other strategy is called once per ad.
    """
    ads = cols.ads
    if not isinstance(strategy, BatchStrategy):
        return _rank_each(ads, job, obs, strategy, now_ms, limit)
    arrays = strategy.score_arrays(cols, job, obs, now_ms=now_ms)
    rows = arrays.order(limit).tolist()
    return list(zip([ads[i] for i in rows], arrays.parts(rows), strict=True))


def rank(ads: Sequence[CapacityAd], job: JobEstimate, obs: Observations, *,
         strategy: Strategy = DefaultStrategy(), now_ms: int,
         limit: int | None = None) -> list[tuple[CapacityAd, ScoreParts]]:
    """Ads with their scores, best (lowest total) first; ties keep the input order.

    Builds the ads' columns for this one call (from `PER_AD_BELOW` ads on; fewer are
    scored one by one); a requester that ranks the same ads for many jobs keeps them in a
    `book.OfferBook` instead.
    """
    if not isinstance(strategy, BatchStrategy) or len(ads) < PER_AD_BELOW:
        return _rank_each(ads, job, obs, strategy, now_ms, limit)
    return rank_columns(AdColumns.of(ads), job, obs, strategy=strategy, now_ms=now_ms,
                        limit=limit)
