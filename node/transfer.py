"""Moving content-addressed files over a Stream in chunks of at most 1 MiB."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import trio

from node.cache import PartialFile
from node.errors import RemoteError
from node.host import Stream
from protocol import wire

CHUNK = wire.CHUNK_SIZE


class TransferFailed(RemoteError):
    """A file arrived out of order, too long, or with the wrong digest."""


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


async def send_file(stream: Stream, name: str, path: Path, offset: int = 0) -> None:
    for chunk in iter_chunks(name, path, offset):
        await stream.send(chunk)


async def receive_into(stream: Stream, partial: PartialFile, *, name: str,
                       idle_timeout: float) -> int:
    """Receive one file's chunks from `partial.offset` on; returns the bytes received.
    The digest is checked by `partial.commit()`."""
    received = 0
    while True:
        frame = await stream.receive_within(idle_timeout, f"data for {name}")
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
                       idle_timeout: float) -> None:
    """Receive one file's chunks into `dest`; its size and digest must match exactly."""
    h = hashlib.sha256()
    received = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as f:
        while True:
            frame = await stream.receive_within(idle_timeout, f"data for {name}")
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
            if chunk.final:
                break
    if received != size or h.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise TransferFailed(f"{name} does not match its digest; discarded")
