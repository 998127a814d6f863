"""The session object that holds a model's blocks, and what moves tensors to it.

`Model` is what a split's or a pipeline stage's session builds on the provider (only
there is it unpickled); activations beyond a session call's 1 MiB travel in parts
(`put`, `run_remote`), and an output described by the provider is checked before it is
believed. node.api.split and node.api.pipeline use it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from node.errors import ResultRejected, UserError
from scheduler.layers import Block

OUTPUT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "int64", "int32",
                           "int16", "int8", "uint8", "bool"})
MAX_OUTPUT_BYTES = 1 << 30
PART_BYTES = 768 << 10
"""Activations move in parts of this size: a session call's value is at most 1 MiB."""


class Model:
    """The session's object on the provider: the whole model, run from any block on."""

    def __init__(self, blocks: list[Any]) -> None:
        import torch

        self.blocks = [b.eval() for b in blocks]
        torch.set_grad_enabled(False)

    def run(self, x: Any, start: int) -> Any:
        for b in self.blocks[start:]:
            x = b(x)
        return x

    def put(self, i: int, data: bytes) -> int:
        """Part `i` of the next input (parts are joined by `run_parts`)."""
        parts = self.__dict__.setdefault("_parts", {})
        parts[i] = data
        return len(data)

    def run_parts(self, start: int, n: int, dtype: str, shape: list[int], part: int) -> Any:
        """Run from block `start` on the input put in `n` parts; a small output comes back
        as it is, a big one as its dtype, shape and number of parts (`take` fetches them)."""
        import torch

        y = self.run(self._joined(n, dtype, shape), start)
        raw = y.contiguous().view(torch.uint8).numpy().tobytes() if y.nelement() else b""
        if len(raw) <= part:
            return y
        self._out = [raw[i:i + part] for i in range(0, len(raw), part)]
        return [str(y.dtype).removeprefix("torch."), list(y.shape), len(self._out)]

    def profile_parts(self, n: int, dtype: str, shape: list[int], passes: int) -> list[float]:
        return self.profile(self._joined(n, dtype, shape), passes)

    def _joined(self, n: int, dtype: str, shape: list[int]) -> Any:
        import torch

        parts = self.__dict__.pop("_parts", {})
        data = bytearray(b"".join(parts[i] for i in range(n)))
        return torch.frombuffer(data, dtype=getattr(torch, dtype)).reshape(shape)

    def take(self, i: int) -> bytes:
        return self._out[i]

    def profile(self, x: Any, passes: int) -> list[float]:
        import time as t

        out = []
        for b in self.blocks:
            b(x)
            runs = []
            for _ in range(passes):
                s = t.perf_counter()
                y = b(x)
                runs.append(t.perf_counter() - s)
            runs.sort()
            out.append(runs[len(runs) // 2])
            x = y
        return out

    def ping(self) -> int:
        return 0

    def sink(self, data: bytes) -> int:
        return len(data)

    def source(self, n: int) -> bytes:
        return bytes(min(n, 1 << 24))


@contextlib.contextmanager
def by_value(blocks: Sequence[Any]) -> Iterator[None]:
    """While open, the modules that define the blocks' classes (your own, not installed
    ones) pickle by value: the provider has only the runtime's packages."""
    import cloudpickle

    from node.api.shared import installed

    names = {type(m).__module__ for b in blocks for m in b.modules()}
    mods = [sys.modules[n] for n in sorted(names) if n in sys.modules and n != "__main__"
            and not installed(sys.modules[n])]
    for m in mods:
        cloudpickle.register_pickle_by_value(m)
    try:
        yield
    finally:
        for m in mods:
            cloudpickle.unregister_pickle_by_value(m)


def nbytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.nelement() * value.element_size())
    raise UserError(f"a block returned {type(value).__name__}; split() chains blocks that "
                    "each take and return one tensor")


def profile_here(blocks: Sequence[Any], x: Any, passes: int) -> list[Block]:
    """Each block's median time here and the bytes of its output, the times scaled so
    they sum to a whole pass timed here: one block alone can fit a CPU quota's slice
    that a whole pass overruns (a quarter-core device ran blocks 4x faster than passes)."""
    import torch

    out, first = [], x
    with torch.no_grad():
        for i, b in enumerate(blocks):
            b.eval()
            y = b(x)
            runs = []
            for _ in range(passes):
                t = time.perf_counter()
                y = b(x)
                runs.append(time.perf_counter() - t)
            out.append(Block(name=f"{i}:{type(b).__name__}", local_s=statistics.median(runs),
                             out_bytes=nbytes(y)))
            x = y
        whole = []
        for _ in range(passes):
            x, t = first, time.perf_counter()
            for b in blocks:
                x = b(x)
            whole.append(time.perf_counter() - t)
    parts = sum(b.local_s for b in out)
    scale = statistics.median(whole) / parts if parts > 0 else 1.0
    return [Block(b.name, b.local_s * scale, b.out_bytes) for b in out]


def put(inst: Any, x: Any) -> tuple[int, str, list[int]]:
    """`x` sent in parts to the session `inst`: their count, its dtype and shape."""
    import torch

    raw = x.contiguous().view(torch.uint8).numpy().tobytes() if x.nelement() else b""
    parts = [raw[i:i + PART_BYTES] for i in range(0, len(raw), PART_BYTES)]
    for i, part in enumerate(parts):
        inst.put(i, part)
    return len(parts), str(x.dtype).removeprefix("torch."), list(x.shape)


def run_remote(inst: Any, x: Any, start: int, out_bytes: int) -> Any:
    """Blocks `start`.. of the session `inst` on `x`; activations in parts (a call carries
    at most 1 MiB), `out_bytes` the output's size as profiled here."""
    import torch

    if nbytes(x) <= PART_BYTES and out_bytes <= PART_BYTES:
        return inst.run(x, start)
    y = inst.run_parts(start, *put(inst, x), PART_BYTES)
    if isinstance(y, torch.Tensor):
        return y
    dtype, shape, n = _output_head(y)
    data = bytearray()
    for i in range(n):
        data += inst.take(i)
        if len(data) > MAX_OUTPUT_BYTES:
            break
    size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
    if len(data) != size:
        raise ResultRejected(f"the provider's output has {len(data)} bytes, not the "
                             f"{size} its shape says")
    return torch.frombuffer(data, dtype=dtype).reshape(shape) if size else \
        torch.empty(shape, dtype=dtype)


def _output_head(value: Any) -> tuple[Any, list[int], int]:
    """A big output's dtype, shape and part count, as the provider sent them (checked)."""
    import torch

    ok = isinstance(value, list | tuple) and len(value) == 3
    dtype, shape, n = value if ok else (None, None, None)
    if not (ok and dtype in OUTPUT_DTYPES and isinstance(shape, list | tuple)
            and len(shape) <= 16 and all(isinstance(d, int) and 0 <= d < 2**31 for d in shape)
            and isinstance(n, int) and 0 < n <= MAX_OUTPUT_BYTES // PART_BYTES + 1):
        raise ResultRejected("the provider described a split's output that cannot be one")
    return getattr(torch, dtype), list(shape), n


STAGE_OVERHEAD_BYTES = 600_000_000
"""What a stage's sandbox needs besides its weights (the interpreter and torch)."""


def weight_bytes(block: Any) -> int:
    return sum(t.nelement() * t.element_size()
               for t in [*block.parameters(), *block.buffers()])


def stage_room(memory_gb: float) -> int:
    """Bytes of (doubled) weights one stage's sandbox of `memory_gb` can hold."""
    return max(int(memory_gb * 1e9) - STAGE_OVERHEAD_BYTES, 1)
