"""Live job output, provider side: chunks from the runner to `Output` frames, capped."""

from __future__ import annotations

import codecs

import trio

from node.net.host import Stream
from protocol import wire

LIVE_BACKLOG = 256
LIVE_CAP = 1 << 20
"""Live output bytes streamed per job; the signed result carries the capped whole."""
STREAMS = ("stdout", "stderr")


def pieces(text: str) -> list[str]:
    """`text` in parts that fit an `Output` frame (a quarter of its cap in characters,
    so any UTF-8 stays within it)."""
    n = wire.MAX_OUTPUT_TEXT // 4
    return [text[i:i + n] for i in range(0, len(text), n)]


def offer(send: trio.MemorySendChannel[tuple[str, bytes]], name: str, data: bytes) -> None:
    try:
        send.send_nowait((name, data))
    except (trio.WouldBlock, trio.ClosedResourceError):
        pass  # a requester that reads slowly misses live lines; the result has them all


async def forward_output(stream: Stream,
                         recv: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
    """Live output to the requester, in frames of at most MAX_OUTPUT_TEXT, LIVE_CAP in all."""
    decoders = {n: codecs.getincrementaldecoder("utf-8")("replace") for n in STREAMS}
    sent = 0
    async with recv:
        async for name, data in recv:
            if sent >= LIVE_CAP:
                continue
            data = data[: LIVE_CAP - sent]
            sent += len(data)
            for part in pieces(decoders[name].decode(data)):
                await stream.send(wire.Output(stream=name,  # type: ignore[arg-type]
                                              text=part))
