"""A small transformer's blocks spread over the providers of a network, a token at a time:
each step sends the sequence through the chain of sessions (embedding and first blocks
on one provider, the next blocks on another, ...), printing each token as it comes,
then checks the text against generating here with the same weights.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # 3 providers or more
    python examples/pipeline_generate.py [--stages 3] [--tokens 24]

The model is untrained (random weights, so the text is noise) but deterministic: what
matters is that the pipelined tokens are exactly the ones made here.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from node import split

VOCAB, DIM, HEADS, LAYERS, CONTEXT = 96, 64, 4, 6, 64


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Embedding(CONTEXT, DIM)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        at = torch.arange(ids.shape[1], device=ids.device)
        out: torch.Tensor = self.tok(ids) + self.pos(at)
        return out


class Block(nn.Module):
    """One causal transformer layer: a tensor in, a tensor out (chainable)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(DIM, HEADS, 4 * DIM, dropout=0.0,
                                                batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        out: torch.Tensor = self.layer(x, src_mask=mask, is_causal=True)
        return out


def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Embed(), *(Block() for _ in range(LAYERS)), nn.LayerNorm(DIM),
                         nn.Linear(DIM, VOCAB)).eval()


def text(ids: list[int]) -> str:
    return "".join(chr(32 + i) for i in ids)


def generate(run: object, prompt: list[int], tokens: int, show: bool) -> list[int]:
    ids = list(prompt)
    for _ in range(tokens):
        x = torch.tensor([ids[-CONTEXT:]])
        with torch.no_grad():
            logits = run(x)  # type: ignore[operator]
        ids.append(int(logits[0, -1].argmax()))
        if show:
            print(text(ids[-1:]), end="", flush=True)
    return ids[len(prompt):]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = model()
    prompt = [ord(c) - 32 for c in "offload: "]
    with split(net, torch.tensor([prompt]), stages=args.stages, max_price=1.0) as pipe:
        print(f"stages {pipe.bounds} on {[p[:12] for p in pipe.providers]}")
        print(text(prompt), end="", flush=True)
        t = time.perf_counter()
        remote = generate(pipe, prompt, args.tokens, show=True)
        wall = time.perf_counter() - t
    print(f"\n{args.tokens} tokens in {wall:.2f} s ({args.tokens / wall:.1f} tokens/s)")
    here = generate(net, prompt, args.tokens, show=False)
    if remote != here:
        print("the pipeline's tokens differ from generating here", file=sys.stderr)
        return 1
    print("the same tokens as generating here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
