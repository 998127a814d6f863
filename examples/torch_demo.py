"""A small torch job: train a two-layer MLP on generated data, save it, print a checksum.

Run it locally with `python examples/torch_demo.py --steps 20`, or offload it with
`offload submit examples/torch_demo.py --steps 20 --bootstrap ...`.
"""

import argparse
import hashlib
import json
import os

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    x = torch.randn(512, 16)
    true_w = torch.randn(16, 1)
    y = x @ true_w + 0.01 * torch.randn(512, 1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(args.steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d} loss {loss.item():.5f}")

    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    rounded = repr([round(v, 5) for v in weights.tolist()])
    checksum = hashlib.sha256(rounded.encode()).hexdigest()[:16]
    os.makedirs("out", exist_ok=True)
    torch.save(model.state_dict(), "out/model.pt")
    with open("out/metrics.json", "w") as f:
        json.dump({"steps": args.steps, "final_loss": loss.item(), "checksum": checksum}, f)
    print(f"torch {torch.__version__} checksum {checksum}")


if __name__ == "__main__":
    main()
