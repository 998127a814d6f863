"""Length-prefixed frames (4-byte big-endian length, then the body), sans-I/O."""

from __future__ import annotations

import struct

from protocol.errors import FrameTooLarge, InvalidMessage

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 2 * 1024 * 1024


def encode_frame(body: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(body) > max_size:
        raise InvalidMessage(f"frame of {len(body)} bytes exceeds the cap of {max_size}")
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Feed bytes as they arrive; take complete frame bodies out. Oversize frames raise."""

    def __init__(self, *, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_size:
                raise FrameTooLarge(f"frame announces {length} bytes, cap is {self.max_size}")

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None until more bytes arrive."""
        if len(self._buffer) < HEADER.size:
            return None
        (length,) = HEADER.unpack_from(self._buffer)
        if length > self.max_size:
            raise FrameTooLarge(f"frame announces {length} bytes, cap is {self.max_size}")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[HEADER.size:end])
        del self._buffer[:end]
        return body

    @property
    def buffered(self) -> int:
        return len(self._buffer)
