"""Errors of node/: local (fix your command or config) vs remote (a peer failed or misbehaved)."""

from __future__ import annotations


class NodeError(Exception):
    """Root of every error raised by node/."""


class UserError(NodeError):
    """The user asked for something impossible; the message says what to do instead."""


class RemoteError(NodeError):
    """A peer failed, vanished or misbehaved."""


class PeerGone(RemoteError):
    """The stream or connection to a peer closed before the exchange finished."""


class PeerTimeout(RemoteError):
    """A peer did not answer within its deadline."""


class PeerRefused(RemoteError):
    """The peer answered with a named error frame."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"provider refused the job ({code}): {message}")
        self.code = code
        self.retry_after_s = retry_after_s


class PriceRefused(RemoteError):
    """A quote is above the requester's caps; nothing ran and nothing was charged."""


class NoProviders(RemoteError):
    """Discovery found no provider whose ad verifies and matches."""


class ResultRejected(RemoteError):
    """A result failed signature or digest verification; nothing from it was used."""


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one real error inside nested task groups, if there is exactly one."""
    import trio

    real = [e for e in leaves(group) if not isinstance(e, trio.Cancelled)]
    return real[0] if len(real) == 1 else None
