"""What a provider keeps for requesters after a job's result is out: recent signed results,
so a requester that lost one (its process died mid-download) can still be shown the proof
and pay for the work; and the outputs of a job whose requester fetches them on a new
stream (`fetch_outputs`: its job stream was relayed, the outputs too big for the relay).

Results: one file per job under `<home>/results/`, written atomically, at most MAX_RESULTS
of them (a tenth more between two prunes: a prune reads every file's age) and none served
older than MAX_AGE_S; served only to the job's own requester. Held
outputs: in the job's slot while its exchange waits, FETCH_START_S for the fetch to begin,
one fetch per job, by its requester only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from node.errors import RemoteError
from node.net.host import Stream
from protocol import JobResult, OutputFile, ProtocolError, open_signed, wire
from protocol.messages import check_sha256

log = logging.getLogger(__name__)
MAX_RESULTS = 1000
MAX_AGE_S = 24 * 3600.0
MAX_RESULT_BYTES = 1024 * 1024
FETCH_START_S = 30.0
"""Outputs a requester moved to a settle stream wait this long for its fetch to begin."""

Outputs = list[tuple[OutputFile, Path]]


class RecentResults:
    def __init__(self, folder: Path, *, max_results: int = MAX_RESULTS,
                 max_age_s: float = MAX_AGE_S) -> None:
        self.folder = folder
        self.max_results = max_results
        self.max_age_s = max_age_s
        self._since_prune = max_results  # the first put prunes what an earlier run left

    def _path(self, job_id: str) -> Path | None:
        try:
            check_sha256(job_id, "job_id")
        except ProtocolError:
            return None
        return self.folder / f"{job_id}.result"

    def put(self, job_id: str, raw: bytes) -> None:
        """Keep a signed result; best effort (a full disk costs the proof, not the job)."""
        path = self._path(job_id)
        if path is None or len(raw) > MAX_RESULT_BYTES:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_bytes(raw)
            os.replace(tmp, path)
            self._since_prune += 1
            if self._since_prune > self.max_results // 10:
                self._since_prune = 0
                self.prune()
        except OSError as exc:
            log.warning("could not keep the signed result of job %s: %s", job_id[:12], exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def get(self, job_id: str, requester: str) -> bytes | None:
        """The signed result of `job_id` if it is held and addressed to `requester`."""
        path = self._path(job_id)
        if path is None:
            return None
        try:
            if time.time() - path.stat().st_mtime > self.max_age_s:
                return None
            with path.open("rb") as f:
                raw = f.read(MAX_RESULT_BYTES + 1)
        except OSError:
            return None
        try:
            r = open_signed(raw, JobResult).message
        except ProtocolError:
            return None
        return raw if r.job_id == job_id and r.requester == requester else None

    async def answer(self, stream: Stream, job_id: str,
                     also: Callable[[str, str], bytes | None] | None = None) -> None:
        """A `result_query` on the settle protocol: the result (from here, else from
        `also`), or an `expired` error."""
        raw = await trio.to_thread.run_sync(self.get, job_id, stream.remote_peer)
        if raw is None and also is not None:
            raw = await trio.to_thread.run_sync(also, job_id, stream.remote_peer)
        if raw is None:
            frame: wire.Frame = wire.ErrorReply(
                code="expired", message=f"no signed result of job {job_id[:12]} for you is "
                "held here (it never finished, or it is too old)")
        else:
            log.info("job %s: showing its signed result to %s again", job_id[:12],
                     stream.remote_peer[:16])
            frame = wire.ResultReady(result=raw)
        with contextlib.suppress(RemoteError):
            await stream.send(frame)

    def prune(self) -> None:
        """Drop results past the age limit, then the oldest beyond the count limit."""
        entries = []
        now = time.time()
        for p in self.folder.glob("*.result"):
            try:
                mtime = p.stat().st_mtime
            except OSError:
                continue
            if now - mtime > self.max_age_s:
                with contextlib.suppress(OSError):
                    p.unlink()
            else:
                entries.append((mtime, p))
        entries.sort()
        for _, p in entries[: max(0, len(entries) - self.max_results)]:
            with contextlib.suppress(OSError):
                p.unlink()


@dataclasses.dataclass(eq=False)
class _Held:
    requester: str
    outputs: Outputs
    taken: bool = False
    sent: bool = False
    started: trio.Event = dataclasses.field(default_factory=trio.Event)
    ended: trio.Event = dataclasses.field(default_factory=trio.Event)


class HeldOutputs:
    """Outputs of jobs whose requester fetches them on a settle stream."""

    def __init__(self, *, start_s: float = FETCH_START_S) -> None:
        self.start_s = start_s
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def holds(self, job_id: str) -> bool:
        return job_id in self._held

    async def hold(self, job_id: str, requester: str, outputs: Outputs) -> bool:
        """Until the one fetch of these outputs ended, or none began within `start_s`;
        True when they were sent. The caller keeps the files until then."""
        held = self._held[job_id] = _Held(requester, outputs)
        try:
            with trio.move_on_after(self.start_s):
                await held.started.wait()
            if held.taken:
                await held.ended.wait()  # the fetch runs under its own transfer deadline
        finally:
            del self._held[job_id]
        return held.sent

    async def serve(self, stream: Stream, job_id: str,
                    send: Callable[[Stream, Outputs], Awaitable[None]]) -> None:
        """A `fetch_outputs` on the settle protocol: `send` the held outputs, or `expired`."""
        held = self._held.get(job_id)
        if held is None or held.taken or held.requester != stream.remote_peer:
            with contextlib.suppress(RemoteError):
                await stream.send(wire.ErrorReply(
                    code="expired", message=f"no outputs of job {job_id[:12]} are held here "
                    "for you (never moved, already fetched, or the wait ran out)"))
            return
        held.taken = True
        held.started.set()
        try:
            await send(stream, held.outputs)
            held.sent = True
        finally:
            held.ended.set()
