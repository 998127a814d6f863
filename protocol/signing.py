"""Signed envelopes: `domain tag || canonical msgpack(body)`, signature kept beside the body."""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, TypeVar

from protocol.codec import pack, unpack
from protocol.errors import (
    DecodeError,
    Expired,
    FieldTypeError,
    InvalidMessage,
    MissingField,
    UnknownField,
    UnsupportedVersion,
    WrongMessageType,
)
from protocol.identity import Identity, sha256_hex, verify
from protocol.messages import CapacityAd, JobSpec, Signable

VERSION = 1
MAX_SIGNED_SIZE = 256 * 1024
_ENVELOPE_KEYS = {"v", "type", "body", "sig"}

S = TypeVar("S", bound=Signable)


@dataclasses.dataclass(frozen=True, slots=True)
class Signed(Generic[S]):
    """A verified message with its signature and the exact bytes that carried it."""

    message: S
    signature: bytes
    raw: bytes
    digest: str
    """sha256 of what was signed (domain tag and body); for a JobSpec, the job id.

    It does not cover the signature, so a second valid signature over the same spec
    cannot mint a second job id."""


def signing_bytes(message: Signable) -> bytes:
    return message.domain() + pack(message.to_wire())


def sign(message: S, identity: Identity) -> Signed[S]:
    if message.signer() != identity.peer_id:
        raise InvalidMessage(
            f"{type(message).__name__}.{message.signer_field} must be the signing identity"
        )
    signed_bytes = signing_bytes(message)
    signature = identity.sign(signed_bytes)
    raw = pack({"v": VERSION, "type": message.type_name, "body": message.to_wire(),
                "sig": signature})
    if len(raw) > MAX_SIGNED_SIZE:
        raise InvalidMessage(f"signed {message.type_name} is {len(raw)} bytes, over the "
                             f"{MAX_SIGNED_SIZE}-byte cap; send less")
    return Signed(message=message, signature=signature, raw=raw,
                  digest=sha256_hex(signed_bytes))


def envelope_fields(data: bytes, *, max_size: int = MAX_SIGNED_SIZE) -> dict[str, Any]:
    doc = unpack(data, max_size=max_size)
    if not isinstance(doc, dict):
        raise DecodeError("a signed envelope must be a map")
    unknown = set(doc) - _ENVELOPE_KEYS
    if unknown:
        raise UnknownField(f"envelope has unknown field {sorted(map(str, unknown))[0]!r}")
    missing = _ENVELOPE_KEYS - set(doc)
    if missing:
        raise MissingField(f"envelope lacks field {sorted(missing)[0]!r}")
    if not is_version(doc["v"]):
        raise UnsupportedVersion(f"envelope version {doc['v']!r} is not {VERSION}")
    if not isinstance(doc["sig"], bytes) or len(doc["sig"]) != 64:
        raise FieldTypeError("sig must be 64 bytes")
    return doc


def is_version(value: object) -> bool:
    """Exactly the integer VERSION: `True` and `1.0` compare equal to 1 but are other bytes."""
    return type(value) is int and value == VERSION


def open_signed(data: bytes, cls: type[S], *, max_size: int = MAX_SIGNED_SIZE) -> Signed[S]:
    """Decode and verify an envelope of type `cls`; raises a RemoteProtocolError on any flaw."""
    doc = envelope_fields(data, max_size=max_size)
    if doc["type"] != cls.type_name:
        raise WrongMessageType(f"expected {cls.type_name}, got {doc['type']!r}")
    message = cls.from_wire(doc["body"])
    signed_bytes = signing_bytes(message)
    verify(message.signer(), signed_bytes, doc["sig"])
    return Signed(message=message, signature=doc["sig"], raw=data,
                  digest=sha256_hex(signed_bytes))


def check_ad_fresh(ad: CapacityAd, *, now_ms: int, max_ahead_ms: int = 10 * 60 * 1000) -> None:
    if ad.expires <= now_ms:
        raise Expired(f"ad of {ad.peer_id} expired {now_ms - ad.expires} ms ago")
    if ad.expires > now_ms + max_ahead_ms:
        raise Expired(f"ad of {ad.peer_id} claims a lifetime beyond {max_ahead_ms} ms")


def check_spec_fresh(spec: JobSpec, *, now_ms: int, skew_ms: int = 5 * 60 * 1000) -> None:
    if abs(spec.created_at - now_ms) > skew_ms:
        raise Expired("job spec was created outside the accepted clock window")
