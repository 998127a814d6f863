"""Typed events of a requester's work, for progress bars, logs and API subscribers.

Every step that can take time says so: which offers were found, a provider's quote,
the route to it (direct or relayed), each upload and download, heartbeats while the job
runs, live output lines, bytes moved (`Transferred`, a few a second per file), a map's
items done of all (`MapProgress`), the verification verdict, a busy provider to ask again, a
provider replaced, the money that moved, and how long each phase of an exchange took (`Timing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

import trio

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event; `job_id` is "" before a provider quoted."""

    job_id: str = ""
    provider: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OfferFound(Event):
    score: float
    cost_credits: float
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Quoted(Event):
    max_charge: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Route(Event):
    """How the job's stream (`what` "job") or its big outputs ("outputs") reach the
    provider: "direct", or "relayed" through a circuit relay (a NATed provider);
    `waited_s` spent waiting for a direct connection first."""

    route: str
    waited_s: float = 0.0
    what: str = "job"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Uploading(Event):
    name: str
    size: int
    offset: int = 0
    """Bytes the provider already had (a resumed upload)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Transferred(Event):
    """Bytes of one file moved so far (`done` of `size`, counted from 0; the transfer
    began at `offset`), `elapsed_s` after it began; at most ~10 a second per file, and
    always one when it completes."""

    direction: Literal["up", "down"]
    name: str
    done: int
    size: int
    offset: int = 0
    elapsed_s: float = 0.0

    @property
    def rate_bps(self) -> float:
        """Bytes a second since the transfer began."""
        return (self.done - self.offset) / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MapProgress(Event):
    """A map's items: `done` of `total` have an outcome, `failed` of those failed (no
    provider could run it, or its job did not end "ok")."""

    done: int
    failed: int
    total: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Running(Event):
    elapsed_s: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogLine(Event):
    stream: Literal["stdout", "stderr"]
    text: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Downloading(Event):
    name: str
    size: int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Verified(Event):
    status: str
    replicas: int = 1
    agreed: int = 1


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Retried(Event):
    error: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BusyRetry(Event):
    """The provider answered `busy`: it is asked again after `retry_in_s` (jitter
    included) unless another candidate takes the job first."""

    retry_in_s: float
    tries: int
    """Busy answers from this provider so far, this one included."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timing(Event):
    """One phase of a job exchange ended: `phase` (see exchange.PHASES) took `ms`."""

    phase: str
    ms: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Paid(Event):
    amount: int
    """Micro-credits released to the provider."""
    refunded: int = 0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refunded(Event):
    amount: int
    reason: str


Emit = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default listener."""


class Meter:
    """A transfer's `Progress` (node.net.transfer) as `events.Transferred`: at most one
    per file every `every_s`, and one when a file completes. Called from a lane's worker
    thread, it hands the event to the trio thread (run_sync_soon), so listeners stay there."""

    def __init__(self, emit: Emit, job_id: str, provider: str,
                 direction: Literal["up", "down"], files: Sequence[tuple[str, int, int]], *,
                 every_s: float = 0.1) -> None:
        self.emit, self.job_id, self.provider, self.direction = emit, job_id, provider, direction
        self.files = {name: (size, offset) for name, size, offset in files}
        self.every_s = every_s
        self.began: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._thread = threading.current_thread()
        self._token = trio.lowlevel.current_trio_token()
        self._clock = time.monotonic()

    def __call__(self, name: str, at: int) -> None:
        size, offset = self.files.get(name, (at, 0))
        now = time.monotonic()
        began = self.began.setdefault(name, self._clock)
        if at < size and now - self.last.get(name, 0.0) < self.every_s:
            return
        self.last[name] = now
        if at >= size:
            self._clock = now  # the next file begins here
        ev = Transferred(job_id=self.job_id, provider=self.provider,
                                direction=self.direction, name=name, done=at, size=size,
                                offset=offset, elapsed_s=round(now - began, 3))
        if threading.current_thread() is self._thread:
            self.emit(ev)
            return
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._emit_quietly, ev)

    def _emit_quietly(self, ev: Event) -> None:
        try:
            self.emit(ev)
        except Exception:  # a listener's bug must not end the trio run
            log.exception("a progress listener failed")
