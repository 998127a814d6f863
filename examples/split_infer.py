"""Split inference of a small CNN: the cut table printed, then the split model used in a
loop, each output checked against running the whole model here.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # or requester.toml
    python examples/split_infer.py [--objective latency|cost|energy] [--calls 20]

The first blocks (cheap convolutions with large activations) and the last ones (a small
classifier) trade compute for bytes on the link: which cut wins depends on this machine,
the provider and the link between them, as measured when the split is made.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from node import split


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 16 * 16, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", default="latency", choices=("latency", "cost", "energy"))
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net, x = model(), torch.randn(4, 3, 64, 64)
    with split(net, x, objective=args.objective, max_price=1.0) as sm:
        plan = sm.plan
        print("\n".join(plan.table()))
        print(f"chosen: cut {plan.chosen.k} ({plan.reason}); power: {plan.power.source}")
        times, worst = [], 0.0
        for _ in range(args.calls):
            batch = torch.randn(4, 3, 64, 64)
            t = time.perf_counter()
            y = sm(batch)
            times.append((time.perf_counter() - t) * 1e3)
            with torch.no_grad():
                worst = max(worst, float((y - net(batch)).abs().max()))
        print(f"{args.calls} calls: median {statistics.median(times):.2f} ms, cut "
              f"{sm.plan.chosen.k} at the end ({sm.replans} re-plan(s)); largest difference "
              f"from running here {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
