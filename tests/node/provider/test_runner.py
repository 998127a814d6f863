"""The plain-subprocess runner: outcomes, caps, timeouts and kill of the process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import trio

from node.provider.runner import run_process

ENV = {"PATH": "/usr/bin:/bin"}


async def run(code: str, tmp_path: Path, timeout: float = 20, cap: int = 65536):
    return await run_process([sys.executable, "-c", code], cwd=tmp_path, env=ENV,
                             timeout_s=timeout, output_cap=cap)


@pytest.mark.parametrize(("code", "status", "exit_code"), [
    ("print('hi')", "ok", 0),
    ("import sys; sys.exit(3)", "failed", 3),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed", -9),
])
async def test_outcomes(tmp_path: Path, code: str, status: str, exit_code: int) -> None:
    r = await run(code, tmp_path)
    assert (r.status, r.exit_code) == (status, exit_code)


async def test_stdout_and_stderr_are_captured_and_capped(tmp_path: Path) -> None:
    r = await run("import sys; print('x'*5000); print('err', file=sys.stderr)", tmp_path,
                  cap=1000)
    assert r.stdout == b"x" * 1000 and r.stdout_truncated
    assert r.stderr == b"err\n" and not r.stderr_truncated


async def test_timeout_kills_the_job_and_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    code = ("import subprocess, time\n"
            "p = subprocess.Popen(['sleep', '300'])\n"
            f"open({str(marker)!r}, 'w').write(str(p.pid))\ntime.sleep(300)\n")
    started = time.monotonic()
    r = await run(code, tmp_path, timeout=2)
    assert r.status == "timeout"
    assert time.monotonic() - started < 10
    child = int(marker.read_text())
    await trio.sleep(0.2)
    assert not _alive(child), "a child of the timed-out job survived"


async def test_children_left_behind_by_a_finished_job_are_killed(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    code = ("import subprocess\n"
            "p = subprocess.Popen(['sleep', '300'])\n"
            f"open({str(marker)!r}, 'w').write(str(p.pid))\n")
    started = time.monotonic()
    r = await run(code, tmp_path)
    assert r.status == "ok"
    assert time.monotonic() - started < 5, "waited for the orphan's pipes"
    await trio.sleep(0.2)
    assert not _alive(int(marker.read_text()))


async def test_cpu_time_is_measured(tmp_path: Path) -> None:
    r = await run("x = 0\nfor i in range(3_000_000): x += i", tmp_path)
    assert r.cpu_s > 0.05
    assert r.wall_s >= r.cpu_s * 0.5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[1].split()[0] != "Z"
