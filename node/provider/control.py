"""A requester's control of its jobs here on the settle protocol: their output
(`logs_query`, live with `follow`) and their stop (`cancel_job`). Only the job's own
requester is answered; others hear `expired`, as for a job that is not here."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

from node.errors import RemoteError
from node.net.host import Stream
from node.net.transfer import STALL_S
from node.provider.live import pieces
from protocol import wire

if TYPE_CHECKING:
    from node.provider.daemon import Provider

HEARTBEAT_S = 2.0
CANCEL_WAIT_S = 30.0
"""The longest a `cancel_job` waits for the stopped job's result."""


async def _send(stream: Stream, frame: wire.Frame) -> bool:
    """One frame within STALL_S; False if the peer is gone or does not read."""
    with trio.move_on_after(STALL_S):
        with contextlib.suppress(RemoteError):
            await stream.send(frame)
            return True
    return False


async def _lines(stream: Stream, name: str, text: str) -> bool:
    for part in pieces(text):
        if not await _send(stream, wire.Output(stream=name,  # type: ignore[arg-type]
                                               text=part)):
            return False
    return True


async def _ended(p: Provider, stream: Stream, job_id: str) -> None:
    """What a question about a job that is not running gets: its signed result, or
    `expired`."""
    await p.results.answer(stream, job_id, also=p.kept.result)


async def serve_logs(p: Provider, stream: Stream, q: wire.LogsQuery) -> None:
    """The output kept so far, then (with `follow`) what comes until the job ends and its
    signed result, heartbeats in between; `logs_end` when not following."""
    live = p.board.get(q.job_id, stream.remote_peer)
    if live is None:
        await _ended(p, stream, q.job_id)
        return
    follow = live.follow() if q.follow else None
    if q.follow and follow is None:
        await _send(stream, wire.ErrorReply(code="busy", message="this job has as many "
                                            "followers as it may; try again later",
                                            retry_after_s=10.0))
        return
    dropped = live.dropped
    for name, text in list(live.log):
        if not await _lines(stream, name, text):
            return
    if follow is None:
        await _send(stream, wire.LogsEnd(job_id=q.job_id, running=True, dropped=dropped))
        return
    async with follow:
        while True:
            with trio.move_on_after(HEARTBEAT_S) as idle:
                try:
                    name, text = await follow.receive()
                except trio.EndOfChannel:
                    break
            if idle.cancelled_caught:
                if not await _send(stream, wire.Running(elapsed_s=live.elapsed_s)):
                    return
            elif not await _lines(stream, name, text):
                return
    if live.ended.is_set():
        await _ended(p, stream, q.job_id)
    else:  # cut off: it read too slowly
        await _send(stream, wire.LogsEnd(job_id=q.job_id, running=True,
                                         dropped=live.dropped))


async def serve_cancel(p: Provider, stream: Stream, q: wire.CancelJob) -> None:
    """Stop the job, wait for its end, answer its signed result (status `killed`)."""
    live = p.board.get(q.job_id, stream.remote_peer)
    if live is not None:
        live.stop.set()
        with trio.move_on_after(CANCEL_WAIT_S):
            await live.ended.wait()
    await _ended(p, stream, q.job_id)
