"""Torch inference on a provider, with a small model defined right here in the script.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # or requester.toml
    python examples/torch_infer.py

The model's class and its weights travel with the function (cloudpickle, unpickled only
in the provider's sandbox); the logits come back as a torch tensor in a safe format
(dtype, shape, raw bytes), never as a pickle.
"""

from __future__ import annotations

import torch
from torch import nn

from node import remote


class TinyClassifier(nn.Module):
    """Two layers: 16 features in, 4 classes out."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


torch.manual_seed(0)
MODEL = TinyClassifier().eval()


@remote(cpus=1, memory_gb=2.0, timeout=120, max_price=1.0)
def predict(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        logits = MODEL(batch)
    return {"logits": logits, "labels": logits.argmax(dim=1)}


def main() -> None:
    batch = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    there = predict.remote(batch)
    here = predict.local(batch)
    print("labels from the provider:", there["labels"].tolist())
    print("labels computed here:    ", here["labels"].tolist())
    assert torch.allclose(there["logits"], here["logits"], atol=1e-5)
    print("the provider's logits match a local run")


if __name__ == "__main__":
    main()
