"""Jobs running here, by id, for their requesters' later questions on the settle protocol:
the output so far (`logs_query`, live with `follow`), and a stop (`cancel_job`).

Each running job keeps the tail of its output (LOG_BYTES per job) and a few followers
(MAX_FOLLOWERS, each with a bounded backlog: a follower that reads too slowly is cut off,
it never slows the job). Only the job's own requester is answered.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterator

import trio

from node.provider.live import STREAMS

LOG_BYTES = 1 << 20
"""Output kept per running job for `logs_query` (its tail)."""
MAX_FOLLOWERS = 4
FOLLOW_BACKLOG = 256
Line = tuple[str, str]
"""(stream, text)."""


@dataclasses.dataclass(eq=False)
class LiveJob:
    job_id: str
    requester: str
    detached: bool
    started: float = dataclasses.field(default_factory=time.monotonic)
    stop: trio.Event = dataclasses.field(default_factory=trio.Event)
    """Set by a `cancel_job`: the runner kills the job and its result says `killed`."""
    ended: trio.Event = dataclasses.field(default_factory=trio.Event)
    log: collections.deque[Line] = dataclasses.field(default_factory=collections.deque)
    kept: int = 0
    dropped: int = 0
    """Bytes of older output no longer kept."""
    followers: list[trio.MemorySendChannel[Line]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._decoders = {n: codecs.getincrementaldecoder("utf-8")("replace") for n in STREAMS}

    @property
    def elapsed_s(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def write(self, stream: str, data: bytes) -> None:
        """A chunk of the job's output (the runner's output sink)."""
        text = self._decoders[stream].decode(data)
        if not text:
            return
        line = (stream, text)
        self.log.append(line)
        self.kept += len(text)
        while self.kept > LOG_BYTES and len(self.log) > 1:
            _, old = self.log.popleft()
            self.kept -= len(old)
            self.dropped += len(old.encode())
        for f in list(self.followers):
            try:
                f.send_nowait(line)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self.followers.remove(f)
                f.close()

    def follow(self) -> trio.MemoryReceiveChannel[Line] | None:
        """A channel of what the job writes from now on, closed when it ends; None when
        it has MAX_FOLLOWERS already."""
        if len(self.followers) >= MAX_FOLLOWERS:
            return None
        send, recv = trio.open_memory_channel[Line](FOLLOW_BACKLOG)
        self.followers.append(send)
        return recv

    def end(self) -> None:
        self.ended.set()
        for f in self.followers:
            f.close()
        self.followers.clear()


class JobBoard:
    """The jobs running here now."""

    def __init__(self) -> None:
        self._jobs: dict[str, LiveJob] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    @contextlib.contextmanager
    def running(self, job_id: str, requester: str, *, detached: bool) -> Iterator[LiveJob]:
        job = self._jobs[job_id] = LiveJob(job_id, requester, detached)
        try:
            yield job
        finally:
            job.end()
            if self._jobs.get(job_id) is job:
                del self._jobs[job_id]

    def get(self, job_id: str, requester: str) -> LiveJob | None:
        """The running job `job_id` if `requester` submitted it."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.requester == requester else None

    def detached(self) -> int:
        return sum(j.detached for j in self._jobs.values())
