"""Deadline arithmetic, transfers cut for trickling or stalling, and the retry-on-busy policy.

Transfers run over trio's in-memory streams under a virtual clock (autojump), so a
trickle of hundreds of seconds takes milliseconds and the cut-off time is exact.
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.errors import PeerRefused, PeerTimeout
from node.net.host import FramedStream
from node.net.transfer import (
    MIN_RATE_BPS,
    STALL_S,
    TRANSFER_GRACE_S,
    TransferFailed,
    TransferTimeout,
    receive_file,
    send_file,
    transfer_seconds,
)
from node.requester import events
from node.requester.exchange import GRACE_S, QUOTE_S, Phases
from node.requester.placement import (
    BUSY_DEFAULT_S,
    BUSY_JITTER,
    BUSY_MAX_WAIT_S,
    BUSY_TRIES,
    Placer,
    Pool,
    busy_delay,
)
from protocol import wire

PEER = "12D3KooWPeerOnTheOtherEndOfAMemoryStream"


class _Raw:
    """A libp2p-like stream over one of trio's in-memory byte streams."""

    def __init__(self, s: trio.abc.Stream) -> None:
        self._s = s

    async def read(self, n: int) -> bytes:
        return await self._s.receive_some(n)

    async def write(self, data: bytes) -> None:
        await self._s.send_all(data)

    async def close(self) -> None:
        await self._s.aclose()

    async def reset(self) -> None:
        await self._s.aclose()


def _pair(lockstep: bool = False) -> tuple[FramedStream, FramedStream]:
    a, b = (trio.testing.lockstep_stream_pair() if lockstep
            else trio.testing.memory_stream_pair())
    return FramedStream(_Raw(a), remote_peer=PEER), FramedStream(_Raw(b), remote_peer=PEER)


def _blob(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / "blob.bin"
    path.write_bytes(random.Random(size).randbytes(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


# -- arithmetic ---------------------------------------------------------------------------

def test_a_transfer_may_take_its_bytes_at_the_minimum_rate_plus_a_fixed_grace() -> None:
    assert transfer_seconds(0) == TRANSFER_GRACE_S
    assert transfer_seconds(-5) == TRANSFER_GRACE_S  # never less than the grace
    assert transfer_seconds(10 * MIN_RATE_BPS) == 10 + TRANSFER_GRACE_S
    assert transfer_seconds(512 * 1024 * 1024) == 512 * 1024 * 1024 / MIN_RATE_BPS + 30
    assert MIN_RATE_BPS == 128 * 1024 and TRANSFER_GRACE_S == 30.0 and STALL_S == 30.0


def test_queueing_and_running_each_get_the_timeout_plus_the_fixed_grace() -> None:
    p = Phases(max_seconds=20)
    assert (p.quote_s, p.slot_s, p.run_s) == (QUOTE_S, 20 + GRACE_S, 20 + GRACE_S)
    assert p.total_s(0, 0) == QUOTE_S + 2 * (20 + GRACE_S) + 2 * TRANSFER_GRACE_S
    assert p.total_s(MIN_RATE_BPS, 2 * MIN_RATE_BPS) == p.total_s(0, 0) + 3


def test_busy_waits_follow_retry_after_with_jitter_and_are_capped() -> None:
    rng = random.Random(7)
    for _ in range(200):
        d = busy_delay(5.0, 1, rng)
        assert 5.0 <= d <= 5.0 * (1 + BUSY_JITTER)
    assert len({round(busy_delay(5.0, 1, rng), 6) for _ in range(20)}) > 10  # jittered
    low = random.Random(0)
    low.random = lambda: 0.0  # type: ignore[method-assign]
    assert [busy_delay(None, t, low) for t in (1, 2, 3)] == [
        BUSY_DEFAULT_S, 2 * BUSY_DEFAULT_S, 4 * BUSY_DEFAULT_S]
    for hostile in (0.0, -3.0, math.nan):
        assert busy_delay(hostile, 1, low) == BUSY_DEFAULT_S
    assert busy_delay(10_000.0, 1, low) == BUSY_MAX_WAIT_S
    assert busy_delay(None, 30, rng) <= BUSY_MAX_WAIT_S * (1 + BUSY_JITTER)


def test_a_deferred_candidate_comes_back_only_after_its_time_and_after_fresh_ones() -> None:
    a, b = object(), object()
    pool = Pool([(a, None), (b, None)])  # type: ignore[list-item]
    assert pool.take(0.0) is a
    pool.defer(a, 10.0)  # type: ignore[arg-type]
    assert len(pool) == 2 and pool.wake_at() == 10.0
    assert pool.take(11.0) is b  # a fresh candidate first
    assert pool.take(9.9) is None and pool.wake_at() == 10.0
    assert pool.take(10.0) is a and len(pool) == 0 and pool.wake_at() is None


# -- transfers cut ------------------------------------------------------------------------

async def test_a_trickled_download_is_cut_at_its_deadline_though_it_beats_the_idle_timer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    size = 64 * 1024
    src, digest = _blob(tmp_path, size)
    sender, receiver = _pair()
    dest = tmp_path / "got.bin"

    async def trickle() -> None:
        for offset in range(size):  # one byte every 20 s: the 30 s idle timer never fires
            await sender.send(wire.Chunk(name="blob.bin", offset=offset,
                                         data=src.read_bytes()[offset:offset + 1],
                                         final=offset == size - 1))
            await trio.sleep(20)

    started = trio.current_time()
    with trio.fail_after(3 * transfer_seconds(size)):  # fail, not hang, where nothing cuts
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with pytest.raises(TransferTimeout, match=r"^blob.bin from peer 12D3KooWPeerOnTh "
                               r"did not complete within 30 s \(a transfer must average "
                               r"128 KiB/s after a 30 s grace\)$"):
                await receive_file(receiver, name="blob.bin", size=size, sha256=digest,
                                   dest=dest)
            nursery.cancel_scope.cancel()
    assert trio.current_time() - started == pytest.approx(transfer_seconds(size))
    assert not dest.exists()  # nothing half-written stays behind
    assert issubclass(TransferTimeout, TransferFailed) and issubclass(TransferTimeout,
                                                                      PeerTimeout)


async def test_a_transfer_at_a_fair_rate_completes(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    size = 3 * wire.CHUNK_SIZE + 17  # the canary: slow but above the rate, it passes
    src, digest = _blob(tmp_path, size)
    sender, receiver = _pair()
    dest = tmp_path / "got.bin"

    async def paced() -> None:
        data = src.read_bytes()
        for i, offset in enumerate(range(0, size, wire.CHUNK_SIZE)):
            await trio.sleep(12 if i else 0)  # 85 KiB/s: below the rate, inside the grace
            piece = data[offset:offset + wire.CHUNK_SIZE]
            await sender.send(wire.Chunk(name="blob.bin", offset=offset, data=piece,
                                         final=offset + len(piece) >= size))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(paced)
        await receive_file(receiver, name="blob.bin", size=size, sha256=digest, dest=dest)
    assert dest.read_bytes() == src.read_bytes()


async def test_a_silent_sender_is_cut_by_the_idle_timer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    _, receiver = _pair()
    started = trio.current_time()
    with pytest.raises(TransferTimeout, match=r"^no data for big.bin from 12D3KooWPeerOnTh "
                       r"within 30 s$"):
        await receive_file(receiver, name="big.bin", size=10**9, sha256="0" * 64,
                           dest=tmp_path / "x")
    assert trio.current_time() - started == pytest.approx(STALL_S)


async def test_sending_to_a_peer_that_stops_reading_is_cut_by_the_stall_timer(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    src, _ = _blob(tmp_path, 4 * wire.CHUNK_SIZE)
    sender, receiver = _pair(lockstep=True)  # a write waits until the other side reads

    async def read_one_chunk_then_freeze() -> None:
        await receiver.receive()
        await trio.sleep_forever()

    started = trio.current_time()
    with trio.fail_after(3 * STALL_S):  # fail, not hang, where nothing cuts
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_one_chunk_then_freeze)
            with pytest.raises(TransferTimeout, match=r"^peer 12D3KooWPeerOnTh took no data "
                               r"of blob.bin for 30 s \(at byte 1048576\)$"):
                await send_file(sender, "blob.bin", src)
            nursery.cancel_scope.cancel()
    assert trio.current_time() - started == pytest.approx(STALL_S)


# -- retry on busy ------------------------------------------------------------------------

class _Ad:
    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id


class _Scripted(Placer):
    """A Placer whose attempts answer from a script instead of a network: the retry
    policy under a virtual clock (the real exchange is covered in tests/e2e)."""

    answers: dict[str, list[BaseException | str]]
    asked: list[tuple[str, float]]

    async def _try(self, ad: Any, request: Any, out_dir: Path) -> Any:
        self.asked.append((ad.peer_id, trio.current_time()))
        answer = self.answers[ad.peer_id].pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _placer(answers: dict[str, list[BaseException | str]]) -> tuple[_Scripted, list[Any]]:
    seen: list[Any] = []
    p = _Scripted(host=None, peers=None, rng=random.Random(3), emit=seen.append)  # type: ignore[arg-type]
    p.answers, p.asked = answers, []
    return p, seen


def _busy(after: float | None = 5.0) -> PeerRefused:
    return PeerRefused("busy", "all slots and the queue are full", after)


async def test_a_busy_provider_is_asked_again_after_retry_after_with_jitter(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    placer, seen = _placer({"A": [_busy(), _busy(), "done"]})
    start = trio.current_time()
    got = await placer.run_one(Pool([(_Ad("A"), None)]), None, tmp_path / "o",  # type: ignore[list-item,arg-type]
                               start + 100)
    assert got == "done" and placer.attempts == []  # waiting is not a failed attempt
    gaps = [b[1] - a[1] for a, b in zip(placer.asked, placer.asked[1:], strict=False)]
    assert all(5.0 <= g <= 5.0 * (1 + BUSY_JITTER) for g in gaps) and gaps[0] != gaps[1]
    retries = [e for e in seen if isinstance(e, events.BusyRetry)]
    assert [(e.provider, e.tries) for e in retries] == [("A", 1), ("A", 2)]
    assert [e.retry_in_s for e in retries] == pytest.approx(gaps, abs=1e-3)


async def test_while_one_is_busy_the_next_candidate_is_tried_at_once(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    placer, _ = _placer({"A": [_busy(20.0)], "B": ["from B"]})
    start = trio.current_time()
    got = await placer.run_one(Pool([(_Ad("A"), None), (_Ad("B"), None)]), None,  # type: ignore[list-item]
                               tmp_path / "o", start + 100)  # type: ignore[arg-type]
    assert got == "from B" and placer.asked == [("A", start), ("B", start)]


async def test_busy_retries_are_bounded_in_number_and_by_the_deadline(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    placer, seen = _placer({"A": [_busy(1.0)] * (BUSY_TRIES + 5)})
    with pytest.raises(PeerRefused, match=r"^provider refused the job \(busy\): all slots"):
        await placer.run_one(Pool([(_Ad("A"), None)]), None, tmp_path / "o",  # type: ignore[list-item,arg-type]
                             trio.current_time() + 1000)
    assert len(placer.asked) == BUSY_TRIES + 1  # then it counts as a failed attempt
    assert len(placer.attempts) == 1 and isinstance(seen[-1], events.Retried)

    placer, _ = _placer({"A": [_busy(30.0)] * 3})
    start = trio.current_time()
    with pytest.raises(PeerRefused, match="busy"):
        await placer.run_one(Pool([(_Ad("A"), None)]), None, tmp_path / "o",  # type: ignore[list-item,arg-type]
                             start + 20)  # a 30 s wait cannot fit a 20 s deadline
    assert placer.asked == [("A", start)] and trio.current_time() == start


async def test_other_refusals_are_not_retried_on_the_same_provider(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    placer, _ = _placer({"A": [PeerRefused("bad_request", "no", 5.0), "never"]})
    with pytest.raises(PeerRefused, match=r"\(bad_request\)"):
        await placer.run_one(Pool([(_Ad("A"), None)]), None, tmp_path / "o",  # type: ignore[list-item,arg-type]
                             trio.current_time() + 100)
    assert len(placer.asked) == 1
