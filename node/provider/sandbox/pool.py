"""Warm workers: sandboxes started ahead of their job, with the runtime's heavy imports done.

A worker is a SandboxJob (tier A or B) running BOOT, a small supervisor: each job line on its
stdin is forked into a child with the job's environment and two FIFOs of its own for
stdout and stderr; the supervisor reports the child's exit, and once the host has killed
what the job left in the cgroup, empties /tmp and /dev/shm. A session instead takes the
interpreter itself (its stdin and stdout). Only one requester's jobs ever share a worker
(WarmPool.finish parks it for them); a session's worker is destroyed after it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio

from node.provider.runner import collect_streams
from node.provider.sandbox.errors import LaunchFailed, SandboxError
from node.provider.sandbox.runner import JobLimits, Sandbox, SandboxJob, SandboxResult, job_env
from protocol.messages import MAX_OUTPUT_TEXT

log = logging.getLogger(__name__)

PRELOAD = ("torch", "numpy", "cloudpickle")
BOOT = """\
import json, os, shutil, sys
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
del _m, _err, _null


def _run(job):
    os.environ.clear()
    os.environ.update(job["env"])
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(job["threads"]))
    sys.argv = [job["entrypoint"], *job["args"]]
    sys.path[0] = job["job_dir"]
    import runpy, traceback
    code = 0
    try:
        runpy.run_path(job["entrypoint"], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None:
            code = 0
        elif isinstance(exit_.code, int):
            code = exit_.code
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    # the process ends here: skip the interpreter's teardown of torch (~0.4 s of CPU)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)


def _clean(dirs):
    # the job's files outside /work (the host has killed what it left running)
    for d in dirs:
        try:
            for e in os.scandir(d):
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    try:
                        os.unlink(e.path)
                    except OSError:
                        pass
            if os.listdir(d):
                return False
        except OSError:
            return False
    return True


sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    _line = sys.stdin.readline()
    if not _line:
        os._exit(0)
    _job = json.loads(_line)
    if _job.get("interactive"):
        _run(_job)
    _out = os.open(_job["stdout"], os.O_WRONLY)
    _errf = os.open(_job["stderr"], os.O_WRONLY)
    _pid = os.fork()
    if _pid == 0:
        os.dup2(_out, 1); os.dup2(_errf, 2)
        _in = os.open(os.devnull, os.O_RDONLY)
        os.dup2(_in, 0)
        for _fd in (_out, _errf, _in):
            os.close(_fd)
        sys.stdin = open(os.devnull)
        _run(_job)
    os.close(_out); os.close(_errf)
    sys.stdout.write("started\\n"); sys.stdout.flush()
    _status = os.waitpid(_pid, 0)[1]
    _code = os.waitstatus_to_exitcode(_status)
    _code = 128 - _code if _code < 0 else _code
    sys.stdout.write(json.dumps({"exit": _code}) + "\\n"); sys.stdout.flush()
    if sys.stdin.readline() != "clean\\n":
        os._exit(0)
    sys.stdout.write(json.dumps({"clean": _clean(_job["clean"])}) + "\\n"); sys.stdout.flush()
"""
WORKER_LIMITS = JobLimits(wall_s=24 * 3600, memory_mb=2048, cpus=1.0)


class Worker:
    """A warm sandbox that forks each job from its preloaded interpreter, and may serve
    further jobs of the same requester (`WarmPool.finish`)."""

    def __init__(self, job: SandboxJob, release: trio.Event) -> None:
        self.job = job
        self._release = release
        self.cpu_at_ready = 0.0
        self.jobs = 0
        self.reusable = True
        """False once anything makes the sandbox unfit for another job: a limit hit, a
        timeout or stop, a worker that did not report a clean end, a session."""
        self._control = b""
        self.parked_at = 0.0
        self.expiring = False
        """Whether the pool's task that destroys it once idle too long is running."""
        self.keep: set[int] = set()
        """The worker's own processes (bwrap's, the interpreter), spared between jobs."""

    @property
    def alive(self) -> bool:
        proc = self.job._process
        return proc is not None and proc.returncode is None and not self._release.is_set()

    async def run(self, entrypoint: str, args: Sequence[str], limits: JobLimits,
                  env: dict[str, str]) -> SandboxResult:
        """Fork the job in the worker under the job's limits; its output comes through two
        FIFOs of its own, and the worker reports its exit code once nothing of it is left."""
        job = self.job
        assert job.cgroup is not None and job._process is not None
        proc = job._process
        assert proc.stdin is not None and proc.stdout is not None
        self.reusable = False  # until the worker reports a clean end (not if cancelled)
        job.apply_limits(limits)
        if self.jobs:
            job.cgroup.reset_peak()
        self.cpu_at_ready = job.cgroup.usage().cpu_s
        self.jobs += 1
        names = [f".offload-{s}-{self.jobs}" for s in ("stdout", "stderr")]
        fds: list[int] = []
        ended: dict[str, Any] = {}
        timed_out = False
        started = time.monotonic()
        try:
            for name in names:
                path = job.work_dir / name
                os.mkfifo(path, 0o600)
                os.chown(path, job.user.uid, job.user.gid)
                fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            line = json.dumps({"entrypoint": entrypoint, "args": list(args),
                               "env": job.view_env(env), "job_dir": job.inputs_view,
                               "threads": max(1, int(limits.cpus)),
                               "stdout": f"{job.work_view}/{names[0]}",
                               "stderr": f"{job.work_view}/{names[1]}",
                               "clean": job.private_dirs()}) + "\n"
            await proc.stdin.send_all(line.encode())
            reply = b""
            with trio.move_on_after(30):
                reply = await self._line()
            if reply != b"started":
                raise LaunchFailed("the warm worker did not start the job")
            streams = [trio.lowlevel.FdStream(fd) for fd in fds]
            fds = []

            async def exited() -> None:
                code = _field(await self._line(), "exit", int)
                if code is None or not 0 <= code <= 255:
                    return
                ended["exit"] = code
                assert job.cgroup is not None
                if not await trio.to_thread.run_sync(job.cgroup.kill_except, self.keep):
                    return
                await proc.stdin.send_all(b"clean\n")  # type: ignore[union-attr]
                ended["clean"] = _field(await self._line(), "clean", bool) is True

            out, err, timed_out = await collect_streams(
                streams[0], streams[1], exited, timeout_s=limits.wall_s,
                output_cap=MAX_OUTPUT_TEXT)
            for stream in streams:
                await stream.aclose()
        finally:
            for fd in fds:
                os.close(fd)
            for name in names:
                with suppress(FileNotFoundError):
                    os.unlink(job.work_dir / name)
        wall = time.monotonic() - started
        clean = "exit" in ended and ended.get("clean") is True
        if not clean:
            await trio.to_thread.run_sync(job._kill_quietly)
        code = int(ended.get("exit", 128 + 9))
        result = job.result(out, err, timed_out=timed_out, wall=wall, code=code, warm=True,
                            cpu_baseline_s=self.cpu_at_ready)
        self.reusable = clean and not result.limits_hit and result.process.status not in (
            "timeout", "killed")
        return result

    async def _line(self) -> bytes:
        """One control line from the worker (b"" once it is gone); at most 1 KiB."""
        stdout = self.job._process.stdout if self.job._process else None
        assert stdout is not None
        while b"\n" not in self._control:
            if len(self._control) > 1024:
                return b""
            chunk = await stdout.receive_some(1024)
            if not chunk:
                return b""
            self._control += chunk
        line, _, self._control = self._control.partition(b"\n")
        return line

    async def start_interactive(self, entrypoint: str, limits: JobLimits,
                                env: dict[str, str]) -> trio.Process:
        """Hand a session host to the worker; its stdin and stdout stay the caller's."""
        job = self.job
        assert job.cgroup is not None and job._process is not None
        self.reusable = False
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


def _field(line: bytes, key: str, kind: type[Any]) -> Any:
    """One field of a control line from the worker, read as hostile (the job ran beside
    the worker); None when the line is not `{key: <kind>}`."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or set(doc) != {key}:
        return None
    value = doc[key]
    return value if type(value) is kind else None


class WarmPool:
    """Keeps `size` workers, ready or parked; `take()` never waits for one to boot.

    A worker that served a requester's job cleanly is parked for that requester (its
    sandbox emptied: files, processes) and serves its next job without a new sandbox; it
    is destroyed after `idle_s` unused, after `max_jobs`, or when another requester needs
    a worker and none is ready. At most `size` are parked, and never the last free job
    user. A job that finds no worker boots one without preloads (`boot`), parked after it
    like any other. Requesters never share a sandbox."""

    def __init__(self, sandbox: Sandbox, *, size: int = 1,
                 preload: Sequence[str] = PRELOAD, idle_s: float = 30.0,
                 max_jobs: int = 1000) -> None:
        self.sandbox = sandbox
        self.size = size
        self.preload = ",".join(preload)
        self.idle_s = idle_s
        self.max_jobs = max_jobs
        self._ready: list[Worker] = []
        self._parked: dict[str, list[Worker]] = {}
        self._wanted = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.started = 0
        self.reused = 0
        self.may_refill: Callable[[], bool] = lambda: True
        """Refilling imports torch (seconds of CPU): the daemon holds it while jobs run."""

    def take(self, owner: str | None = None) -> Worker | None:
        """A worker parked for `owner`, else a ready one; when neither, the longest parked
        worker of another requester is destroyed so that the pool refills."""
        worker = None
        mine = self._parked.get(owner) if owner is not None else None
        while mine and worker is None:
            candidate = mine.pop()
            if candidate.alive:
                worker = candidate
                self.reused += 1
            else:
                candidate.done()
        if worker is None and self._ready:
            worker = self._ready.pop(0)
        if worker is None:
            others = [w for ws in self._parked.values() for w in ws]
            if others:
                oldest = min(others, key=lambda w: w.parked_at)
                self._unpark(oldest)
                oldest.done()
        self._parked = {k: v for k, v in self._parked.items() if v}
        self._wanted.set()
        return worker

    async def finish(self, worker: Worker, owner: str | None) -> None:
        """After a job: park the worker for `owner` if it is fit for another job, else
        destroy it. Shielded: the caller may be cancelled."""
        with trio.CancelScope(shield=True):
            if (owner is None or not worker.reusable or not worker.alive
                    or worker.jobs >= self.max_jobs or self._nursery is None
                    or self.parked >= self.size or self.sandbox.users.free == 0):
                worker.done()
                return
            try:
                await trio.to_thread.run_sync(worker.job.reset)
            except OSError as exc:
                log.warning("could not empty a warm worker's sandbox: %s", exc)
                worker.done()
                return
            worker.parked_at = trio.current_time()
            self._parked.setdefault(owner, []).append(worker)
            if not worker.expiring:
                worker.expiring = True
                self._nursery.start_soon(self._expire, worker)

    async def _expire(self, worker: Worker) -> None:
        """Destroy `worker` once it has been parked `idle_s` unused: one task for its whole
        life, however many times it is parked."""
        while worker.alive:
            due = worker.parked_at + self.idle_s
            if trio.current_time() < due:
                await trio.sleep_until(due)
            elif self._unpark(worker):
                worker.done()
            else:  # serving a job: look again once a whole idle time has passed
                await trio.sleep(self.idle_s)

    def _unpark(self, worker: Worker) -> bool:
        for ws in self._parked.values():
            if worker in ws:
                ws.remove(worker)
                return True
        return False

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def parked(self) -> int:
        return sum(len(ws) for ws in self._parked.values())

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool filled until cancelled; each worker lives in its own task."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                while len(self._ready) + self.parked + self._booting < self.size and \
                        self.sandbox.users.free > 1:
                    while not self.may_refill():
                        await trio.sleep(0.1)
                    self._booting += 1
                    nursery.start_soon(self._worker_lifetime)
                self._wanted = trio.Event()
                await self._wanted.wait()

    _booting = 0

    async def boot(self) -> Worker | None:
        """A worker without preloads, booted now for a job that found none ready (tens of
        ms); after its job it may be parked like any other. None if it failed to boot."""
        if self._nursery is None:
            return None
        with trio.move_on_after(5):  # an evicted worker frees its job user as it ends
            while self.sandbox.users.free == 0:
                await trio.sleep(0.01)
        if self.sandbox.users.free == 0:
            return None
        handed: list[Worker] = []
        done = trio.Event()

        def deliver(worker: Worker | None) -> None:
            if worker is not None:
                if done.is_set():  # the job gave up waiting
                    worker.done()
                else:
                    handed.append(worker)
            done.set()

        self._nursery.start_soon(self._worker_lifetime, "", deliver)
        try:
            await done.wait()
        finally:
            done.set()
        return handed[0] if handed else None

    def _refilled(self, worker: Worker | None) -> None:
        self._booting -= 1
        if worker is not None:
            self._ready.append(worker)

    async def _worker_lifetime(self, preload: str | None = None,
                               deliver: Callable[[Worker | None], None] | None = None) -> None:
        """Boot one worker, hand it to `deliver` once ready (None if it fails to), and hold
        its sandbox until it is released."""
        hand = deliver or self._refilled
        self.started += 1
        name = f"job-warm-{os.urandom(6).hex()}"
        release = trio.Event()
        worker = None
        try:
            async with self.sandbox.job(name, WORKER_LIMITS) as job:
                job.make_out_dir()
                argv = [str(self.sandbox.runtime.interpreter), "-s", "-u", "-c", BOOT,
                        self.preload if preload is None else preload]
                proc = await job.start(argv, job_env(WORKER_LIMITS),
                                       stdin=subprocess.PIPE)
                assert proc.stdout is not None and job.cgroup is not None
                first = b""
                with trio.move_on_after(120):
                    while len(first) < 6:
                        chunk = await proc.stdout.receive_some(6 - len(first))
                        if not chunk:
                            break
                        first += chunk
                if first != b"ready\n":
                    raise LaunchFailed(f"it did not boot: {first!r}")
                worker = Worker(job, release)
                worker.keep = job.cgroup.pids()
                hand(worker)
                await release.wait()
        except (SandboxError, OSError) as exc:
            log.warning("warm worker %s: %s", name, exc)
        finally:
            if worker is None:
                hand(None)
            self._wanted.set()


@asynccontextmanager
async def warm_pool(sandbox: Sandbox, size: int) -> AsyncIterator[WarmPool]:
    pool = WarmPool(sandbox, size=size)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        yield pool
        nursery.cancel_scope.cancel()
