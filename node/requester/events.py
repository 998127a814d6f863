"""Typed events of a requester's work, for progress bars, logs and API subscribers.

Every step that can take time says so: which offers were found, a provider's quote,
the route to it (direct or relayed), each upload and download, heartbeats while the job
runs, live output lines, bytes moved (`Transferred`, a few a second per file), a map's
items done of all (`MapProgress`), the verification verdict, a busy provider to ask again, a
provider replaced, the money that moved, and how long each phase of an exchange took (`Timing`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal


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
