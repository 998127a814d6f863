"""Files over a memory host's stream: chunking, resuming from a prefix, and every way a
sender can get it wrong (digest, length, order, an abort) refused by name."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from node.net.host import Stream
from node.net.memory import stream_pair
from node.net.transfer import (
    CHUNK,
    TransferFailed,
    file_sha256,
    iter_chunks,
    receive_file,
    receive_into,
    send_file,
)
from protocol import wire

PROTO = "/test/transfer/1.0.0"


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Stream, Stream]]:
    """(sender, receiver): two ends of one stream between two memory hosts."""
    async with stream_pair(PROTO) as (_, sender, _, receiver):
        yield sender, receiver


def blob(tmp_path: Path, size: int, name: str = "blob.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(size).randbytes(size))
    return path


class Partial:
    """A resumable download held in memory (the PartialFile seam of transfer.py)."""

    def __init__(self, size: int, prefix: bytes = b"") -> None:
        self.size, self.data = size, bytearray(prefix)

    @property
    def offset(self) -> int:
        return len(self.data)

    def write(self, offset: int, data: bytes) -> None:
        assert offset == self.offset
        self.data += data


def test_files_are_cut_in_chunks_of_at_most_one_mib_the_last_marked_final(
        tmp_path: Path) -> None:
    path = blob(tmp_path, 2 * CHUNK + 5)
    chunks = list(iter_chunks("blob.bin", path))
    assert [(c.offset, len(c.data), c.final) for c in chunks] == [
        (0, CHUNK, False), (CHUNK, CHUNK, False), (2 * CHUNK, 5, True)]
    assert [c.offset for c in iter_chunks("blob.bin", path, CHUNK + 1)] == [CHUNK + 1,
                                                                          2 * CHUNK + 1]
    empty = blob(tmp_path, 0, "empty")
    assert [(c.data, c.final) for c in iter_chunks("empty", empty)] == [(b"", True)]
    with pytest.raises(TransferFailed, match=r"^the peer asked for blob.bin from byte "
                       rf"{2 * CHUNK + 6} of {2 * CHUNK + 5}$"):
        list(iter_chunks("blob.bin", path, 2 * CHUNK + 6))


async def test_a_file_crosses_in_chunks_and_matches_its_digest(tmp_path: Path) -> None:
    src = blob(tmp_path, 3 * CHUNK + 17)
    async with pair() as (sender, receiver), trio.open_nursery() as nursery:
        nursery.start_soon(send_file, sender, "blob.bin", src)
        await receive_file(receiver, name="blob.bin", size=src.stat().st_size,
                           sha256=file_sha256(src), dest=tmp_path / "got" / "blob.bin")
    assert (tmp_path / "got" / "blob.bin").read_bytes() == src.read_bytes()


async def test_a_download_resumes_from_the_prefix_it_holds(tmp_path: Path) -> None:
    src = blob(tmp_path, 2 * CHUNK + 100)
    data = src.read_bytes()
    partial = Partial(len(data), prefix=data[:CHUNK + 3])
    async with pair() as (sender, receiver), trio.open_nursery() as nursery:
        nursery.start_soon(send_file, sender, "blob.bin", src, partial.offset)
        got = await receive_into(receiver, partial, name="blob.bin")
    assert got == len(data) - (CHUNK + 3) and bytes(partial.data) == data


async def test_a_file_that_does_not_match_its_digest_is_refused_and_discarded(
        tmp_path: Path) -> None:
    src = blob(tmp_path, CHUNK + 1)
    dest = tmp_path / "got.bin"
    async with pair() as (sender, receiver), trio.open_nursery() as nursery:
        nursery.start_soon(send_file, sender, "blob.bin", src)
        with pytest.raises(TransferFailed, match=r"^blob.bin does not match its digest; "
                           r"discarded$"):
            await receive_file(receiver, name="blob.bin", size=src.stat().st_size,
                               sha256=hashlib.sha256(b"other").hexdigest(), dest=dest)
    assert not dest.exists()


@pytest.mark.parametrize(("frames", "error"), [
    ([wire.Chunk(name="blob.bin", offset=0, data=b"x" * 11, final=True)],
     r"^blob.bin is longer than its declared 10 bytes$"),
    ([wire.Chunk(name="blob.bin", offset=4, data=b"x", final=True)],
     r"^unexpected chunk blob.bin@4 while receiving blob.bin@0$"),
    ([wire.Chunk(name="other.bin", offset=0, data=b"x", final=True)],
     r"^unexpected chunk other.bin@0 while receiving blob.bin@0$"),
    ([wire.Chunk(name="blob.bin", offset=0, data=b"x" * 4, final=False),
      wire.ErrorReply(code="internal", message="disk gone")],
     r"^peer aborted the transfer of blob.bin: disk gone$"),
    ([wire.Chunk(name="blob.bin", offset=0, data=b"x" * 4, final=True)],
     r"^blob.bin does not match its digest; discarded$"),
])
async def test_what_a_sender_gets_wrong_is_refused_by_name(
        tmp_path: Path, frames: list[wire.Frame], error: str) -> None:
    dest = tmp_path / "got.bin"
    async with pair() as (sender, receiver):
        for f in frames:
            await sender.send(f)
        with pytest.raises(TransferFailed, match=error):
            await receive_file(receiver, name="blob.bin", size=10,
                               sha256=hashlib.sha256(b"x" * 10).hexdigest(), dest=dest)
    assert not dest.exists()


async def test_a_resumed_download_is_capped_at_its_declared_size(tmp_path: Path) -> None:
    partial = Partial(6, prefix=b"abcd")
    async with pair() as (sender, receiver):
        await sender.send(wire.Chunk(name="blob.bin", offset=4, data=b"efg", final=True))
        with pytest.raises(TransferFailed, match=r"^blob.bin is longer than its declared 6 "
                           r"bytes$"):
            await receive_into(receiver, partial, name="blob.bin")
        await sender.send(wire.Chunk(name="blob.bin", offset=4, data=b"ef", final=True))
        assert await receive_into(receiver, partial, name="blob.bin") == 2  # the canary
    assert bytes(partial.data) == b"abcdef"
