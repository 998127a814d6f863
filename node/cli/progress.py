"""What the CLI shows while a job moves: rich progress on a terminal, plain lines otherwise.

A listener for node.requester.events. `--follow` adds the job's live output (stdout to stdout,
stderr to stderr); `--json` keeps stdout for the one JSON document, so there live
output and progress both go to stderr.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from node.requester import events
from scheduler.pricing import credits


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
        resumed = f", resuming at {ev.offset}" if ev.offset else ""
        return f"{who}: uploading {ev.name} ({ev.size} bytes{resumed})"
    if isinstance(ev, events.Downloading):
        return f"{who}: downloading {ev.name} ({ev.size} bytes)"
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


class Reporter:
    """Shows events; use as a context manager around the work."""

    def __init__(self, *, follow: bool = False, quiet: bool = False,
                 out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.follow = follow
        self.quiet = quiet
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._tty = self.err.isatty() and not quiet
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Reporter:
        if self._tty:
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                 TimeElapsedColumn(), console=Console(file=self.err),
                                 transient=True)
            self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, ev: events.Event) -> None:
        if isinstance(ev, events.LogLine):
            if self.follow:
                target = self.out if ev.stream == "stdout" and not self.quiet else self.err
                target.write(ev.text)
                target.flush()
            return
        line = describe(ev)
        if self._bar is not None:
            self._update_bar(ev, line)
        elif line is not None and not self.quiet:
            print(f"offload: {line}", file=self.err, flush=True)

    def _update_bar(self, ev: events.Event, line: str | None) -> None:
        assert self._bar is not None
        key = ev.job_id or ev.provider
        if isinstance(ev, events.Running):
            line = f"{ev.provider[:16]}: running job {ev.job_id[:12]}"
        if line is None:
            return
        if key not in self._tasks:
            self._tasks[key] = self._bar.add_task(line, total=None)
        else:
            self._bar.update(self._tasks[key], description=line)
        if isinstance(ev, events.Paid | events.Refunded | events.Retried | events.BusyRetry):
            self._bar.console.print(f"offload: {line}")
