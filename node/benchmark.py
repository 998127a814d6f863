"""Measured throughput of the devices jobs get, taken with the job runtime's own interpreter.

The daemon never imports torch: `run_benchmark` starts the runtime's Python on `SCRIPT`, which
prints one JSON line. Per device it measures dense matmul throughput (square matrices sized so
one product takes about 50 ms, after a warm-up; the median of several timed reps) and memory
bandwidth (a copy of a large tensor: bytes read plus bytes written over time).

- CPU: fp32 only, with torch's default thread count (`torch.get_num_threads()`). fp16 and bf16
  are reported as None: most CPUs emulate them, so the number would be slow to take and would
  only tell a requester not to send half-precision work to a CPU.
- CUDA: fp32 (IEEE, TF32 off), fp16 and bf16 (None where the card lacks native bf16 or the
  product fails), timed with `torch.cuda.synchronize`. Devices are numbered in PCI bus order,
  like NVML (`node.provider.sandbox.gpu`), so `cuda:N` is NVML's GPU N.

The report is stored as JSON next to the node's state and re-taken when it is older than the
configured interval or was taken with another runtime (`is_stale`); `benchmark_forever` is the
trio task that keeps it current.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from node.errors import BenchmarkFailed as BenchmarkFailed
from node.home import atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STDERR_TAIL = 2000
_DEVICE = re.compile(r"cpu|cuda:\d+")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceBenchmark:
    device: str  # "cpu" or "cuda:N"
    fp32_tflops: float
    fp16_tflops: float | None
    bf16_tflops: float | None
    mem_gbps: float

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be 'cpu' or 'cuda:N', not {self.device!r}")
        for name in ("fp32_tflops", "fp16_tflops", "bf16_tflops", "mem_gbps"):
            value = getattr(self, name)
            if value is None and name in ("fp16_tflops", "bf16_tflops"):
                continue
            if not _finite_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BenchmarkReport:
    devices: tuple[DeviceBenchmark, ...]
    measured_at: float  # unix seconds (the caller's clock) when the run finished
    runtime_digest: str  # RuntimeInfo.digest of the interpreter that ran it
    seconds: float  # how long the run took, interpreter start-up included

    def __post_init__(self) -> None:
        if not self.devices or not all(isinstance(d, DeviceBenchmark) for d in self.devices):
            raise ValueError("devices must be one or more DeviceBenchmark values")
        if not isinstance(self.runtime_digest, str):
            raise ValueError("runtime_digest must be a string")
        for name in ("measured_at", "seconds"):
            if not _finite_number(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")

    def device(self, name: str) -> DeviceBenchmark | None:
        return next((d for d in self.devices if d.device == name), None)


def run_benchmark(python: Path, *, runtime_digest: str, budget_s: float = 20.0,
                  gpus: bool = True, clock: Callable[[], float] = time.time) -> BenchmarkReport:
    """Run `SCRIPT` with `python` (blocking; a thread's work in a trio program).

    The script spreads its measurements over about `budget_s` seconds and is killed after
    twice that. Raises BenchmarkFailed, with the tail of the script's stderr, if it cannot
    start, fails, runs out of time or prints no result.
    """
    args = json.dumps({"budget_s": budget_s, "gpus": gpus})
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    started = time.monotonic()
    try:
        done = subprocess.run([str(python), "-I", "-c", SCRIPT, args], capture_output=True,
                              text=True, timeout=budget_s * 2, env=env, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkFailed(
            f"the benchmark with {python} did not finish within {budget_s * 2:g} s; the host "
            f"may be overloaded: {_tail(exc.stderr)}") from None
    except OSError as exc:
        raise BenchmarkFailed(f"cannot run the benchmark interpreter {python}: {exc}; install the "
                              "job runtime (`offload runtime install`) or fix its path") from None
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchmarkFailed(f"the benchmark with {python} exited with {done.returncode}: "
                              f"{_tail(done.stderr)}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    try:
        doc = json.loads(lines[-1])
        devices = _devices(doc["devices"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise BenchmarkFailed(
            f"the benchmark with {python} printed no result ({exc}); "
            f"stdout: {_tail(done.stdout)}; stderr: {_tail(done.stderr)}") from None
    return BenchmarkReport(devices=devices, measured_at=clock(), runtime_digest=runtime_digest,
                           seconds=seconds)


def load(path: Path) -> BenchmarkReport | None:
    """The stored report, or None if the file is missing, unreadable or not a valid report."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("ignoring the unreadable benchmark file %s (%s); it will be re-measured",
                 path, exc)
        return None
    try:
        if doc["v"] != FORMAT_VERSION:
            raise ValueError(f"format version {doc['v']!r}, not {FORMAT_VERSION}")
        return BenchmarkReport(devices=_devices(doc["devices"]),
                               measured_at=doc["measured_at"],
                               runtime_digest=doc["runtime_digest"], seconds=doc["seconds"])
    except (KeyError, TypeError, ValueError) as exc:
        log.info("ignoring the invalid benchmark file %s (%s); it will be re-measured", path, exc)
        return None


def save(report: BenchmarkReport, path: Path) -> None:
    """Write the report as JSON atomically: a reader sees the old file or the new one."""
    doc = {"v": FORMAT_VERSION, "measured_at": report.measured_at,
           "runtime_digest": report.runtime_digest, "seconds": report.seconds,
           "devices": [dataclasses.asdict(d) for d in report.devices]}
    atomic_write_json(path, doc, indent=1, newline=True, fsync=True, parents=True)


def is_stale(report: BenchmarkReport | None, *, now: float, interval_s: float,
             runtime_digest: str) -> bool:
    """True if there is no report, it was taken with another runtime, or it is `interval_s`
    old (or from the future: the clock was set back). interval_s <= 0: never re-measured."""
    if report is None or report.runtime_digest != runtime_digest:
        return True
    if interval_s <= 0:
        return False
    return not 0 <= now - report.measured_at < interval_s


async def benchmark_forever(python: Path, path: Path, *, runtime_digest: str, interval_s: float,
                            clock: Callable[[], float],
                            on_report: Callable[[BenchmarkReport], None],
                            budget_s: float = 20.0, gpus: bool = True,
                            task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Keep a current report: use the stored one while fresh, else measure (in a thread) and
    store it. Calls `on_report` with every report it settles on and signals `started` once the
    first is known; then re-measures every `interval_s` (never if interval_s <= 0).

    A failed first run falls back to an older stored report of the same runtime, or raises
    BenchmarkFailed (out of `nursery.start`). A failed later run is logged and the previous
    report kept until the next interval.
    """

    async def measure() -> BenchmarkReport:
        def run() -> BenchmarkReport:
            return run_benchmark(python, runtime_digest=runtime_digest, budget_s=budget_s,
                                 gpus=gpus)

        # abandon_on_cancel: a shutting-down daemon does not wait for the run; the script
        # stops by itself within its budget. (mypy 2.4 rejects keywords after an empty
        # `*args: Unpack[Ts]`; trio accepts them.)
        fresh: BenchmarkReport = await trio.to_thread.run_sync(
            run, abandon_on_cancel=True)  # type: ignore[call-arg]
        # stamped here, not in the thread: `clock` may be trio's, which threads cannot call
        fresh = dataclasses.replace(fresh, measured_at=clock())
        log.info("benchmark: %s in %.1f s", summary(fresh), fresh.seconds)
        try:
            save(fresh, path)
        except OSError as exc:
            log.warning("cannot store the benchmark report in %s (%s); it will be re-measured "
                        "at the next start", path, exc)
        return fresh

    report = load(path)
    if is_stale(report, now=clock(), interval_s=interval_s, runtime_digest=runtime_digest):
        try:
            report = await measure()
        except BenchmarkFailed as exc:
            if report is None or report.runtime_digest != runtime_digest:
                raise
            log.warning("%s; advertising the stored benchmark, %.0f s old", exc,
                        clock() - report.measured_at)
        next_at = clock() + interval_s
    else:
        assert report is not None
        next_at = report.measured_at + interval_s
    on_report(report)
    task_status.started()
    if interval_s <= 0:
        return
    while True:
        await trio.sleep(max(next_at - clock(), 0.0))
        try:
            report = await measure()
        except BenchmarkFailed as exc:
            log.warning("%s; keeping the previous benchmark for another %g s", exc, interval_s)
        else:
            on_report(report)
        next_at = clock() + interval_s


def summary(report: BenchmarkReport) -> str:
    """One line for logs: `cpu 0.21 TFLOPS fp32, 9.8 GB/s; cuda:0 ...`."""
    parts = []
    for d in report.devices:
        half = "".join(f", {v:.1f} {n}" for n, v in (("fp16", d.fp16_tflops),
                                                     ("bf16", d.bf16_tflops)) if v is not None)
        parts.append(f"{d.device} {d.fp32_tflops:.2f} TFLOPS fp32{half}, {d.mem_gbps:.1f} GB/s")
    return "; ".join(parts)


def _devices(doc: Any) -> tuple[DeviceBenchmark, ...]:
    if not isinstance(doc, list):
        raise TypeError(f"devices must be a list, not {type(doc).__name__}")
    return tuple(_device(d) for d in doc)


def _device(doc: Any) -> DeviceBenchmark:
    if not isinstance(doc, dict):
        raise TypeError(f"a device entry must be an object, not {type(doc).__name__}")
    return DeviceBenchmark(device=doc["device"], fp32_tflops=doc["fp32_tflops"],
                           fp16_tflops=doc["fp16_tflops"], bf16_tflops=doc["bf16_tflops"],
                           mem_gbps=doc["mem_gbps"])


def _finite_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _tail(text: str | bytes | None) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = (text or "").strip()
    if not text:
        return "(no output on stderr)"
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


# Runs in the job runtime's interpreter: argv[1] is {"budget_s": float, "gpus": bool}; prints
# {"devices": [{"device", "fp32_tflops", "fp16_tflops", "bf16_tflops", "mem_gbps"}, ...]}.
SCRIPT = r'''
import json, math, sys, time
import torch

TARGET_S = 0.05          # one timed matmul, once sized
MIN_OP_S = 0.02          # a timed rep repeats its op until it takes at least this long
MIN_REPS, MAX_REPS = 3, 10
MAX_SHARE_S = 2.0        # per measurement, whatever the budget


def timed(fn, sync, share):
    """Median seconds per call of fn: a warm-up, then MIN_REPS..MAX_REPS timed reps."""
    fn(); sync()
    t0 = time.perf_counter(); fn(); sync(); single = time.perf_counter() - t0
    inner = max(1, min(1000, math.ceil(MIN_OP_S / max(single, 1e-9))))
    times, start = [], time.perf_counter()
    while len(times) < MAX_REPS and (len(times) < MIN_REPS or time.perf_counter() - start < share):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / inner)
    times.sort()
    return times[len(times) // 2]


def matmul_tflops(device, dtype, sync, share, max_bytes):
    cap = max(256, int(math.sqrt(max_bytes / (3 * torch.tensor([], dtype=dtype).element_size()))))
    cap -= cap % 256
    n, deadline = 256, time.perf_counter() + share / 2
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        fn = lambda: torch.mm(a, b, out=out)
        fn(); sync()
        t0 = time.perf_counter(); fn(); sync(); t = time.perf_counter() - t0
        if t >= MIN_OP_S or n >= cap or time.perf_counter() > deadline:
            break
        grow = min(8.0, (TARGET_S / max(t, 1e-9)) ** (1 / 3))
        n = min(cap, max(n + 256, int(n * grow) // 256 * 256))
        del a, b, out
    return 2 * n ** 3 / timed(fn, sync, share) / 1e12


def copy_gbps(device, sync, share, nbytes):
    src = torch.ones(nbytes // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), sync, share) / 1e9


def half(fn, name, device):
    try:
        return fn()
    except Exception as exc:
        print(f"{device} {name}: {exc}", file=sys.stderr)
        return None


def main():
    args = json.loads(sys.argv[1])
    torch.set_float32_matmul_precision("highest")
    cuda = bool(args["gpus"]) and torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    share = min(MAX_SHARE_S, 0.7 * float(args["budget_s"]) / (2 + 4 * count))
    nothing = lambda: None
    devices = [{"device": "cpu",
                "fp32_tflops": matmul_tflops("cpu", torch.float32, nothing, share, 256 << 20),
                "fp16_tflops": None, "bf16_tflops": None,
                "mem_gbps": copy_gbps("cpu", nothing, share, 256 << 20)}]
    for i in range(count):
        dev = torch.device("cuda", i)
        torch.cuda.set_device(dev)
        sync = lambda: torch.cuda.synchronize(dev)
        free, _ = torch.cuda.mem_get_info(dev)
        room = min(free // 4, 8 << 30)
        try:
            bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:
            bf16 = torch.cuda.is_bf16_supported()
        devices.append({
            "device": f"cuda:{i}",
            "fp32_tflops": matmul_tflops(dev, torch.float32, sync, share, room),
            "fp16_tflops": half(lambda: matmul_tflops(dev, torch.float16, sync, share, room),
                                "fp16", dev),
            "bf16_tflops": half(lambda: matmul_tflops(dev, torch.bfloat16, sync, share, room),
                                "bf16", dev) if bf16 else None,
            "mem_gbps": copy_gbps(dev, sync, share, min(room // 2, 4 << 30)),
        })
        torch.cuda.empty_cache()
    print(json.dumps({"devices": devices}))


main()
'''
