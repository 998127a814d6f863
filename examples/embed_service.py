"""An embedding service in a session: the model is loaded once, then thousands of small
batches are embedded by calls on the same loaded model.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # or requester.toml
    python examples/embed_service.py [--batches 2000] [--batch 4]

Each batch is one call (its tensor goes as the call's arguments, the embeddings come back
as a tensor in the safe value format, never a pickle). The last batch is checked against
embedding it here with the same weights.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from node import remote

DIM_IN, DIM_OUT = 64, 32


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM_IN, 128), nn.GELU(), nn.Linear(128, DIM_OUT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = nn.functional.normalize(self.net(x), dim=-1)
        return out


@remote(cpus=1, memory_gb=2.0, idle_timeout=60, max_duration=900, max_price=1.0)
class Embedder:
    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        torch.set_num_threads(1)
        self.model = Encoder().eval()
        self.model.load_state_dict(weights)
        self.batches = 0

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        with torch.no_grad():
            out: torch.Tensor = self.model(batch)
        return out

    def served(self) -> int:
        return self.batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    local = Encoder().eval()
    weights = local.state_dict()
    data = torch.randn(args.batches, args.batch, DIM_IN)
    opened = time.monotonic()
    with Embedder.session(weights) as e:  # type: ignore[attr-defined]
        print(f"session open in {time.monotonic() - opened:.2f} s", file=sys.stderr)
        start = time.monotonic()
        out = [e.embed(b) for b in data]
        took = time.monotonic() - start
        served = e.served()
    with torch.no_grad():
        expected = local(data[-1])
    print(f"{served} batches on one loaded model in {took:.1f} s "
          f"({took / args.batches * 1000:.2f} ms a call)", file=sys.stderr)
    if served != args.batches or not torch.allclose(out[-1], expected, atol=1e-5):
        sys.exit("the embeddings differ from computing them here")
    print(f"{served} batches embedded; the last one matches computing it here")


if __name__ == "__main__":
    main()
