"""Host telemetry: NVML through a fake (units, failures, one log line), CPU and memory for real."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from node.provider import telemetry
from node.provider.telemetry import GpuSample, Telemetry


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """The slice of the pynvml API Telemetry uses; GPU i is described by gpus[i]."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict[str, Any]], *, init_error: Exception | None = None,
                 broken: frozenset[int] = frozenset()) -> None:
        self.gpus, self.init_error, self.broken = gpus, init_error, broken
        self.inits = self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def _gpu(self, handle: int) -> dict[str, Any]:
        if handle in self.broken:
            raise FakeNVMLError("GPU is lost")
        return self.gpus[handle]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._gpu(handle)["util_pct"], memory=7)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        used = self._gpu(handle)["used_bytes"]
        return SimpleNamespace(total=80 << 30, used=used, free=(80 << 30) - used)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return int(self._gpu(handle)["temp_c"])

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return int(self._gpu(handle)["power_mw"])


TWO_GPUS = [
    {"util_pct": 50, "used_bytes": 4096 << 20, "temp_c": 61, "power_mw": 250_500},
    {"util_pct": 0, "used_bytes": 3 << 20, "temp_c": 35, "power_mw": 61_000},
]


def test_gpu_samples_are_converted_to_fractions_mib_and_watts() -> None:
    t = Telemetry(nvml=FakeNvml(TWO_GPUS))
    assert t.gpus_available
    s = t.sample()
    assert s.gpus == (
        GpuSample(index=0, utilization=0.5, memory_used_mb=4096, temperature_c=61.0,
                  power_w=250.5),
        GpuSample(index=1, utilization=0.0, memory_used_mb=3, temperature_c=35.0, power_w=61.0),
    )
    assert 0.0 <= s.cpu_load <= 1.0 and s.memory_available_mb > 0


def test_no_driver_means_no_gpus_and_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    nvml = FakeNvml(TWO_GPUS, init_error=FakeNVMLError("NVML Shared Library Not Found"))
    with caplog.at_level(logging.DEBUG, logger="node.provider.telemetry"):
        t = Telemetry(nvml=nvml)
        s = t.sample()
        t.sample()
        t.close()
    assert not t.gpus_available and s.gpus == ()
    assert nvml.shutdowns == 0, "nvmlShutdown without a successful nvmlInit"
    records = [r for r in caplog.records if r.name == "node.provider.telemetry"]
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.INFO, None)]
    assert records[0].getMessage() == ("no NVIDIA driver (NVML Shared Library Not Found): "
                                       "telemetry covers CPU capacity only")


def test_a_gpu_whose_query_fails_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    t = Telemetry(nvml=FakeNvml(TWO_GPUS, broken=frozenset({0})))
    with caplog.at_level(logging.DEBUG, logger="node.provider.telemetry"):
        s = t.sample()
    assert [g.index for g in s.gpus] == [1]
    assert t.gpus_available, "a GPU failing one query does not make the host GPU-less"
    [record] = [r for r in caplog.records if r.name == "node.provider.telemetry"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage() == "GPU 0: NVML query failed (GPU is lost); left out of this sample"


def test_close_shuts_nvml_down_once_and_samples_stay_cpu_only() -> None:
    nvml = FakeNvml(TWO_GPUS)
    with Telemetry(nvml=nvml) as t:
        assert nvml.inits == 1
    t.close()
    assert nvml.shutdowns == 1
    assert not t.gpus_available and t.sample().gpus == ()


def test_utilization_is_clipped_to_one() -> None:
    s = Telemetry(nvml=FakeNvml([{**TWO_GPUS[0], "util_pct": 101}])).sample()
    assert s.gpus[0].utilization == 1.0


@pytest.mark.parametrize(("text", "mb"), [
    ("MemTotal: 16384000 kB\nMemFree: 1024 kB\nMemAvailable: 2097152 kB\n", 2048),
    ("MemTotal: 16384000 kB\nMemFree: 1048576 kB\n", 1024),  # no MemAvailable: old kernel
    ("garbage\n", 0),
])
def test_memory_available_reads_meminfo(tmp_path: Path, text: str, mb: int) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(text)
    assert telemetry.memory_available_mb(meminfo) == mb
    assert Telemetry(nvml=FakeNvml([]), meminfo=meminfo).sample().memory_available_mb == mb


def test_memory_available_is_zero_without_meminfo(tmp_path: Path) -> None:
    assert telemetry.memory_available_mb(tmp_path / "missing") == 0


@pytest.mark.parametrize(("loadavg", "cpus", "load"), [
    (1.0, 4, 0.25), (10.0, 2, 1.0), (0.0, 8, 0.0), (3.0, None, 1.0),
])
def test_cpu_load_is_the_load_average_per_cpu_clipped(
        monkeypatch: pytest.MonkeyPatch, loadavg: float, cpus: int | None, load: float) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (loadavg, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert telemetry.cpu_load() == load


def test_cpu_load_without_a_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert telemetry.cpu_load() == 0.0


def test_this_host_for_real(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="node.provider.telemetry"), Telemetry() as t:
        started = time.perf_counter()
        samples = [t.sample() for _ in range(20)]
        per_sample = (time.perf_counter() - started) / 20
    for s in samples:
        assert 0.0 <= s.cpu_load <= 1.0
        assert s.memory_available_mb > 0
    assert per_sample < 0.005, f"sample() took {per_sample * 1000:.1f} ms"
    if t.gpus_available:  # a GPU host
        from node.provider.sandbox.gpu import discover

        assert len(samples[-1].gpus) == len(discover())
    else:
        assert samples[-1].gpus == ()
        infos = [r for r in caplog.records if r.name == "node.provider.telemetry"]
        assert len(infos) == 1 and "CPU capacity only" in infos[0].getMessage()
        assert infos[0].exc_info is None
