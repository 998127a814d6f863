"""Moving content-addressed files over a Stream in chunks of at most 1 MiB.

Every transfer has two limits, on both sides: no chunk may take longer than `STALL_S`
to move (the idle timer), and the whole transfer must average at least `MIN_RATE_BPS`
after a fixed `TRANSFER_GRACE_S` (`transfer_seconds`), so a peer that trickles a byte
now and then is cut with a `TransferTimeout` instead of holding a slot or a stream. A
`Progress` callback hears (name, bytes held so far) after every chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import trio

from node.errors import PeerTimeout
from node.errors import TransferFailed as TransferFailed
from node.errors import TransferTimeout as TransferTimeout
from node.net.host import Stream
from protocol import wire

CHUNK = wire.CHUNK_SIZE
MIN_RATE_BPS = 128 * 1024
"""The slowest average rate a transfer may have (1 Mbit/s); slower ones are cut."""
TRANSFER_GRACE_S = 30.0
"""Added once to every transfer's deadline: connection warm-up, a slow start, a disk."""
STALL_S = 30.0
"""The longest one chunk may wait to be sent or received (the idle timer)."""

Progress = Callable[[str, int], None]
"""Called with a file's name and the bytes of it moved so far (its offset included)."""


def no_progress(name: str, at: int) -> None:
    """The default Progress."""


class PartialFile(Protocol):
    """Where `receive_into` writes: a download that may resume at `offset` (the
    provider's input cache hands these out; node.provider.cache.PartialFile)."""

    @property
    def size(self) -> int: ...

    @property
    def offset(self) -> int:
        """The bytes held so far; the next write must start here."""
        ...

    def write(self, offset: int, data: bytes) -> None: ...


def transfer_seconds(nbytes: int) -> float:
    """How long moving `nbytes` may take: nbytes / MIN_RATE_BPS + TRANSFER_GRACE_S."""
    return max(0, nbytes) / MIN_RATE_BPS + TRANSFER_GRACE_S


@contextmanager
def transfer_deadline(nbytes: int, what: str) -> Iterator[float]:
    """Bound a whole transfer of `nbytes` (one file or a phase of several) by
    `transfer_seconds`; TransferTimeout when it runs out. Yields the limit in seconds."""
    limit = transfer_seconds(nbytes)
    with trio.move_on_after(limit) as scope:
        yield limit
    if scope.cancelled_caught:
        raise TransferTimeout(f"{what} did not complete within {limit:.0f} s (a transfer must "
                              f"average {MIN_RATE_BPS // 1024} KiB/s after a "
                              f"{TRANSFER_GRACE_S:.0f} s grace)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def iter_chunks(name: str, path: Path, offset: int = 0) -> Iterator[wire.Chunk]:
    size = path.stat().st_size
    if not 0 <= offset <= size:
        raise TransferFailed(f"the peer asked for {name} from byte {offset} of {size}")
    with path.open("rb") as f:
        f.seek(offset)
        while True:
            data = f.read(CHUNK)
            final = offset + len(data) >= size
            yield wire.Chunk(name=name, offset=offset, data=data, final=final)
            offset += len(data)
            if final:
                return


async def send_file(stream: Stream, name: str, path: Path, offset: int = 0, *,
                    stall_s: float = STALL_S, progress: Progress = no_progress) -> None:
    """Send `path` from `offset` on, within `transfer_seconds` of its size; a chunk the
    peer does not take within `stall_s` ends it with TransferTimeout."""
    with transfer_deadline(path.stat().st_size - offset, f"{name} to {_who(stream)}"):
        for chunk in iter_chunks(name, path, offset):
            with trio.move_on_after(stall_s) as scope:
                await stream.send(chunk)
            if scope.cancelled_caught:
                raise TransferTimeout(f"{_who(stream)} took no data of {name} for "
                                      f"{stall_s:.0f} s (at byte {chunk.offset})")
            progress(name, chunk.offset + len(chunk.data))


async def _next_chunk(stream: Stream, name: str, idle_timeout: float) -> wire.Frame:
    try:
        return await stream.receive_within(idle_timeout, f"data for {name}")
    except PeerTimeout as exc:
        raise TransferTimeout(str(exc)) from None


def _who(stream: Stream) -> str:
    return f"peer {stream.remote_peer[:16]}"


async def receive_into(stream: Stream, partial: PartialFile, *, name: str,
                       idle_timeout: float = STALL_S) -> int:
    """Receive one file's chunks from `partial.offset` on, within `transfer_seconds` of
    what is left; returns the bytes received. The digest is checked by `partial.commit()`."""
    with transfer_deadline(partial.size - partial.offset, f"{name} from {_who(stream)}"):
        return await _receive_into(stream, partial, name=name, idle_timeout=idle_timeout)


async def _receive_into(stream: Stream, partial: PartialFile, *, name: str,
                        idle_timeout: float) -> int:
    received = 0
    while True:
        frame = await _next_chunk(stream, name, idle_timeout)
        if isinstance(frame, wire.ErrorReply):
            raise TransferFailed(f"peer aborted the transfer of {name}: {frame.message}")
        chunk = wire.expect(frame, wire.Chunk)
        if chunk.name != name or chunk.offset != partial.offset:
            raise TransferFailed(f"unexpected chunk {chunk.name}@{chunk.offset} "
                                 f"while receiving {name}@{partial.offset}")
        if partial.offset + len(chunk.data) > partial.size:
            raise TransferFailed(f"{name} is longer than its declared {partial.size} bytes")
        await trio.to_thread.run_sync(partial.write, chunk.offset, chunk.data)
        received += len(chunk.data)
        if chunk.final:
            return received


async def receive_file(stream: Stream, *, name: str, size: int, sha256: str, dest: Path,
                       idle_timeout: float = STALL_S, progress: Progress = no_progress) -> None:
    """Receive one file's chunks into `dest` within `transfer_seconds` of its size; its
    size and digest must match exactly."""
    try:
        with transfer_deadline(size, f"{name} from {_who(stream)}"):
            await _receive_file(stream, name=name, size=size, sha256=sha256, dest=dest,
                                idle_timeout=idle_timeout, progress=progress)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


async def _receive_file(stream: Stream, *, name: str, size: int, sha256: str, dest: Path,
                        idle_timeout: float, progress: Progress) -> None:
    h = hashlib.sha256()
    received = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f:
        while True:
            frame = await _next_chunk(stream, name, idle_timeout)
            if isinstance(frame, wire.ErrorReply):
                raise TransferFailed(f"peer aborted the transfer of {name}: {frame.message}")
            chunk = wire.expect(frame, wire.Chunk)
            if chunk.name != name or chunk.offset != received:
                raise TransferFailed(f"unexpected chunk {chunk.name}@{chunk.offset} "
                                     f"while receiving {name}@{received}")
            received += len(chunk.data)
            if received > size:
                raise TransferFailed(f"{name} is longer than its declared {size} bytes")
            h.update(chunk.data)
            f.write(chunk.data)
            progress(name, received)
            if chunk.final:
                break
    if received != size or h.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise TransferFailed(f"{name} does not match its digest; discarded")
