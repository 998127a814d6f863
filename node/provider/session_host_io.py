"""The provider's end of protocol.sessions.HOST_FRAMES: frames to and from the session host.

`call_frame` and `credit_frame` build what goes to the host's stdin; `HostReader` reads its
stdout one frame at a time (a length above MAX_HOST_FRAME is refused before any of the body
is read, so memory stays bounded) and returns typed events. Anything malformed raises
`HostBroke`: the host misbehaved, and its session ends failed.
"""

from __future__ import annotations

import dataclasses
import struct

import trio

from node.errors import HostBroke
from protocol.sessions import MAX_VALUE_BYTES

__all__ = ["HostBroke", "HostEvent", "HostReader", "call_frame", "credit_frame", "parse"]

MAX_HOST_FRAME = MAX_VALUE_BYTES + 1024
MAX_HOST_TEXT = 65536
READ_SIZE = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Failed:
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class HostItem:
    id: int
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    id: int
    error: bool
    value: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Printed:
    stream: int
    """1 stdout, 2 stderr."""
    text: str


HostEvent = Ready | Failed | HostItem | Ended | Printed


def _frame(kind: bytes, body: bytes) -> bytes:
    data = kind + body
    if len(data) > MAX_HOST_FRAME:
        raise ValueError(f"a host frame of {len(data)} bytes is above {MAX_HOST_FRAME}")
    return struct.pack(">I", len(data)) + data


def call_frame(call_id: int, window: int, method: str, args: bytes) -> bytes:
    name = method.encode("utf-8")
    return _frame(b"C", struct.pack(">IHH", call_id, window, len(name)) + name + args)


def credit_frame(call_id: int, n: int) -> bytes:
    return _frame(b"K", struct.pack(">IH", call_id, n))


def parse(data: bytes) -> HostEvent:
    """One host frame's kind byte and body as an event; HostBroke if malformed."""
    kind, body = data[:1], data[1:]
    if kind == b"R":
        if body:
            raise HostBroke("the host's ready frame has a body")
        return Ready()
    if kind == b"F":
        return Failed(body)
    if kind == b"I":
        if len(body) < 4:
            raise HostBroke("the host sent a short item frame")
        (call_id,) = struct.unpack(">I", body[:4])
        return HostItem(call_id, body[4:])
    if kind == b"E":
        if len(body) < 5 or body[4] not in (0, 1):
            raise HostBroke("the host sent a malformed reply frame")
        (call_id,) = struct.unpack(">I", body[:4])
        return Ended(call_id, body[4] == 1, body[5:])
    if kind == b"O":
        if len(body) < 1 or body[0] not in (1, 2) or len(body) - 1 > MAX_HOST_TEXT:
            raise HostBroke("the host sent a malformed output frame")
        return Printed(body[0], body[1:].decode("utf-8", "replace"))
    raise HostBroke(f"the host sent an unknown frame kind {kind!r}")


class HostReader:
    """The host's stdout, one event at a time; None once it ends cleanly between frames."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self, n: int) -> bool:
        """At least `n` bytes buffered (False: the stream ended first)."""
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(max(READ_SIZE, n - len(self._buf)))
            if not chunk:
                return False
            self._buf += chunk
        return True

    async def next(self) -> HostEvent | None:
        if not await self._fill(4):
            if self._buf:
                raise HostBroke("the host's output ended inside a frame")
            return None
        (length,) = struct.unpack(">I", self._buf[:4])
        if not 1 <= length <= MAX_HOST_FRAME:
            raise HostBroke(f"the host sent a frame of {length} bytes (1 .. "
                            f"{MAX_HOST_FRAME} allowed)")
        if not await self._fill(4 + length):
            raise HostBroke("the host's output ended inside a frame")
        data = bytes(self._buf[4:4 + length])
        del self._buf[:4 + length]
        return parse(data)
