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
bandwidth are measured with calls of known sizes. With objective "latency" (and probe > 0)
the session is opened even when the estimate keeps all here, since its bandwidth is only
a guess, unless no remote cut could come within HOPELESS x all-here even with no transfer
time at all (head + tail + the pinged RTT); then the best predicted cuts, all here and all
there are timed end to end (`probe`). Cut n opens no session when no provider is found,
when the estimate picks it under "cost" or "energy" or with probe=0, or when remote is
hopeless; a provider whose ad has no benchmark is measured anyway (its speed is unknown),
except for the energy objective.
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
import dataclasses
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from node.api.blocks import (
    PART_BYTES,
    Model,
    by_value,
    nbytes,
    profile_here,
    put,
    run_remote,
    stage_room,
    weight_bytes,
)
from node.api.pipeline import Pipeline, fewest_stages
from node.errors import RemoteError, UserError
from scheduler.errors import SchedulerError
from scheduler.layers import (
    OBJECTIVES,
    CutPlan,
    Objective,
    Power,
    Remote,
    choose,
    drifted,
    hopeless,
)

log = logging.getLogger(__name__)
DEFAULT_POWER_W = 15.0
DEFAULT_JOULES_PER_BYTE = 1e-7
ASSUMED_BYTES_PER_S = 50e6
"""The link's bandwidth before anything was measured (only the first estimate uses it)."""
PROBE_BYTES = 512 << 10
HOPELESS = 2.0
"""A remote cut whose floor (no transfer time) is above this x all-here is not measured."""
PROBE_ROUNDS = 2
PROBE_CALLS = 3
"""The probe's rounds, and its timed calls of each cut a round (`Split._probe`)."""
PROBE_MARGIN = 0.05
"""The probe leaves the predicted cut only for one measured faster by more than this share."""
LOCAL_GFLOPS_N = 256


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


def local_gflops() -> float:
    """fp32 matmul GFLOP/s here, with the threads torch uses (what the blocks ran with)."""
    import torch

    a = torch.randn(LOCAL_GFLOPS_N, LOCAL_GFLOPS_N)
    a @ a
    n, t = 0, time.perf_counter()
    while (spent := time.perf_counter() - t) < 0.2:  # long enough for a CPU quota to show
        a @ a
        n += 1
    return n * 2 * LOCAL_GFLOPS_N ** 3 / spent / 1e9


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
        self.input_bytes = nbytes(example)
        self.replans = 0
        self.speed_unknown = False
        """The provider's ad had no benchmark: its speed comes only from calibration."""
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
        # a provider that published no benchmark has no speed to estimate: measure it,
        # unless the objective does not depend on it (energy is spent here)
        blind = self.estimate is not None and self.speed_unknown and objective != "energy"
        # latency: the estimate's bandwidth is a guess, so measure unless remote is hopeless
        worth = (objective == "latency" and probe > 0 and self.estimate is not None
                 and not hopeless(self.plan, HOPELESS))
        if self.plan.chosen.peer is not None or blind or worth:
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

        rc = remote(**self._options)(Model)

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
        self.speed_unknown = not cpu
        return Remote(peer=ad.peer_id, speedup=max(speedup, 1e-3),
                      rtt_s=rtt_ms / 1000.0, bytes_per_s=ASSUMED_BYTES_PER_S,
                      credits_per_s=_credits_per_s(ad))

    def _open(self) -> None:
        """Open the session, calibrate it and the link, and choose again with them."""
        estimate, example, passes = self.estimate, self._example, self._passes
        if estimate is None:
            raise UserError("no provider can run this model's blocks; see `offload offers`")
        from node.api.remote import remote

        rc = remote(**self._options)(Model)
        self._session = rc.session(self.blocks)
        with by_value(self.blocks):
            self._instance = self._session.__enter__()
        atexit.register(self.close)
        if nbytes(example) <= PART_BYTES:
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
        """Latency: the `probe` best predicted cuts, all here and all there are timed end to
        end on the example, and the fastest measured is chosen; per-block predictions miss
        what a whole call pays (a CPU quota's throttling, the transport's own cost). Each
        of PROBE_ROUNDS rounds takes every cut in turn: one call to warm it, then
        PROBE_CALLS timed back to back (as a model's calls come: a CPU quota throttles a
        run of calls more than one after a wait). A cut's figure is its median; the
        predicted cut stays unless another's is PROBE_MARGIN faster."""
        best = sorted(self.plan.cuts, key=lambda c: c.latency_s)[:self.probe]
        ks = sorted({c.k for c in best} | {0, len(self.blocks)})  # and both ends
        runs: dict[int, list[float]] = {k: [] for k in ks}
        saved, self._probing = self.forced, True
        try:
            for _ in range(PROBE_ROUNDS):  # rounds: a burst of load hits every cut alike
                for k in ks:
                    self.forced = k
                    self.plan = self._choose(self.remote)
                    self(self._example)  # warm: the switch from the previous cut
                    for _ in range(PROBE_CALLS):
                        t = time.perf_counter()
                        self(self._example)
                        runs[k].append(time.perf_counter() - t)
        finally:
            self.forced, self._probing = saved, False
        measured = {k: statistics.median(v) for k, v in runs.items()}
        self.measured_s = measured
        plan = self._choose(self.remote)
        fastest = min(measured, key=lambda k: (measured[k], -k))
        predicted = measured.get(plan.chosen.k, float("inf"))
        if saved is None and measured[fastest] < (1 - PROBE_MARGIN) * predicted:
            chosen = next(c for c in plan.cuts if c.k == fastest)
            plan = dataclasses.replace(plan, chosen=chosen, reason=(
                f"least latency measured: cuts {ks} timed end to end (median of "
                f"{PROBE_ROUNDS * PROBE_CALLS}), {fastest} fastest"))
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
        rtt = min(pings)  # the link's; a slower ping is this node's own load
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
            up = nbytes(x)
            t = time.perf_counter()
            y = run_remote(self._instance, x, k, self.profile[-1].out_bytes)
            wall = time.perf_counter() - t
        self._observe(up + nbytes(y), wall - sum(self.remote_s[k:]))
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
    (with all here and all there) in a session opened for it even when the estimate
    keeps all here, unless remote is hopeless (HOPELESS); the fastest is chosen. 0: the
    prediction alone, and no session when it keeps all here."""
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
