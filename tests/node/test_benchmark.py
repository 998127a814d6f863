"""Device benchmarks: a real CPU run with the job runtime, the stored report, staleness, and the
trio task that keeps the report current (virtual time, a fake run)."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node import benchmark
from node.benchmark import (
    BenchmarkFailed,
    BenchmarkReport,
    DeviceBenchmark,
    benchmark_forever,
    is_stale,
    load,
    run_benchmark,
    save,
)
from node.errors import NodeError

RUNTIME_PYTHON = Path("/opt/offload/runtimes/python3/bin/python3")
CPU = DeviceBenchmark(device="cpu", fp32_tflops=0.2, fp16_tflops=None, bf16_tflops=None,
                      mem_gbps=18.0)
GPU = DeviceBenchmark(device="cuda:0", fp32_tflops=51.0, fp16_tflops=700.5, bf16_tflops=None,
                      mem_gbps=3000.0)


def report(measured_at: float = 1000.0, digest: str = "d1") -> BenchmarkReport:
    return BenchmarkReport(devices=(CPU, GPU), measured_at=measured_at, runtime_digest=digest,
                           seconds=2.5)


@pytest.fixture(scope="module")
def cpu_report() -> BenchmarkReport:
    if not RUNTIME_PYTHON.exists():
        pytest.skip(f"the job runtime {RUNTIME_PYTHON} is not installed "
                    "(`offload runtime install` as root)")
    return run_benchmark(RUNTIME_PYTHON, runtime_digest="real", gpus=False, clock=lambda: 42.0)


def test_real_cpu_benchmark(cpu_report: BenchmarkReport) -> None:
    [cpu] = cpu_report.devices
    assert cpu.device == "cpu"
    assert cpu.fp32_tflops > 0 and cpu.mem_gbps > 0
    assert cpu.fp16_tflops is None and cpu.bf16_tflops is None
    assert 0 < cpu_report.seconds < 20
    assert (cpu_report.measured_at, cpu_report.runtime_digest) == (42.0, "real")


def test_save_and_load_round_trip(tmp_path: Path, cpu_report: BenchmarkReport) -> None:
    path = tmp_path / "state" / "benchmark.json"
    for r in (report(), cpu_report):
        save(r, path)
        assert load(path) == r
    assert [p.name for p in path.parent.iterdir()] == ["benchmark.json"], "temp file left"


def test_load_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert load(tmp_path / "nothing.json") is None


def _doc(**changes: Any) -> str:
    doc: dict[str, Any] = {"v": 1, "measured_at": 1.0, "runtime_digest": "d", "seconds": 1.0,
                           "devices": [{"device": "cpu", "fp32_tflops": 0.1,
                                        "fp16_tflops": None, "bf16_tflops": None,
                                        "mem_gbps": 10.0}]}
    for key, value in changes.items():
        if key in doc:
            doc[key] = value
        else:
            doc["devices"][0][key] = value
    return json.dumps(doc)


@pytest.mark.parametrize("text", [
    '{"v": 1, "measured_at": 1.0, "runtime_d',  # cut off mid-write by an older version
    "", "\x00\x01", "[]", "null", '{"v": 1}',
    _doc(v=2), _doc(measured_at="yesterday"), _doc(seconds=float("nan")), _doc(devices={}),
    _doc(devices=[1]), _doc(device="tpu:0"), _doc(fp32_tflops=-1.0), _doc(mem_gbps="fast"),
    _doc(fp16_tflops=True), _doc(runtime_digest=7),
])
def test_load_of_a_corrupt_file_is_none(tmp_path: Path, text: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "benchmark.json"
    path.write_text(text)
    with caplog.at_level(logging.INFO, logger="node.benchmark"):
        assert load(path) is None
    assert "it will be re-measured" in caplog.text


def test_the_corrupt_table_starts_from_a_valid_doc(tmp_path: Path) -> None:
    path = tmp_path / "benchmark.json"
    path.write_text(_doc())
    assert load(path) == BenchmarkReport(devices=(DeviceBenchmark(
        device="cpu", fp32_tflops=0.1, fp16_tflops=None, bf16_tflops=None, mem_gbps=10.0),),
        measured_at=1.0, runtime_digest="d", seconds=1.0)


@pytest.mark.parametrize(("stored", "now", "interval_s", "digest", "stale"), [
    (None, 1000.0, 3600.0, "d1", True),
    (None, 1000.0, 0.0, "d1", True),  # interval 0 still measures once
    (report(1000.0), 1000.0, 3600.0, "d1", False),
    (report(1000.0), 4599.0, 3600.0, "d1", False),
    (report(1000.0), 4600.0, 3600.0, "d1", True),
    (report(1000.0), 1000.0, 3600.0, "d2", True),  # another runtime
    (report(1000.0), 1e12, 0.0, "d1", False),  # interval 0: never stale once measured
    (report(1000.0), 1e12, 0.0, "d2", True),
    (report(9000.0), 1000.0, 3600.0, "d1", True),  # from the future: the clock was set back
])
def test_is_stale(stored: BenchmarkReport | None, now: float, interval_s: float, digest: str,
                  stale: bool) -> None:
    assert is_stale(stored, now=now, interval_s=interval_s, runtime_digest=digest) is stale


def _interpreter(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "python3"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_benchmark_failed_is_a_node_error() -> None:
    assert issubclass(BenchmarkFailed, NodeError)


def test_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkFailed, match=r"^cannot run the benchmark interpreter "
                       r".*/nope/python3: .*No such file.*; install the job runtime "
                       r"\(`offload runtime install`\) or fix its path$"):
        run_benchmark(tmp_path / "nope" / "python3", runtime_digest="d")


def test_failing_interpreter() -> None:
    with pytest.raises(BenchmarkFailed, match=r"^the benchmark with /bin/false exited with 1: "
                       r"\(no output on stderr\)$"):
        run_benchmark(Path("/bin/false"), runtime_digest="d")


def test_a_failing_script_reports_the_tail_of_stderr(tmp_path: Path) -> None:
    python = _interpreter(tmp_path, "echo 'Traceback ...' >&2\n"
                          "echo 'ModuleNotFoundError: No module named torch' >&2\nexit 3")
    with pytest.raises(BenchmarkFailed, match=r"exited with 3: Traceback \.\.\.\n"
                       r"ModuleNotFoundError: No module named torch$"):
        run_benchmark(python, runtime_digest="d")


def test_stderr_tail_is_capped(tmp_path: Path) -> None:
    python = _interpreter(tmp_path, "head -c 100000 /dev/zero | tr '\\0' x >&2; echo END >&2; "
                          "exit 1")
    with pytest.raises(BenchmarkFailed) as info:
        run_benchmark(python, runtime_digest="d")
    assert str(info.value).endswith("xxxEND") and len(str(info.value)) < 2200


@pytest.mark.parametrize("stdout", ["", "hello", '{"devices": [{"device": "cpu"}]}',
                                    '{"devices": [{"device": "gpu", "fp32_tflops": 1, '
                                    '"fp16_tflops": null, "bf16_tflops": null, '
                                    '"mem_gbps": 1}]}'])
def test_a_script_without_a_result(tmp_path: Path, stdout: str) -> None:
    python = _interpreter(tmp_path, f"echo '{stdout}'")
    with pytest.raises(BenchmarkFailed, match=r"printed no result"):
        run_benchmark(python, runtime_digest="d")


def test_a_script_past_twice_its_budget_is_killed(tmp_path: Path) -> None:
    python = _interpreter(tmp_path, "echo warming up >&2; exec sleep 30")
    with pytest.raises(BenchmarkFailed, match=r"did not finish within 0.4 s; the host may be "
                       r"overloaded: warming up$"):
        run_benchmark(python, runtime_digest="d", budget_s=0.2)


class FakeRun:
    """Stands in for run_benchmark in its worker thread; counts calls."""

    def __init__(self, fail: Callable[[int], bool] = lambda call: False) -> None:
        self.calls = 0
        self.fail = fail

    def __call__(self, python: Path, *, runtime_digest: str, budget_s: float,
                 gpus: bool) -> BenchmarkReport:
        assert (python, budget_s, gpus) == (RUNTIME_PYTHON, 20.0, True)
        self.calls += 1
        if self.fail(self.calls):
            raise BenchmarkFailed(f"run {self.calls} failed")
        # a wall-clock stamp, which benchmark_forever replaces with its own clock's
        return BenchmarkReport(devices=(CPU,), measured_at=1.8e9, runtime_digest=runtime_digest,
                               seconds=float(self.calls))


@pytest.fixture
def virtual_clock(mock_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Virtual time that jumps to the next deadline once trio has idled 0.1 s of real time.

    Not autojump_clock (threshold 0): it would also jump while a run waits on its worker
    thread, straight to the test's fail_after deadline.
    """
    mock_clock.autojump_threshold = 0.1
    return mock_clock


async def _forever(path: Path, run: FakeRun, monkeypatch: pytest.MonkeyPatch, *,
                   interval_s: float, stop_after: int, digest: str = "d1",
                   ) -> list[tuple[float, BenchmarkReport]]:
    """benchmark_forever on trio's clock until `stop_after` reports (or a virtual day)."""
    monkeypatch.setattr(benchmark, "run_benchmark", run)
    seen: list[tuple[float, BenchmarkReport]] = []
    with trio.fail_after(86400):
        async with trio.open_nursery() as nursery:
            def on_report(r: BenchmarkReport) -> None:
                seen.append((trio.current_time(), r))
                if len(seen) >= stop_after:
                    nursery.cancel_scope.cancel()

            await nursery.start(lambda task_status: benchmark_forever(
                RUNTIME_PYTHON, path, runtime_digest=digest, interval_s=interval_s,
                clock=trio.current_time, on_report=on_report, task_status=task_status))
            assert seen, "started before the first report"
    return seen


async def test_a_fresh_stored_report_is_used_without_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        virtual_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "benchmark.json"
    stored = report(measured_at=-100.0)  # trio's virtual clock starts at 0
    save(stored, path)
    run = FakeRun()
    seen = await _forever(path, run, monkeypatch, interval_s=3600, stop_after=1)
    assert seen == [(0.0, stored)] and run.calls == 0


async def test_a_stale_or_foreign_report_is_re_measured_and_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        virtual_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "benchmark.json"
    for stored in (report(measured_at=-3600.0), report(measured_at=0.0, digest="other")):
        save(stored, path)
        run = FakeRun()
        [(_, fresh)] = await _forever(path, run, monkeypatch, interval_s=3600, stop_after=1)
        assert run.calls == 1 and fresh.runtime_digest == "d1" and fresh.devices == (CPU,)
        assert load(path) == fresh


async def test_re_measures_every_interval(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        virtual_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "benchmark.json"
    save(report(measured_at=-100.0), path)
    run = FakeRun()
    seen = await _forever(path, run, monkeypatch, interval_s=3600, stop_after=3)
    assert [t for t, _ in seen] == [0.0, 3500.0, 7100.0]
    assert [r.measured_at for _, r in seen] == [-100.0, 3500.0, 7100.0]
    assert [r.seconds for _, r in seen] == [2.5, 1.0, 2.0] and run.calls == 2
    assert load(path) == seen[-1][1]


async def test_interval_zero_measures_once_and_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "benchmark.json"
    run = FakeRun()
    seen = await _forever(path, run, monkeypatch, interval_s=0, stop_after=99)
    assert len(seen) == 1 and run.calls == 1
    seen = await _forever(path, run, monkeypatch, interval_s=0, stop_after=99)
    assert len(seen) == 1 and run.calls == 1, "interval 0: the stored report is never stale"


async def test_a_failed_first_run_without_a_usable_report_fails_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "benchmark.json"
    save(report(measured_at=0.0, digest="other"), path)
    with pytest.RaisesGroup(pytest.RaisesExc(BenchmarkFailed, match=r"^run 1 failed$"),
                            allow_unwrapped=True, flatten_subgroups=True):
        await _forever(path, FakeRun(fail=lambda call: True), monkeypatch, interval_s=3600,
                       stop_after=1)


async def test_a_failed_run_keeps_the_previous_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        virtual_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "benchmark.json"
    stored = report(measured_at=-5000.0)  # stale, same runtime: better than nothing
    save(stored, path)
    run = FakeRun(fail=lambda call: call in (1, 2))
    with caplog.at_level(logging.WARNING, logger="node.benchmark"):
        seen = await _forever(path, run, monkeypatch, interval_s=3600, stop_after=2)
    assert seen[0] == (0.0, stored)
    assert seen[1][0] == 7200.0 and seen[1][1].seconds == 3.0 and run.calls == 3
    assert "run 1 failed; advertising the stored benchmark, 5000 s old" in caplog.text
    assert "run 2 failed; keeping the previous benchmark for another 3600 s" in caplog.text


def test_summary() -> None:
    assert benchmark.summary(report()) == ("cpu 0.20 TFLOPS fp32, 18.0 GB/s; cuda:0 51.00 "
                                           "TFLOPS fp32, 700.5 fp16, 3000.0 GB/s")
