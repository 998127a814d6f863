"""Offer ranking: `scheduler.scoring.rank` over many ads vs. a plain sort by price.

Usage: .venv/bin/python bench/bench_ranking.py [--ads N] [--repeat R] [--seed S]
Builds N random CapacityAds (not timed: construction validates every field), then times,
best of R: sorted() by the job's per-second price (baseline), rank() cold (first sight of
the ads: per-ad features computed), rank() warm (features memoised), and rank(limit=10).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from protocol import CapacityAd, Device, Identity, Price, Resources, Runtime
from scheduler import scoring
from scheduler.scoring import JobEstimate, Observations, rank
from scheduler.vivaldi import Coord

REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "")


def make_ads(n: int, rng: random.Random, digests: list[str]) -> list[CapacityAd]:
    peers = [Identity.generate().peer_id for _ in range(min(n, 512))]
    runtime = Runtime(name="python3", version="3.11", packages={}, digest="")
    ads = []
    for i in range(n):
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
        ads.append(CapacityAd(
            peer_id=peers[i % len(peers)], addrs=("/ip4/10.0.0.1/tcp/4001",),
            devices=tuple(devices), cpus=rng.choice((4, 8, 16, 64)), memory_mb=65536,
            runtimes=(runtime,),
            price=Price(start=rng.randrange(0, 10_000), per_cpu_second=rng.randrange(0, 50),
                        per_gpu_second=rng.randrange(0, 2_000),
                        per_gb_second=rng.randrange(0, 5),
                        per_gb_transfer=rng.randrange(0, 50_000)),
            sandbox_tier="A", region=rng.choice(REGIONS), coords=coords,
            cached=tuple(rng.sample(digests, rng.randrange(0, 4))), load=rng.random(), seq=1,
            expires=2_000_000_000_000))
    return ads


def best_ms(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None,
            ) -> float:
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
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
    ads = make_ads(args.ads, rng, digests)
    job = JobEstimate(resources=Resources(gpus=1, cpus=4, memory_mb=16384, max_seconds=3600),
                      gflop=5e6, input_digests=tuple(digests[:3]),
                      input_bytes_by_digest={d: 2**30 for d in digests[:3]})
    obs = Observations(rtt_ms={ads[i].peer_id: 20.0 + i for i in range(0, 512, 7)},
                       reputation={ads[i].peer_id: rng.random() for i in range(0, 512, 3)},
                       local_coord=Coord(x=10.0, y=-5.0, height=2.0, error=0.3))
    now = 1_000_000

    sort_ms = best_ms(lambda: sorted(ads, key=lambda a: a.price.per_gpu_second), args.repeat)
    cold_ms = best_ms(lambda: rank(ads, job, obs, now_ms=now), args.repeat,
                      before=scoring._MEMO.clear)
    warm_ms = best_ms(lambda: rank(ads, job, obs, now_ms=now), args.repeat)
    top_ms = best_ms(lambda: rank(ads, job, obs, now_ms=now, limit=10), args.repeat)
    print(json.dumps({
        "n": args.ads, "rank_ms": round(warm_ms, 1), "sort_by_price_ms": round(sort_ms, 1),
        "ratio": round(warm_ms / sort_ms, 2),
        "rank_cold_ms": round(cold_ms, 1), "ratio_cold": round(cold_ms / sort_ms, 2),
        "rank_top10_ms": round(top_ms, 1), "ratio_top10": round(top_ms / sort_ms, 2),
    }))


if __name__ == "__main__":
    main()
