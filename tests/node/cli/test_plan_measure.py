"""`plan` sizes a script without a hint by running it here (bounded), and this node's
benchmark is kept under the home and never fails the plan."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from node import benchmark
from node.home import Home
from node.requester.plan import (
    FALLBACK_CPU_GFLOPS,
    local_capacity,
    measure_gflop,
)
from scheduler.decide import LocalCapacity

LOCAL = LocalCapacity(cpu_gflops=100.0, cpus=2, gpu_gflops=(), memory_mb=4096)


def test_a_millisecond_script_measures_as_little_work(tmp_path: Path) -> None:
    script = tmp_path / "quick.py"
    script.write_text("print(sum(range(1000)))\n")
    m = measure_gflop(script, [], [], LOCAL, cpus=2, gpus=0, timeout_s=600)
    assert m.finished and 0 < m.seconds < 5  # not the 150 s (a quarter timeout) once assumed
    assert m.gflop == pytest.approx(m.seconds * 100.0)


@pytest.mark.parametrize(("timeout_s", "cap_s"), [(1, 600.0), (600, 1.0)])
def test_a_long_script_is_stopped_at_its_timeout_or_the_cap(tmp_path: Path, timeout_s: int,
                                                            cap_s: float) -> None:
    script = tmp_path / "slow.py"
    script.write_text("import time\ntime.sleep(60)\n")
    m = measure_gflop(script, [], [], LOCAL, cpus=1, gpus=0, timeout_s=timeout_s, cap_s=cap_s)
    assert not m.finished and m.seconds == 1.0 and m.gflop == pytest.approx(50.0)


def test_the_run_gets_its_args_and_files_in_a_scratch_folder(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("42")
    script = tmp_path / "job.py"
    marker = tmp_path / "marker"
    script.write_text("import sys, time\nok = open('data.txt').read() == '42' and "
                      "sys.argv[1:] == ['--n', '3']\nopen('out.txt', 'w').write('x')\n"
                      f"open({str(marker)!r}, 'w').write(str(ok))\n")
    m = measure_gflop(script, ["--n", "3"], [tmp_path / "data.txt"], LOCAL, cpus=1, gpus=0,
                      timeout_s=30)
    assert m.finished and marker.read_text() == "True"
    assert not (tmp_path / "out.txt").exists()  # it ran elsewhere, not beside the user's file


async def test_a_benchmark_that_cannot_run_falls_back_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        local = await local_capacity(tmp_path, python=Path("/bin/false"))
    cpus = os.cpu_count() or 1
    assert local.cpu_gflops == FALLBACK_CPU_GFLOPS * cpus and local.cpus == cpus
    assert "cannot measure this node's speed now" in caplog.text
    assert not Home(tmp_path).local_benchmark.exists()


async def test_a_stored_benchmark_is_used_and_kept_when_a_new_one_fails(
        tmp_path: Path) -> None:
    old = benchmark.BenchmarkReport(
        devices=(benchmark.DeviceBenchmark(device="cpu", fp32_tflops=0.25, fp16_tflops=None,
                                           bf16_tflops=None, mem_gbps=1.0),),
        measured_at=0.0, runtime_digest="local", seconds=1.0)  # stale: from 1970
    benchmark.save(old, Home(tmp_path).local_benchmark)
    local = await local_capacity(tmp_path, python=Path("/bin/false"))
    assert local.cpu_gflops == 250.0
    assert benchmark.load(Home(tmp_path).local_benchmark) == old


async def test_a_fresh_stored_benchmark_is_not_run_again(tmp_path: Path) -> None:
    import time

    fresh = benchmark.BenchmarkReport(
        devices=(benchmark.DeviceBenchmark(device="cpu", fp32_tflops=0.5, fp16_tflops=None,
                                           bf16_tflops=None, mem_gbps=1.0),),
        measured_at=time.time(), runtime_digest="local", seconds=1.0)
    benchmark.save(fresh, Home(tmp_path).local_benchmark)
    # /bin/false would fail: it is never started, the cached one answers
    assert (await local_capacity(tmp_path, python=Path("/bin/false"))).cpu_gflops == 500.0
