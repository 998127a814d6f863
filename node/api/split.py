"""`split(model, example_input)`: run a model's first blocks here and the rest in a
provider's session, cut where the objective says (scheduler.layers).

    model = torch.nn.Sequential(conv, relu, ..., head)      # or a list of modules
    sm = split(model, torch.randn(1, 3, 64, 64), objective="latency", max_price=0.5)
    print(sm.plan.to_json())                                  # every cut, and the choice
    y = sm(x)                                                 # equal to model(x)
    sm.close()                                                # or `with split(...) as sm:`

Another model becomes blocks by listing the modules its forward calls in order, each
taking the previous one's output (one tensor): `split([model.embed, *model.layers,
model.head], x)`; a model whose forward does more than chain them needs a small
nn.Module per block that does it.

How the cut is chosen: each block is timed here (median of `passes` runs after one warm-up)
and its output measured; the best provider for the options (as @remote ranks them) is
estimated at its benchmark's speed over ours, then, once its session is open, measured:
the session times every block there (the calibration pass) and the link's RTT and
bandwidth are measured with calls of known sizes. Cut n (all here) never opens a session.
Each call re-measures the link from its own timing; when RTT or bandwidth drift more
than `drift` (a share) from what the plan used, the cut is chosen again. The session
holds the whole model, so any cut can be served without moving weights again.

Energy: this device's power comes from `power_w=` when given, else NVML for a CUDA input,
else RAPL (/sys/class/powercap), else DEFAULT_POWER_W; energy per byte sent from
`joules_per_byte=`, else DEFAULT_JOULES_PER_BYTE (a Wi-Fi radio's order of magnitude);
the plan says which (`plan.power.source`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import math
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from node.errors import RemoteError, ResultRejected, SessionLost, UserError
from scheduler.errors import SchedulerError
from scheduler.layers import (
    OBJECTIVES,
    Block,
    CutPlan,
    Objective,
    Power,
    Remote,
    choose,
    drifted,
    partition,
)

log = logging.getLogger(__name__)
DEFAULT_POWER_W = 15.0
DEFAULT_JOULES_PER_BYTE = 1e-7
ASSUMED_BYTES_PER_S = 50e6
"""The link's bandwidth before anything was measured (only the first estimate uses it)."""
PROBE_BYTES = 512 << 10
OUTPUT_DTYPES = frozenset({"float32", "float16", "bfloat16", "float64", "int64", "int32",
                           "int16", "int8", "uint8", "bool"})
MAX_OUTPUT_BYTES = 1 << 30
PART_BYTES = 768 << 10
"""Activations move in parts of this size: a session call's value is at most 1 MiB."""
LOCAL_GFLOPS_N = 256


class _Model:
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


def _blocks(model: Any) -> list[Any]:
    import torch

    listed = isinstance(model, list | tuple) and all(
        isinstance(m, torch.nn.Module) for m in model)
    if isinstance(model, torch.nn.Sequential) or listed:
        blocks = list(model)
    else:
        raise UserError("split() takes a torch.nn.Sequential or a list of modules (see "
                        "help(node.api.split) for wrapping another model into blocks)")
    if not blocks:
        raise UserError("split() needs at least one block")
    return blocks


def _nbytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return int(value.nelement() * value.element_size())
    raise UserError(f"a block returned {type(value).__name__}; split() chains blocks that "
                    "each take and return one tensor")


def profile_here(blocks: Sequence[Any], x: Any, passes: int) -> list[Block]:
    """Each block's median time here and the bytes of its output."""
    import torch

    out = []
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
                             out_bytes=_nbytes(y)))
            x = y
    return out


def local_gflops() -> float:
    """fp32 matmul GFLOP/s here, with the threads torch uses (what the blocks ran with)."""
    import torch

    a = torch.randn(LOCAL_GFLOPS_N, LOCAL_GFLOPS_N)
    a @ a
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(4):
            a @ a
        runs.append(time.perf_counter() - t)
    return 4 * 2 * LOCAL_GFLOPS_N ** 3 / statistics.median(runs) / 1e9


def power_here(x: Any, blocks: Sequence[Any], power_w: float | None,
               joules_per_byte: float | None) -> Power:
    jpb, jpb_src = ((joules_per_byte, "given") if joules_per_byte is not None
                    else (DEFAULT_JOULES_PER_BYTE, "default"))
    if power_w is not None:
        return Power(watts=power_w, joules_per_byte=jpb,
                     source=f"power_w={power_w:g} given; energy per byte {jpb_src}")
    if getattr(x, "is_cuda", False):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(x.device.index or 0)
            watts = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            return Power(watts=watts, joules_per_byte=jpb,
                         source=f"NVML (GPU {x.device.index or 0}); energy per byte {jpb_src}")
        except Exception as exc:  # no driver, no permission: the next source
            log.info("NVML gave no power figure: %s", exc)
    rapl = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
    try:
        e0, t0 = int(rapl.read_text()), time.perf_counter()
        profile_here(blocks, x, 3)
        e1, t1 = int(rapl.read_text()), time.perf_counter()
        if e1 > e0 and t1 > t0:
            return Power(watts=(e1 - e0) / 1e6 / (t1 - t0), joules_per_byte=jpb,
                         source=f"RAPL package 0 while the blocks ran; energy per byte "
                                f"{jpb_src}")
    except (OSError, ValueError):
        pass
    return Power(watts=DEFAULT_POWER_W, joules_per_byte=jpb,
                 source=f"no NVML or RAPL here: DEFAULT_POWER_W={DEFAULT_POWER_W:g} (set "
                        f"power_w=); energy per byte {jpb_src}")


@dataclasses.dataclass
class Link:
    rtt_s: float
    bytes_per_s: float


class Split:
    """The split model: calling it runs the chosen head here and the tail in the session.
    `plan` is the current CutPlan; `replans` counts the cuts chosen again after a drift."""

    def __init__(self, blocks: list[Any], example: Any, *, objective: Objective,
                 max_latency_s: float | None, passes: int, drift: float,
                 power: Power, options: dict[str, Any], probe: int = 3) -> None:
        self.blocks = blocks
        self.objective: Objective = objective
        self.max_latency_s = max_latency_s
        self.drift = drift
        self.power = power
        self.profile = profile_here(blocks, example, passes)
        self.input_bytes = _nbytes(example)
        self.replans = 0
        self.probe = probe
        self.measured_s: dict[int, float] = {}
        self._probing = False
        """Cuts timed end to end on the example when the session opened (`probe`)."""
        self.forced: int | None = None
        """A cut `force()` pinned: drift re-plans keep it."""
        self.remote: Remote | None = None
        self._session: Any = None
        self._instance: Any = None
        self._options = options
        self.remote_s: tuple[float, ...] = ()
        self.link = Link(rtt_s=0.0, bytes_per_s=ASSUMED_BYTES_PER_S)
        self._example, self._passes = example, passes
        self.estimate = self._estimate()
        self.plan = self._choose(self.estimate)
        if self.plan.chosen.peer is not None:
            self._open()

    # planning --------------------------------------------------------------------------
    def _choose(self, remote: Remote | None) -> CutPlan:
        """The plan for `remote`; a forced cut stays chosen (its numbers updated)."""
        try:
            plan = choose(self.profile, self.input_bytes, remote, self.power,
                          objective=self.objective, max_latency_s=self.max_latency_s)
        except SchedulerError as exc:
            raise UserError(str(exc)) from None
        forced = [c for c in plan.cuts if c.k == self.forced]
        if forced:
            plan = dataclasses.replace(plan, chosen=forced[0], reason=f"cut {self.forced} forced")
        return plan

    def _estimate(self) -> Remote | None:
        """The best provider for the options, at its benchmark's speed over ours."""
        from node.api.remote import remote
        from node.api.sync import portal

        rc = remote(**self._options)(_Model)

        async def best() -> Any:
            from node.api.shared import requester_for

            async with requester_for(rc.options.session()) as r:
                ranked = await r.candidates(rc.options.job)
                if not ranked:
                    return None, 0.0
                ad = ranked[0][0]
                try:  # a libp2p ping (no session, no job): the link as it is now
                    rtt_ms = await r.core.host.ping(ad.peer_id, addrs=ad.addrs, count=3)
                except RemoteError:
                    rtt_ms = ranked[0][1].rtt_ms
                return ranked[0], rtt_ms
        top, rtt_ms = portal().run(best)
        if top is None:
            return None
        ad, _ = top
        cpu = [d.gflops for d in ad.devices if d.kind == "cpu" and d.gflops > 0]
        speedup = (cpu[0] / max(local_gflops(), 1e-3)) if cpu else 1.0
        return Remote(peer=ad.peer_id, speedup=max(speedup, 1e-3),
                      rtt_s=rtt_ms / 1000.0, bytes_per_s=ASSUMED_BYTES_PER_S,
                      credits_per_s=_credits_per_s(ad))

    def _open(self) -> None:
        """Open the session, calibrate it and the link, and choose again with them."""
        estimate, example, passes = self.estimate, self._example, self._passes
        if estimate is None:
            raise UserError("no provider can run this model's blocks; see `offload offers`")
        from node.api.remote import remote

        rc = remote(**self._options)(_Model)
        self._session = rc.session(self.blocks)
        with by_value(self.blocks):
            self._instance = self._session.__enter__()
        atexit.register(self.close)
        if _nbytes(example) <= PART_BYTES:
            self.remote_s = tuple(self._instance.profile(example, passes))
        else:
            staged = put(self._instance, example)
            self.remote_s = tuple(self._instance.profile_parts(*staged, passes))
        link = self._measure_link()
        self.remote = dataclasses.replace(estimate, peer=self._instance.session.ad.peer_id,
                                          rtt_s=link.rtt_s, bytes_per_s=link.bytes_per_s,
                                          remote_s=self.remote_s)
        self.link = link
        self.plan = self._choose(self.remote)
        if self.objective == "latency" and self.probe > 0:
            self._probe()
        log.info("split: cut %d of %d (%s)", self.plan.chosen.k, len(self.blocks),
                 self.plan.reason)

    def _probe(self) -> None:
        """Latency: the `probe` best predicted cuts (and all here) are timed end to end on
        the example, and the fastest measured is chosen; per-block predictions miss what
        a whole call pays (a CPU quota's throttling, the transport's own cost)."""
        best = sorted(self.plan.cuts, key=lambda c: c.latency_s)[:self.probe]
        ks = sorted({c.k for c in best} | {len(self.blocks)})
        measured = {}
        saved, self._probing = self.forced, True
        try:
            for k in ks:
                self.forced = k
                self.plan = self._choose(self.remote)
                self(self._example)  # warm
                runs = []
                for _ in range(2):
                    t = time.perf_counter()
                    self(self._example)
                    runs.append(time.perf_counter() - t)
                measured[k] = min(runs)
        finally:
            self.forced, self._probing = saved, False
        self.measured_s = measured
        fastest = min(measured, key=lambda k: (measured[k], -k))
        plan = self._choose(self.remote)
        if saved is None and fastest != plan.chosen.k:
            chosen = next(c for c in plan.cuts if c.k == fastest)
            plan = dataclasses.replace(plan, chosen=chosen, reason=(
                f"least latency measured: cuts {ks} timed end to end, {fastest} fastest"))
        self.plan = plan

    def _measure_link(self) -> Link:
        inst = self._instance
        for _ in range(3):  # the first calls of a session pay its warm-up
            inst.ping()
        pings = []
        for _ in range(7):
            t = time.perf_counter()
            inst.ping()
            pings.append(time.perf_counter() - t)
        rtt = statistics.median(pings)
        t = time.perf_counter()
        inst.sink(bytes(PROBE_BYTES))
        up = time.perf_counter() - t
        t = time.perf_counter()
        inst.source(PROBE_BYTES)
        down = time.perf_counter() - t
        spent = max(up + down - 2 * rtt, 1e-6)
        return Link(rtt_s=rtt, bytes_per_s=2 * PROBE_BYTES / spent)

    def force(self, k: int | None) -> None:
        """Use cut `k` (0..n) whatever the objective says, until `force(None)`."""
        cuts = {c.k: c for c in self.plan.cuts}
        if k is not None and k not in cuts:
            raise UserError(f"cut {k} is not among this plan's cuts {sorted(cuts)}")
        if k is not None and cuts[k].peer is not None and self._instance is None:
            self._open()
        self.forced = k
        self.plan = self._choose(self.remote if self.remote is not None else self.estimate)

    # calls -----------------------------------------------------------------------------
    def __call__(self, x: Any) -> Any:
        import torch

        k = self.plan.chosen.k
        with torch.no_grad():
            for b in self.blocks[:k]:
                x = b(x)
            if k == len(self.blocks):
                return x
            up = _nbytes(x)
            t = time.perf_counter()
            y = run_remote(self._instance, x, k, self.profile[-1].out_bytes)
            wall = time.perf_counter() - t
        self._observe(up + _nbytes(y), wall - sum(self.remote_s[k:]))
        return y

    forward = __call__

    def _observe(self, nbytes: int, link_s: float) -> None:
        """Fold one call's link time into the estimate; choose again past the drift."""
        assert self.remote is not None
        link_s = max(link_s, 1e-6)
        rtt = self.link.rtt_s
        bw = nbytes / max(link_s - rtt, 1e-6) if link_s > 2 * rtt else self.link.bytes_per_s
        self.link = Link(rtt_s=0.8 * rtt + 0.2 * min(link_s, rtt * 4),
                         bytes_per_s=0.8 * self.link.bytes_per_s + 0.2 * bw)
        if drifted(self.remote, self.link.rtt_s, self.link.bytes_per_s, threshold=self.drift):
            self.remote = dataclasses.replace(self.remote, rtt_s=self.link.rtt_s,
                                              bytes_per_s=self.link.bytes_per_s)
            before = self.plan.chosen.k
            self.plan = self._choose(self.remote)
            self.replans += 1
            if self.objective == "latency" and self.probe > 0 and not self._probing:
                self._probe()
            log.info("split: the link drifted; cut %d -> %d", before, self.plan.chosen.k)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.__exit__(None, None, None)

    def __enter__(self) -> Split:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

    if _nbytes(x) <= PART_BYTES and out_bytes <= PART_BYTES:
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


def fewest_stages(blocks: Sequence[Any], memory_gb: float) -> int:
    """The fewest contiguous stages whose weights each fit `memory_gb` (1: the whole
    model fits one session)."""
    weights = [2 * weight_bytes(b) for b in blocks]
    for k in range(1, len(blocks) + 1):
        try:
            partition([1.0] * len(blocks), weights, k, stage_room(memory_gb))
            return k
        except SchedulerError:
            continue
    raise UserError(f"a block of {max(weights) // 2} bytes of weights does not fit one "
                    f"stage of memory_gb={memory_gb:g}; give stages more memory")


class Pipeline:
    """Contiguous blocks over `stages` providers, each stage a session holding its blocks;
    this node drives the chain (each activation comes back and goes on), so no provider
    reaches another. A stage lost mid-call is opened again on another provider with the
    same blocks and the call goes on from that stage's input, which this node holds: no
    output is lost or repeated. `bounds[i]` are stage i's blocks; `recovered` counts
    replaced stages."""

    def __init__(self, blocks: list[Any], example: Any, *, stages: int, passes: int,
                 options: dict[str, Any]) -> None:
        from node.api.remote import remote

        self.blocks = blocks
        self.profile = profile_here(blocks, example, passes)
        memory_gb = float(options.get("memory_gb", 2.0))
        room = stage_room(memory_gb)
        # a stage's weights arrive pickled, then live as tensors: twice their size at peak
        weights = [2 * weight_bytes(b) for b in blocks]
        try:
            self.bounds = partition([b.local_s for b in self.profile], weights, stages, room)
        except SchedulerError as exc:
            raise UserError(f"split(stages={stages}): {exc}; give each stage more memory "
                            "(memory_gb=) or use more stages") from None
        self._sessions: list[Any] = []
        self.instances: list[Any] = []
        atexit.register(self.close)
        try:
            for lo, hi in self.bounds:
                taken = [i.session.ad.peer_id for i in self.instances]
                where = options.get("where")
                if taken:
                    away = " and ".join(f'peer_id != "{t}"' for t in taken)
                    where = f"({where}) and {away}" if where else away
                rc = remote(**{**options, "where": where, "restart": True})(_Model)
                rc.avoid = lambda: set(self.providers)
                session = rc.session(blocks[lo:hi])
                with by_value(blocks):
                    self.instances.append(session.__enter__())
                self._sessions.append(session)
        except BaseException:
            self.close()
            raise

    @property
    def recovered(self) -> int:
        """Stages opened again on another provider after theirs was lost."""
        return sum(i.restarts for i in self.instances)

    @property
    def providers(self) -> list[str]:
        return [i.session.ad.peer_id for i in self.instances]

    def __call__(self, x: Any) -> Any:
        for i, (_, hi) in enumerate(self.bounds):
            x = self._stage(i, x, self.profile[hi - 1].out_bytes)
        return x

    forward = __call__

    def _stage(self, i: int, x: Any, out_bytes: int) -> Any:
        inst = self.instances[i]
        for attempt in range(3):
            provider = inst.session.ad.peer_id
            try:
                return run_remote(inst, x, 0, out_bytes)
            except SessionLost as lost:
                # restart=True opened the stage again elsewhere (its constructor got the
                # same blocks); its input is still here: run the stage again from it
                if inst.session.ad.peer_id == provider or attempt == 2:
                    raise
                log.warning("pipeline stage %d: %s; running it again on %s", i, lost,
                            inst.session.ad.peer_id[:16])
        raise AssertionError("unreachable")

    def close(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.__exit__(None, None, None)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _credits_per_s(ad: Any) -> float:
    from scheduler.pricing import MICRO

    return float(ad.price.per_cpu_second) / MICRO


def split(model: Any, example_input: Any, *, objective: Objective = "latency",
          max_latency: float | None = None, passes: int = 5, drift: float = 0.5,
          power_w: float | None = None, joules_per_byte: float | None = None,
          stages: int | Literal["auto"] = 1, probe: int = 3, **options: Any) -> Any:
    """Cut `model` (an nn.Sequential or a list of modules) between here and a provider
    where `objective` ("latency", "cost" within `max_latency` s, "energy") is least; the
    other keywords are @remote's (cpus, max_price, where, home, bootstrap, ...).
    stages=K > 1: a Pipeline of K providers instead, each holding contiguous blocks;
    "auto": the fewest stages whose weights fit a provider's `memory_gb` each.
    probe: with objective "latency", the number of best predicted cuts timed end to end
    once the session is open (the fastest is chosen; 0: the prediction alone)."""
    if objective not in OBJECTIVES:
        raise UserError(f"split(): objective is one of {', '.join(OBJECTIVES)}")
    if passes < 1 or not drift > 0:
        raise UserError("split(): passes is at least 1 and drift above 0")
    blocks = _blocks(model)
    power = power_here(example_input, blocks, power_w, joules_per_byte)
    options.setdefault("echo", False)
    if stages == "auto":
        stages = fewest_stages(blocks, float(options.get("memory_gb", 2.0)))
    if not isinstance(stages, int) or stages < 1:
        raise UserError('split(): stages is a number of providers, or "auto"')
    memory_gb = float(options.get("memory_gb", 2.0))
    if stages == 1 and 2 * sum(weight_bytes(b) for b in blocks) > stage_room(memory_gb):
        raise UserError(f"the model's weights do not fit one session of memory_gb="
                        f"{memory_gb:g}; spread it: stages=K or stages=\"auto\"")
    if stages > 1:
        return Pipeline(blocks, example_input, stages=stages, passes=passes, options=options)
    return Split(blocks, example_input, objective=objective, max_latency_s=max_latency,
                 passes=passes, drift=drift, power=power, options=options, probe=probe)
