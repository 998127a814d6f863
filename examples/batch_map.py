"""A batch map: estimate pi on several providers at once, one seed per item.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # or requester.toml
    python examples/batch_map.py

`estimate.map(seeds, sizes)` sends one job per item, spread over up to 4 providers; the
results come back in input order whichever provider finished first. `estimate.local(...)`
runs the same function here, for comparison.
"""

from __future__ import annotations

import time

import numpy as np

from node import remote


@remote(cpus=1, timeout=120, max_price=1.0)
def estimate(seed: int, samples: int) -> dict[str, float]:
    """Monte Carlo: the share of random points in the unit square inside the circle."""
    rng = np.random.default_rng(seed)
    xy = rng.random((samples, 2))
    inside = int(np.count_nonzero((xy**2).sum(axis=1) <= 1.0))
    return {"seed": seed, "pi": 4.0 * inside / samples}


def main() -> None:
    seeds = list(range(8))
    started = time.monotonic()
    results = list(estimate.map(seeds, [200_000] * len(seeds)))
    for r in results:
        print(f"seed {r['seed']}: pi ~ {r['pi']:.5f}")
    mean = sum(r["pi"] for r in results) / len(results)
    print(f"{len(results)} items in {time.monotonic() - started:.1f} s: pi ~ {mean:.5f}")
    assert results[3] == estimate.local(3, 200_000)  # same seed, same answer here
    print("item 3 matches a local run")


if __name__ == "__main__":
    main()
