"""Runs one job's process: capped output capture, wall timeout, kill of its process group.

What the cap cuts is counted (`*_dropped`), and a job that asks (`Capture`) also gets the
whole of its output as files.

This is the plain-subprocess runner of the walking skeleton (sandbox tier `none`); the
bubblewrap runner replaces it behind the same `run_process` seam.
"""

from __future__ import annotations

import contextvars
import dataclasses
import os
import resource
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import trio

from protocol.messages import MAX_OUTPUT_TEXT

Outcome = Literal["ok", "failed", "timeout", "killed"]
OutputSink = Callable[[Literal["stdout", "stderr"], bytes], None]

output_sink: contextvars.ContextVar[OutputSink | None] = contextvars.ContextVar(
    "output_sink", default=None)
"""Set by the provider around a job's run: every chunk of the job's output as it comes
(live logs). It lives in the task's context so the runners below need no new argument."""


@dataclasses.dataclass(frozen=True, slots=True)
class Capture:
    """How the provider captures a job's output, from its spec: at most `cap` bytes of
    each stream kept for the result (never above the runner's own cap), and the whole of
    it, up to `file_limit` bytes, in `files` (stream -> a path the job cannot reach)."""

    cap: int = MAX_OUTPUT_TEXT
    files: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    file_limit: int = 0


stop_signal: contextvars.ContextVar[trio.Event | None] = contextvars.ContextVar(
    "stop_signal", default=None)
"""Set by the provider around a job's run: when the event is set (`cancel_job`), the job
is killed as if its wall limit had come, and its status is `killed`."""

capture: contextvars.ContextVar[Capture | None] = contextvars.ContextVar("capture",
                                                                          default=None)
"""Set by the provider around a job's run, from its spec; None: the runner's cap only."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessResult:
    status: Outcome
    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_s: float
    cpu_s: float
    peak_memory_mb: int
    stdout_dropped: int = 0
    """Bytes the job wrote to stdout beyond the cap (counted, not kept)."""
    stderr_dropped: int = 0


class _Capped:
    def __init__(self, cap: int, name: Literal["stdout", "stderr"],
                 how: Capture | None = None) -> None:
        how = how or Capture()
        self.cap = min(cap, how.cap)
        self.name = name
        self.data = bytearray()
        self.truncated = False
        self.dropped = 0
        """Bytes read past the cap: drained (the job never blocks on a full pipe), counted."""
        self.file = how.files.get(name)
        self.file_room = how.file_limit
        self.file_cut = False
        """The whole-output file reached its limit (the job's disk) and stopped there."""

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        sink = output_sink.get()
        whole = open(self.file, "wb") if self.file is not None else None  # noqa: SIM115
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                if sink is not None:
                    sink(self.name, chunk)
                if whole is not None:
                    self._keep(whole, chunk)
                self._cap(chunk)
        finally:
            if whole is not None:
                whole.close()

    def _keep(self, whole: BinaryIO, chunk: bytes) -> None:
        part = chunk[:max(self.file_room, 0)]
        whole.write(part)
        self.file_room -= len(part)
        self.file_cut = self.file_cut or len(part) < len(chunk)

    def _cap(self, chunk: bytes) -> None:
        room = max(self.cap - len(self.data), 0)
        if room:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True
            self.dropped += len(chunk) - room


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def collect_output(proc: trio.Process, *, timeout_s: float, output_cap: int,
                         on_exit: Callable[[], None] = lambda: None
                         ) -> tuple[_Capped, _Capped, bool]:
    """Drain a process's capped stdout/stderr until it exits or `timeout_s` passes; after
    it exits, `on_exit` runs and the pipes get 1 s more. Returns (out, err, timed_out)."""
    assert proc.stdout is not None and proc.stderr is not None
    return await collect_streams(proc.stdout, proc.stderr, proc.wait, timeout_s=timeout_s,
                                 output_cap=output_cap, on_exit=on_exit)


async def collect_streams(stdout: trio.abc.ReceiveStream, stderr: trio.abc.ReceiveStream,
                          exited: Callable[[], Awaitable[object]], *, timeout_s: float,
                          output_cap: int, on_exit: Callable[[], None] = lambda: None
                          ) -> tuple[_Capped, _Capped, bool]:
    """`collect_output` for any two streams and an awaitable that returns once the job
    has ended (a process's exit, or a warm worker's report of its forked job)."""
    how = capture.get()
    stop = stop_signal.get()
    out, err = _Capped(output_cap, "stdout", how), _Capped(output_cap, "stderr", how)
    waiter = trio.CancelScope()

    async def stop_on(event: trio.Event, nursery: trio.Nursery) -> None:
        with waiter:
            await event.wait()
            nursery.cancel_scope.cancel()

    with trio.move_on_after(timeout_s) as scope:
        async with trio.open_nursery() as nursery:
            if stop is not None:
                nursery.start_soon(stop_on, stop, nursery)
            nursery.start_soon(out.drain, stdout)
            nursery.start_soon(err.drain, stderr)
            await exited()
            waiter.cancel()
            on_exit()
            nursery.cancel_scope.deadline = trio.current_time() + 1.0
    return out, err, scope.cancelled_caught


def stopped() -> bool:
    """Whether this job was told to stop (`stop_signal`)."""
    stop = stop_signal.get()
    return stop is not None and stop.is_set()


def outcome(*, timed_out: bool, code: int, killed: bool = False) -> Outcome:
    if timed_out:
        return "timeout"
    if killed or code < 0:
        return "killed"
    return "ok" if code == 0 else "failed"


async def run_process(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
                      timeout_s: float, output_cap: int = MAX_OUTPUT_TEXT) -> ProcessResult:
    """Run `argv` in its own session; on timeout or cancellation the whole group is killed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = await trio.lowlevel.open_process(
        list(argv), cwd=str(cwd), env=dict(env), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err, timed_out = await collect_output(
            proc, timeout_s=timeout_s, output_cap=output_cap,
            on_exit=lambda: _kill_group(proc.pid))
    finally:
        _kill_group(proc.pid)
        with trio.CancelScope(shield=True):
            await proc.wait()
            for s in (proc.stdout, proc.stderr):
                if s is not None:
                    await s.aclose()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    code = proc.returncode if proc.returncode is not None else -9
    return ProcessResult(
        status=outcome(timed_out=timed_out, code=code, killed=stopped()), exit_code=code,
        stdout=bytes(out.data), stderr=bytes(err.data),
        stdout_truncated=out.truncated, stderr_truncated=err.truncated, wall_s=wall,
        cpu_s=max(0.0, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)),
        peak_memory_mb=after.ru_maxrss // 1024, stdout_dropped=out.dropped,
        stderr_dropped=err.dropped)
