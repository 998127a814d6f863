"""A tiny chat model served in a session: loaded once on a provider, tokens streamed here.

    export OFFLOAD_BOOTSTRAP=/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...   # or requester.toml
    python examples/chat.py [--train-s 6] [--tokens 80]

A small causal transformer, defined right here, learns a few seconds of generated text on
this machine; its weights go to the provider once, as the session's constructor
argument (cloudpickled, unpickled only in the session's sandbox). Then every call reuses
the loaded model: `reply` returns a whole answer, `stream` yields one character at a time
as the provider makes it. The streamed text is checked against generating here.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Iterator

import torch
from torch import nn

from node import remote

SENTENCES = ("the cat sat on the mat .", "a dog ran to the park .", "the sun is warm .",
             "we offload the work .", "the model streams its words .")
WORDS = [w for s in SENTENCES for w in s.split()]
VOCAB = sorted(set(" ".join(WORDS)))
CONTEXT = 32


def corpus(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    text = ""
    while len(text) < n_chars:
        text += " ".join(rng.choice(WORDS) for _ in range(8)) + " "
    return text[:n_chars]


class TinyLM(nn.Module):
    """Characters in, next-character logits out: embeddings, 2 causal attention blocks."""

    def __init__(self, vocab: int, dim: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(CONTEXT, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=4 * dim,
                                           dropout=0.0, batch_first=True)
        self.blocks = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(n))
        mask = nn.Transformer.generate_square_subsequent_mask(n)
        out: torch.Tensor = self.head(self.blocks(x, mask=mask, is_causal=True))
        return out


def generate(model: TinyLM, prompt: str, n: int, seed: int = 0) -> Iterator[str]:
    """Sampling at temperature 0.8 from a seeded generator, one character at a time: the
    same weights, prompt and seed give the same text anywhere."""
    rng = torch.Generator().manual_seed(seed)
    ids = [VOCAB.index(c) for c in prompt if c in VOCAB]
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-CONTEXT:]]))[0, -1]
            probs = torch.softmax(logits / 0.8, dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=rng)))
            yield VOCAB[ids[-1]]


def train(seconds: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyLM(len(VOCAB))
    data = torch.tensor([VOCAB.index(c) for c in corpus(20_000)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    end, steps = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        starts = torch.randint(0, len(data) - CONTEXT - 1, (32,))
        x = torch.stack([data[s:s + CONTEXT] for s in starts])
        y = torch.stack([data[s + 1:s + CONTEXT + 1] for s in starts])
        loss = nn.functional.cross_entropy(model(x).reshape(-1, len(VOCAB)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    print(f"trained {steps} steps here, loss {loss.item():.2f}", file=sys.stderr)
    return model.state_dict()


@remote(cpus=1, memory_gb=2.0, idle_timeout=60, max_duration=600, max_price=1.0)
class Chat:
    def __init__(self, weights: dict[str, torch.Tensor]) -> None:
        torch.set_num_threads(1)
        self.model = TinyLM(len(VOCAB))
        self.model.load_state_dict(weights)
        self.model.eval()
        self.served = 0

    def reply(self, prompt: str, n: int = 40) -> str:
        self.served += 1
        return "".join(generate(self.model, prompt, n))

    def stream(self, prompt: str, n: int = 40) -> Iterator[str]:
        self.served += 1
        yield from generate(self.model, prompt, n)

    def calls(self) -> int:
        return self.served


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-s", type=float, default=6.0)
    ap.add_argument("--tokens", type=int, default=80)
    args = ap.parse_args()
    weights = train(args.train_s)
    local = TinyLM(len(VOCAB))
    local.load_state_dict(weights)
    local.eval()
    torch.set_num_threads(1)
    prompt = "the dog "
    start = time.monotonic()
    expected = "".join(generate(local, prompt, args.tokens))
    local_tps = args.tokens / (time.monotonic() - start)

    opened = time.monotonic()
    with Chat.session(weights) as chat:  # type: ignore[attr-defined]
        print(f"session open in {time.monotonic() - opened:.2f} s", file=sys.stderr)
        print("reply:", chat.reply("the cat ", 30))
        print(prompt, end="", flush=True)
        got, first = [], 0.0
        start = time.monotonic()
        for token in chat.stream(prompt, args.tokens):
            first = first or time.monotonic() - start
            got.append(token)
            print(token, end="", flush=True)
        remote_tps = args.tokens / (time.monotonic() - start)
        print()
        served = chat.calls()
    print(f"{served} calls on one loaded model; streamed {remote_tps:.0f} tokens/s "
          f"(first after {first * 1000:.0f} ms), here {local_tps:.0f} tokens/s",
          file=sys.stderr)
    if "".join(got) != expected:
        sys.exit("the streamed text differs from generating here")
    print("the streamed text matches generating here")


if __name__ == "__main__":
    main()
