"""A short training run on a provider that returns its checkpoint as an output file.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # or requester.toml
    python examples/train_checkpoint.py

Files the function writes under ./out/ come back next to the signed result; `.call()`
returns the whole verified Result (value, outputs, price), where `.remote()` returns only
the value. The checkpoint is loaded here with `torch.load(weights_only=True)`, which reads
tensors without running any code from the file.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from node import remote


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))


@remote(cpus=1, timeout=300, max_price=2.0)
def train(steps: int, lr: float = 0.05) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(1024, 8)
    y = (x * torch.linspace(-1, 1, 8)).sum(dim=1, keepdim=True) + 0.01 * torch.randn(1024, 1)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = last = 0.0
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = loss.item() if step == 0 else first
        last = loss.item()
        if step % 50 == 0:
            print(f"step {step}: loss {last:.4f}")
    os.makedirs("out", exist_ok=True)
    torch.save(model.state_dict(), "out/checkpoint.pt")
    return {"first_loss": first, "final_loss": last, "steps": float(steps)}


def main() -> None:
    result = train.call(steps=200)
    print(f"job {result.job_id[:12]} on {result.provider[:16]}: {result.value}, "
          f"charged {result.charged / 1e6:.6f} credits")
    checkpoint = result.outputs["checkpoint.pt"]
    model = make_model()
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    print(f"checkpoint {checkpoint} loaded: {sum(p.numel() for p in model.parameters())} "
          "parameters")
    assert result.value["final_loss"] < result.value["first_loss"]


if __name__ == "__main__":
    main()
