"""Live host load for ads and admission: CPU load, free memory, and per-GPU use through NVML.

`Telemetry()` opens NVML once and keeps the device handles, so `sample()` is a handful of
cheap driver queries plus two small reads from /proc. Without pynvml or a driver it samples
the CPU side only and says so in one INFO line. Imports neither trio nor torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MEMINFO = Path("/proc/meminfo")
NVML_TEMPERATURE_GPU = 0  # pynvml.NVML_TEMPERATURE_GPU, for a fake that lacks the constant


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GpuSample:
    index: int
    utilization: float  # 0..1, the share of the last sample period a kernel ran
    memory_used_mb: int
    temperature_c: float
    power_w: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HostSample:
    cpu_load: float  # 0..1: the 1-minute load average per CPU, clipped
    memory_available_mb: int
    gpus: tuple[GpuSample, ...]


class Telemetry:
    """One NVML session (or none) and the host's counters; call `close()` when done."""

    def __init__(self, *, nvml: Any | None = None, meminfo: Path = MEMINFO) -> None:
        self._meminfo = meminfo
        self._nvml: Any | None = None
        self._handles: list[tuple[int, Any]] = []
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                log.info("pynvml is not installed: telemetry covers CPU capacity only")
                return
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except Exception as exc:
            log.info("no NVIDIA driver (%s): telemetry covers CPU capacity only", exc)
            return
        try:
            self._handles = [(i, nvml.nvmlDeviceGetHandleByIndex(i))
                             for i in range(int(nvml.nvmlDeviceGetCount()))]
        except Exception as exc:
            log.info("NVML lists no usable GPU (%s): telemetry covers CPU capacity only", exc)
            _shutdown(nvml)
            return
        self._nvml = nvml

    @property
    def gpus_available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> HostSample:
        gpus = []
        for index, handle in self._handles:
            gpu = self._sample_gpu(index, handle)
            if gpu is not None:
                gpus.append(gpu)
        return HostSample(cpu_load=cpu_load(), memory_available_mb=memory_available_mb(
            self._meminfo), gpus=tuple(gpus))

    def _sample_gpu(self, index: int, handle: Any) -> GpuSample | None:
        nvml = self._nvml
        assert nvml is not None
        try:
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", NVML_TEMPERATURE_GPU)
            temperature = nvml.nvmlDeviceGetTemperature(handle, sensor)
            milliwatts = nvml.nvmlDeviceGetPowerUsage(handle)
            return GpuSample(index=index, utilization=_clip(float(rates.gpu) / 100.0),
                             memory_used_mb=int(memory.used) >> 20,
                             temperature_c=float(temperature), power_w=float(milliwatts) / 1000.0)
        except Exception as exc:
            log.debug("GPU %d: NVML query failed (%s); left out of this sample", index, exc)
            return None

    def close(self) -> None:
        nvml, self._nvml, self._handles = self._nvml, None, []
        if nvml is not None:
            _shutdown(nvml)

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def cpu_load() -> float:
    """The 1-minute load average per CPU, clipped to 0..1 (0 where the OS has no load average)."""
    try:
        one_minute = os.getloadavg()[0]
    except OSError:
        return 0.0
    return _clip(one_minute / (os.cpu_count() or 1))


def memory_available_mb(meminfo: Path = MEMINFO) -> int:
    """MemAvailable from /proc/meminfo in MiB (MemFree on old kernels; 0 if unreadable)."""
    try:
        text = meminfo.read_text()
    except OSError:
        return 0
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0])  # kB
    kib = fields.get("MemAvailable", fields.get("MemFree", 0))
    return kib >> 10


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:
        log.debug("nvmlShutdown failed: %s", exc)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()[:128]
    except OSError:
        pass
    return platform.processor()[:128] or "cpu"


def memory_mb() -> int:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024))
