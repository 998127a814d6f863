"""Errors of protocol/: local (you built something invalid) vs remote (a peer sent it).

    ProtocolError                 root of every error raised by protocol/
        LocalProtocolError        this node misused the protocol API
            SendOutOfOrder        this node's exchange table forbids sending that frame now
            InvalidMessage        a message built with a field that breaks its rules
                ValueOutOfRange   a number outside its field's declared range
        RemoteProtocolError       a peer's bytes failed validation; drop them, keep running
            DecodeError           not a well-formed msgpack document of the expected shape
                NonCanonical      decodes, but is not the canonical encoding
            FrameTooLarge         a frame above the reader's cap
            UnsupportedVersion    a frame `v` this node does not speak
            WrongMessageType      a frame `type` not expected here
                OutOfOrder        the peer's frame is not allowed by the exchange table now
            UnknownField          a field its type does not define
            MissingField          a required field is absent
            FieldTypeError        a field of the wrong type
            MalformedMessage      the right type, but a value the message forbids
                OutOfRange        a peer's number outside its field's range
            BadSignature          the signature does not verify for the named signer
            Expired               outside its validity window
            Replayed              seen before; a replay is refused

node/ translates what reaches its boundary (node.errors.translate): remote errors become
ProtocolViolation, local ones InvalidInput.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every error raised by protocol/."""


class LocalProtocolError(ProtocolError):
    """This node misused the protocol API, e.g. built a message with an invalid field."""


class SendOutOfOrder(LocalProtocolError):
    """This node tried to send a frame its exchange table does not allow in the current
    state (protocol/exchange.py): a bug of ours, never the peer's."""


class InvalidMessage(LocalProtocolError, ValueError):
    """A message was constructed with a field that breaks its rules."""


class ValueOutOfRange(InvalidMessage):
    """A number is outside the range its field declares (protocol/limits.py)."""


class RemoteProtocolError(ProtocolError):
    """Bytes from a peer failed validation; drop them and keep running."""


class DecodeError(RemoteProtocolError):
    """The bytes are not a well-formed msgpack document of the expected shape."""


class NonCanonical(DecodeError):
    """The bytes decode, but are not the canonical encoding of their value."""


class FrameTooLarge(RemoteProtocolError):
    """A frame announced or carried more bytes than the reader's cap."""


class UnsupportedVersion(RemoteProtocolError):
    """The frame's `v` is not one this node speaks."""


class WrongMessageType(RemoteProtocolError):
    """The frame's `type` is not the one expected here."""


class OutOfOrder(WrongMessageType):
    """The peer sent a frame its exchange table does not allow in the current state."""


class UnknownField(RemoteProtocolError):
    """The message carries a field its type does not define."""


class MissingField(RemoteProtocolError):
    """The message lacks a field its type requires."""


class FieldTypeError(RemoteProtocolError):
    """A field has the wrong type."""


class MalformedMessage(RemoteProtocolError):
    """A field has the right type but a value its message type forbids."""


class OutOfRange(MalformedMessage):
    """A peer sent a number outside its field's range (e.g. a charge above MAX_AMOUNT)."""


class BadSignature(RemoteProtocolError):
    """The signature does not verify for the signer named in the message."""


class Expired(RemoteProtocolError):
    """The message is outside its validity window."""


class Replayed(RemoteProtocolError):
    """The message was seen before; a replay is refused."""
