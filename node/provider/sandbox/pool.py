"""Warm workers: sandboxes started ahead of their job, with the runtime's heavy imports done.

A worker is a tier-A SandboxJob running BOOT. It serves exactly one job or session (read as
one JSON line on stdin; a session's host keeps stdin for its frames) and is then destroyed
with its sandbox; nothing is shared across jobs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from node.provider.sandbox.runner import JobLimits, Sandbox, SandboxJob, SandboxResult, job_env

log = logging.getLogger(__name__)

PRELOAD = ("torch", "numpy")
BOOT = """\
import json, os, sys
_err = os.dup(2)
_null = os.open(os.devnull, os.O_WRONLY)
os.dup2(_null, 2)
for _m in sys.argv[1].split(","):
    try:
        __import__(_m)
    except Exception:
        pass
os.dup2(_err, 2)
os.close(_err); os.close(_null)
sys.stdout.write("ready\\n"); sys.stdout.flush()
_line = sys.stdin.readline()
if not _line:
    raise SystemExit(0)
_job = json.loads(_line)
if not _job.get("interactive"):
    sys.stdin.close()
    sys.stdin = open(os.devnull)
os.environ.clear()
os.environ.update(_job["env"])
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(int(_job["threads"]))
sys.argv = [_job["entrypoint"], *_job["args"]]
sys.path[0] = _job["job_dir"]
del _line, _m, _err, _null
import runpy, traceback
_code = 0
try:
    runpy.run_path(_job["entrypoint"], run_name="__main__")
except SystemExit as _exit:
    if _exit.code is None:
        _code = 0
    elif isinstance(_exit.code, int):
        _code = _exit.code
    else:
        print(_exit.code, file=sys.stderr)
        _code = 1
except BaseException:
    traceback.print_exc()
    _code = 1
# the sandbox is destroyed next: skip the interpreter's teardown of torch (~0.4 s of CPU)
try:
    sys.stdout.flush()
    sys.stderr.flush()
finally:
    os._exit(_code & 0xFF)
"""
WORKER_LIMITS = JobLimits(wall_s=24 * 3600, memory_mb=2048, cpus=1.0)


class Worker:
    def __init__(self, job: SandboxJob, release: trio.Event) -> None:
        self.job = job
        self._release = release
        self.cpu_at_ready = 0.0

    async def run(self, entrypoint: str, args: Sequence[str], limits: JobLimits,
                  env: dict[str, str]) -> SandboxResult:
        """Hand the job to the worker; limits tighten to the job's before it starts."""
        job = self.job
        assert job.cgroup is not None and job._process is not None
        job.apply_limits(limits)
        self.cpu_at_ready = job.cgroup.usage().cpu_s
        line = json.dumps({"entrypoint": entrypoint, "args": list(args),
                           "env": job.view_env(env), "job_dir": job.inputs_view,
                           "threads": max(1, int(limits.cpus))}) + "\n"
        stdin = job._process.stdin
        assert stdin is not None
        await stdin.send_all(line.encode())
        await stdin.aclose()
        return await job.wait(timeout_s=limits.wall_s, warm=True,
                              cpu_baseline_s=self.cpu_at_ready)

    async def start_interactive(self, entrypoint: str, limits: JobLimits,
                                env: dict[str, str]) -> trio.Process:
        """Hand a session host to the worker; its stdin and stdout stay the caller's."""
        job = self.job
        assert job.cgroup is not None and job._process is not None
        job.apply_limits(limits)
        self.cpu_at_ready = job.cgroup.usage().cpu_s
        line = json.dumps({"entrypoint": entrypoint, "args": [], "interactive": True,
                           "env": job.view_env(env), "job_dir": job.inputs_view,
                           "threads": max(1, int(limits.cpus))}) + "\n"
        stdin = job._process.stdin
        assert stdin is not None
        await stdin.send_all(line.encode())
        return job._process

    def done(self) -> None:
        self._release.set()


class WarmPool:
    """Keeps `size` ready workers; `take()` never waits for one to boot."""

    def __init__(self, sandbox: Sandbox, *, size: int = 1,
                 preload: Sequence[str] = PRELOAD) -> None:
        self.sandbox = sandbox
        self.size = size
        self.preload = ",".join(preload)
        self._ready: list[Worker] = []
        self._wanted = trio.Event()
        self.started = 0
        self.may_refill: Callable[[], bool] = lambda: True
        """Refilling imports torch (seconds of CPU): the daemon holds it while jobs run."""

    def take(self) -> Worker | None:
        worker = self._ready.pop(0) if self._ready else None
        self._wanted.set()
        return worker

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool filled until cancelled; each worker lives in its own task."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                while len(self._ready) + self._booting < self.size and \
                        self.sandbox.users.free > 1:
                    while not self.may_refill():
                        await trio.sleep(0.1)
                    self._booting += 1
                    nursery.start_soon(self._worker_lifetime)
                self._wanted = trio.Event()
                await self._wanted.wait()

    _booting = 0

    async def _worker_lifetime(self) -> None:
        self.started += 1
        name = f"job-warm-{os.urandom(6).hex()}"
        release = trio.Event()
        booting = True
        try:
            async with self.sandbox.job(name, WORKER_LIMITS) as job:
                job.make_out_dir()
                argv = [str(self.sandbox.runtime.interpreter), "-s", "-u", "-c", BOOT,
                        self.preload]
                proc = await job.start(argv, job_env(WORKER_LIMITS),
                                       stdin=subprocess.PIPE)
                assert proc.stdout is not None
                first = b""
                with trio.move_on_after(120):
                    while len(first) < 6:
                        chunk = await proc.stdout.receive_some(6 - len(first))
                        if not chunk:
                            break
                        first += chunk
                if first != b"ready\n":
                    log.warning("warm worker failed to boot: %r", first)
                    return
                booting = False
                self._booting -= 1
                self._ready.append(Worker(job, release))
                await release.wait()
        finally:
            if booting:
                self._booting -= 1
            self._wanted.set()


@asynccontextmanager
async def warm_pool(sandbox: Sandbox, size: int) -> AsyncIterator[WarmPool]:
    pool = WarmPool(sandbox, size=size)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()
