"""The named error frames a provider answers with; sending them never raises."""

from __future__ import annotations

import logging

from node.errors import RemoteError
from node.net.host import Stream
from node.net.limits import kind_of
from node.net.transfer import TransferFailed
from node.provider.admission import RETRY_AFTER_S
from protocol import ProtocolError, wire
from protocol.errors import SendOutOfOrder

log = logging.getLogger("node.provider.daemon")

REFUSAL_OUTCOME = {"busy": "busy", "price": "price"}


async def busy_stream(stream: Stream, why: str) -> None:
    await stream.send(wire.ErrorReply(code="busy", message=why[:1000],
                                      retry_after_s=RETRY_AFTER_S))


CODE_OF_KIND: dict[str, wire.ErrorCode] = {
    "too_large": "too_large", "protocol": "bad_request", "timeout": "timeout",
    "gone": "bad_request", "remote": "bad_request", "limit": "busy", "unexpected": "internal"}


def error_code(exc: BaseException) -> wire.ErrorCode:
    """The frame code for a failure, from the same classification that counts it."""
    if isinstance(exc, TransferFailed):  # a TransferTimeout too: the transfer is what failed
        return "transfer_failed"
    return CODE_OF_KIND[kind_of(exc)]


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError | RemoteError):
        return str(exc)[:1000]
    return "the provider failed on this request; it was logged"


async def refuse(stream: Stream, code: wire.ErrorCode, message: str) -> None:
    log.info("refusing job from %s: %s: %s", stream.remote_peer[:16], code, message)
    await try_send(stream, wire.ErrorReply(code=code, message=message[:1000]))


async def try_send(stream: Stream, frame: wire.Frame) -> None:
    """Send `frame` if the peer still takes it and the exchange is still open."""
    try:
        await stream.send(frame, stall_s=5.0)
    except (RemoteError, SendOutOfOrder):  # gone, or the exchange already ended
        pass
