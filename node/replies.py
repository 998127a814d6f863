"""The named error frames a provider answers with; sending them never raises."""

from __future__ import annotations

import logging

from node.errors import PeerTimeout, RemoteError
from node.host import Stream
from node.transfer import TransferFailed
from protocol import FrameTooLarge, ProtocolError, wire

log = logging.getLogger("node.provider")

REFUSAL_OUTCOME = {"busy": "busy", "price": "price"}


async def busy_stream(stream: Stream, why: str) -> None:
    await stream.send(wire.ErrorReply(code="busy", message=why[:1000], retry_after_s=5.0))


def error_code(exc: BaseException) -> wire.ErrorCode:
    if isinstance(exc, FrameTooLarge):
        return "too_large"
    if isinstance(exc, TransferFailed):
        return "transfer_failed"
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, ProtocolError | RemoteError):
        return "bad_request"
    return "internal"


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError | RemoteError):
        return str(exc)[:1000]
    return "the provider failed on this request; it was logged"


async def refuse(stream: Stream, code: wire.ErrorCode, message: str) -> None:
    log.info("refusing job from %s: %s: %s", stream.remote_peer[:16], code, message)
    await try_send(stream, wire.ErrorReply(code=code, message=message[:1000]))


async def try_send(stream: Stream, frame: wire.Frame) -> None:
    try:
        await stream.send(frame, stall_s=5.0)
    except RemoteError:
        pass
