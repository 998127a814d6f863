"""What the CLI shows while a job moves: rich progress on a terminal, plain lines otherwise.

A listener for node.requester.events. On a terminal (stderr) each job has a line with its
phase (quoted, uploading, running N s, downloading, verified), each file moving a bar with
bytes, percent and rate, a map its items done of all and failed; lines that matter later
(quotes, finished transfers, verdicts, money) stay printed above. Elsewhere the same
news comes as plain `offload: ...` lines on stderr, a transfer's at most every
`PLAIN_EVERY_S`. `--follow` adds the job's live output (stdout to stdout, stderr to
stderr); `--json` keeps stdout for the one JSON document: live output goes to stderr, and
progress only to a terminal.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from node.requester import events
from scheduler.pricing import credits

if TYPE_CHECKING:  # rich is imported only for a terminal: plain lines never need it
    from rich.progress import Progress, TaskID

PLAIN_EVERY_S = 5.0
"""Plain lines: the longest a transfer or a run goes without one."""
PLAIN_RUNNING_S = 30.0


def size(n: float) -> str:
    """Bytes for people: 512 B, 3.0 KiB, 200.0 MiB, 1.2 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def transfer(ev: events.Transferred) -> str:
    """'uploading x.bin: 12.0 MiB of 200.0 MiB (6%) at 45.1 MiB/s'; 'uploaded ...' at the end."""
    verb = "upload" if ev.direction == "up" else "download"
    pct = 100 if ev.size == 0 else int(ev.done * 100 / ev.size)
    if ev.done >= ev.size:
        return (f"{verb}ed {ev.name}: {size(ev.size)} in {ev.elapsed_s:.1f} s "
                f"at {size(ev.rate_bps)}/s")
    return (f"{verb}ing {ev.name}: {size(ev.done)} of {size(ev.size)} ({pct}%) "
            f"at {size(ev.rate_bps)}/s")


def describe(ev: events.Event) -> str | None:
    """One plain line for an event (None for events that only move a bar)."""
    who = ev.provider[:16]
    job = ev.job_id[:12]
    if isinstance(ev, events.Quoted):
        return f"{who}: quoted job {job} at up to {credits(ev.max_charge)} credits"
    if isinstance(ev, events.Route) and (ev.route == "relayed" or ev.what == "outputs"):
        waited = f" (no direct connection within {ev.waited_s:.0f} s)" if ev.waited_s else ""
        if ev.what == "outputs":
            return (f"{who}: outputs of job {job} through the relay{waited}"
                    if ev.route == "relayed" else
                    f"{who}: outputs of job {job} on a direct connection")
        return f"{who}: reached through a relay{waited}"
    if isinstance(ev, events.Uploading):
        resumed = f", resuming at {size(ev.offset)}" if ev.offset else ""
        return f"{who}: uploading {ev.name} ({size(ev.size)}{resumed})"
    if isinstance(ev, events.Downloading):
        return f"{who}: downloading {ev.name} ({size(ev.size)})"
    if isinstance(ev, events.Transferred):
        return f"{who}: {transfer(ev)}"
    if isinstance(ev, events.Running):
        return f"{who}: running job {job} ({ev.elapsed_s:.0f} s)"
    if isinstance(ev, events.MapProgress):
        failed = f", {ev.failed} failed" if ev.failed else ""
        return f"map: {ev.done}/{ev.total} items done{failed}"
    if isinstance(ev, events.Verified):
        agreed = f", {ev.agreed} of {ev.replicas} agreed" if ev.replicas > 1 else ""
        return f"{who}: result of job {job} verified ({ev.status}{agreed})"
    if isinstance(ev, events.Retried):
        return f"{who}: failed ({ev.error}); trying another provider"
    if isinstance(ev, events.BusyRetry):
        return f"{who}: busy; asking again in {ev.retry_in_s:.0f} s"
    if isinstance(ev, events.Paid):
        return f"{who}: paid {credits(ev.amount)} credits for job {job}"
    if isinstance(ev, events.Refunded):
        return f"{who}: job {job} refunded ({ev.reason}), nothing paid"
    return None


_KEPT = (events.Quoted, events.Verified, events.Paid, events.Refunded, events.Retried,
         events.BusyRetry, events.Route)
"""Events whose line stays above the bars on a terminal."""


class Reporter:
    """Shows events; use as a context manager around the work."""

    def __init__(self, *, follow: bool = False, quiet: bool = False,
                 out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.follow = follow
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._tty = self.err.isatty()
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._said: dict[str, float] = {}
        self._partial: dict[str, str] = {}
        self._owner: dict[str, str] = {}

    def __enter__(self) -> Reporter:
        if self._tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False),
                                 BarColumn(bar_width=24),
                                 console=Console(file=self.err, highlight=False),
                                 transient=True, refresh_per_second=8)
            self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            for text in self._partial.values():
                if text:
                    self._bar.console.print(text, markup=False, highlight=False)
            self._bar.stop()

    def __call__(self, ev: events.Event) -> None:
        if isinstance(ev, events.LogLine):
            if self.follow:
                self._live_output(ev)
            return
        if self._bar is not None:
            self._update_bar(ev)
        elif not self.quiet:
            self._plain(ev)

    def _live_output(self, ev: events.LogLine) -> None:
        to_err = ev.stream == "stderr" or self.quiet
        if self._bar is None or not (to_err or self.out.isatty()):
            target = self.err if to_err else self.out
            target.write(ev.text)
            target.flush()
            return
        # above the bars, whole lines at a time (a part line would tear the display)
        held = self._partial.get(ev.stream, "") + ev.text
        whole, _, self._partial[ev.stream] = held.rpartition("\n")
        if whole:
            self._bar.console.print(whole, markup=False, highlight=False)

    def _plain(self, ev: events.Event) -> None:
        line = describe(ev)
        if line is None:
            return
        if isinstance(ev, events.Transferred | events.Running):
            key = f"{type(ev).__name__}:{ev.job_id}:{getattr(ev, 'name', '')}"
            now = time.monotonic()
            every = PLAIN_RUNNING_S if isinstance(ev, events.Running) else PLAIN_EVERY_S
            done = isinstance(ev, events.Transferred) and ev.done >= ev.size
            if not done and key in self._said and now - self._said[key] < every:
                return
            self._said[key] = now
        print(f"offload: {line}", file=self.err, flush=True)

    def _task(self, key: str, description: str, *, total: float | None = None,
              completed: int = 0) -> None:
        assert self._bar is not None
        if key not in self._tasks:
            self._tasks[key] = self._bar.add_task(description, total=total, completed=completed)
        else:
            self._bar.update(self._tasks[key], description=description, total=total,
                             completed=completed, refresh=key.startswith("file:"))

    def _drop(self, key: str) -> None:
        assert self._bar is not None
        self._owner.pop(key, None)
        if (task := self._tasks.pop(key, None)) is not None:
            self._bar.remove_task(task)

    def _update_bar(self, ev: events.Event) -> None:
        assert self._bar is not None
        who, job = ev.provider[:16], ev.job_id[:12]
        key = f"job:{ev.job_id or ev.provider}"
        line = describe(ev)
        if isinstance(ev, events.Transferred):
            file_key = f"file:{ev.job_id}:{ev.direction}:{ev.name}"
            if ev.done >= ev.size:
                self._drop(file_key)
                self._bar.console.print(f"offload: {line}", markup=False)
            else:
                self._task(file_key, f"  {transfer(ev)}", total=max(ev.size, 1),
                           completed=ev.done)
            return
        phase = {events.Quoted: "quoted", events.Uploading: "uploading",
                 events.Downloading: "downloading", events.Verified: "verified"}.get(type(ev))
        if isinstance(ev, events.Running):
            phase = f"running {ev.elapsed_s:.0f} s"
        if isinstance(ev, events.Verified) and "map" in self._tasks:
            self._drop(key)  # a map's items come and go; its bar counts them
        elif phase is not None:
            self._task(key, f"{who}: job {job} {phase}")
            self._owner[key] = ev.provider
        if isinstance(ev, events.Retried):  # the job there is over
            for gone in [k for k, peer in self._owner.items() if peer == ev.provider]:
                self._drop(gone)
        if isinstance(ev, events.MapProgress):
            self._task("map", line or "", total=max(ev.total, 1), completed=ev.done)
        if isinstance(ev, _KEPT) and line is not None:
            self._bar.console.print(f"offload: {line}", markup=False)
        if isinstance(ev, events.Paid | events.Refunded):
            self._drop(key)
