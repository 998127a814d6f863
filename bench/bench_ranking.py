"""Offer ranking: an `OfferBook` of N ads ranked with numpy vs the per-ad reference.

Usage: .venv/bin/python bench/bench_ranking.py [--ads N] [--repeat R] [--seed S]

Ads are made once and not timed: a pool of 2,000 validated random ads, cloned to N ads
with a fresh peer id, load, expiry and cache each (building N validated ads would spend
~250 us per ad in the pure-Python peer-id check; the book never validates). Then, best
of R, in one process:
  build        OfferBook(ads): features of every ad into columns (one-time, per ad)
  replace      book.add of a newer ad for a known peer, one at a time (per ad)
  rank arrays  book.scores(...).order(): every ad scored and ordered, no per-ad objects
  rank all     book.rank(...): the same plus a ScoreParts object per ad
  rank top 10  book.rank(..., limit=10)
  list top 10  scoring.rank(ads, ..., limit=10): columns built for the one call
  reference    DefaultStrategy.score per ad, then sorted (the pure-Python baseline)
and checks that the book's top 100 are the reference's top 100. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol import CapacityAd, Device, Identity, Price, Resources, Runtime
from protocol.identity import b58encode
from scheduler.book import OfferBook
from scheduler.scoring import DefaultStrategy, JobEstimate, Observations, rank
from scheduler.vivaldi import Coord

REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "")
PEER_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
NOW = 1_000_000


def random_ad(rng: random.Random, peer: str, digests: list[str]) -> CapacityAd:
    """One validated ad with random hardware, price, place, cache and load."""
    gpus = rng.choice((0, 1, 1, 2, 4, 8))
    devices = [Device(kind="cpu", model="cpu", memory_mb=65536, compute_capability="",
                      count=1, gflops=rng.choice((0.0, rng.uniform(50, 2000))))]
    if gpus:
        fp32 = rng.choice((0.0, rng.uniform(5_000, 60_000)))
        devices.append(Device(kind="cuda", model="gpu", memory_mb=81920,
                              compute_capability="9.0", count=gpus, gflops=fp32,
                              bf16_gflops=fp32 * rng.uniform(2, 16),
                              utilization=rng.random()))
    coords = (() if rng.random() < 0.2 else
              (rng.uniform(-200, 200), rng.uniform(-200, 200), rng.uniform(0, 20),
               rng.uniform(0.05, 1.5)))
    return CapacityAd(
        peer_id=peer, addrs=("/ip4/10.0.0.1/tcp/4001",), devices=tuple(devices),
        cpus=rng.choice((4, 8, 16, 64)), memory_mb=65536,
        runtimes=(Runtime(name="python3", version="3.11", packages={}, digest=""),),
        price=Price(start=rng.randrange(0, 10_000), per_cpu_second=rng.randrange(0, 50),
                    per_gpu_second=rng.randrange(0, 2_000), per_gb_second=rng.randrange(0, 5),
                    per_gb_transfer=rng.randrange(0, 50_000)),
        sandbox_tier="A", region=rng.choice(REGIONS), coords=coords,
        cached=tuple(rng.sample(digests, rng.randrange(0, 4))), load=rng.random(), seq=1,
        expires=NOW + 120_000)


def clone(ad: CapacityAd, **fields: object) -> CapacityAd:
    """A copy with some fields set without re-validation (the values here are valid)."""
    out = copy.copy(ad)
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


def make_ads(n: int, rng: random.Random, digests: list[str]) -> list[CapacityAd]:
    peers = [Identity.generate().peer_id for _ in range(64)]
    pool = [random_ad(rng, peers[i % len(peers)], digests) for i in range(min(n, 2000))]
    return [clone(pool[i % len(pool)], peer_id=b58encode(PEER_PREFIX + rng.randbytes(32)),
                  load=rng.random(), cached=tuple(rng.sample(digests, rng.randrange(0, 4))),
                  expires=NOW + rng.choice((-1, 60_000, 120_000)))
            for i in range(n)]


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ads", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    digests = [f"{i:064x}" for i in range(8)]
    t0 = time.perf_counter()
    ads = make_ads(args.ads, rng, digests)
    make_s = time.perf_counter() - t0
    job = JobEstimate(resources=Resources(gpus=1, cpus=4, memory_mb=16384, max_seconds=3600),
                      gflop=5e6, input_digests=tuple(digests[:3]),
                      input_bytes_by_digest={d: 2**30 for d in digests[:3]})
    # a settled requester: RTT measured to 1 % of the peers, reputation for 10 %
    obs = Observations(rtt_ms={a.peer_id: rng.uniform(5, 300) for a in ads[::100]},
                       reputation={a.peer_id: rng.random() for a in ads[::10]},
                       local_coord=Coord(x=10.0, y=-5.0, height=2.0, error=0.3))
    strategy = DefaultStrategy()
    n, r = args.ads, args.repeat

    build_ms = best_ms(lambda: OfferBook(ads), max(1, r // 2))
    book = OfferBook(ads)
    newer = [clone(a, seq=2) for a in ads[:1000]]
    t = time.perf_counter()
    for a in newer:
        book.add(a)
    replace_us = (time.perf_counter() - t) / len(newer) * 1e6
    arrays_ms = best_ms(lambda: book.scores(job, obs, now_ms=NOW).order(), r)
    all_ms = best_ms(lambda: book.rank(job, obs, now_ms=NOW), r)
    top_ms = best_ms(lambda: book.rank(job, obs, now_ms=NOW, limit=10), r)
    list_ms = best_ms(lambda: rank(ads, job, obs, now_ms=NOW, limit=10), max(1, r // 2))

    def reference() -> list[tuple[float, int]]:
        scored = [(strategy.score(a, job, obs, now_ms=NOW).total, i)
                  for i, a in enumerate(book.columns.ads)]
        scored.sort()
        return scored

    ref_ms = best_ms(reference, 1)
    ref_top = [book.columns.ads[i] for _, i in reference()[:100]]
    agree = [a for a, _ in book.rank(job, obs, now_ms=NOW, limit=100)] == ref_top
    sort_ms = best_ms(lambda: sorted(ads, key=lambda a: a.price.per_gpu_second), r)

    def row(ms: float) -> dict[str, float]:
        return {"ms": round(ms, 2), "speedup_vs_reference": round(ref_ms / ms, 1)}

    print(json.dumps({
        "n": n, "repeat": r, "make_ads_s": round(make_s, 1),
        "build_book": {"ms": round(build_ms, 1), "us_per_ad": round(build_ms * 1e3 / n, 2)},
        "replace_one_us": round(replace_us, 1),
        "rank_all_arrays": row(arrays_ms),
        "rank_all_scoreparts": row(all_ms),
        "rank_top10": row(top_ms),
        "list_rank_top10_incl_columns": row(list_ms),
        "reference_per_ad_ms": round(ref_ms, 1),
        "sorted_by_price_ms": round(sort_ms, 2),
        "top100_agrees_with_reference": agree,
    }, indent=2))


if __name__ == "__main__":
    main()
