"""Sans-I/O protocol of offload: bytes in, typed messages out. Imports neither trio nor libp2p.

errors.py     one error root; local (misuse) vs remote (a peer's bad bytes)
codec.py      the one canonical msgpack codec, strict and size-capped
identity.py   Ed25519 keys, libp2p-compatible peer ids, signature checks
limits.py     the range of every integer on the wire (MAX_AMOUNT, times, sizes, counters)
schema.py     frozen message dataclasses that check their fields and ranges; strict mapping
messages.py   CapacityAd, JobSpec, JobResult and their parts
signing.py    signed envelopes with a domain tag per message type; freshness checks
receipts.py   Receipt and Cheque (payment evidence) and check_receipt for gossip
replay.py     bounded replay guard
framing.py    length-prefixed frames with a size cap
wire.py       frames of the job, settle and session exchange streams
exchange.py   the job, settle and session exchanges as transition tables, one per role
sessions.py   SessionSpec, SessionResult, the calls book and transcript hash chain
lanecert.py   libp2p TLS certificates bound to peer ids, for the fast lane
SPEC.md       the wire spec another libp2p implementation follows
"""

from __future__ import annotations

from protocol.errors import (
    BadSignature,
    DecodeError,
    Expired,
    FieldTypeError,
    FrameTooLarge,
    InvalidMessage,
    LocalProtocolError,
    MalformedMessage,
    MissingField,
    NonCanonical,
    OutOfRange,
    ProtocolError,
    RemoteProtocolError,
    Replayed,
    UnknownField,
    UnsupportedVersion,
    ValueOutOfRange,
    WrongMessageType,
)
from protocol.identity import Identity, sha256_hex
from protocol.messages import (
    CapacityAd,
    Device,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Quote,
    Resources,
    Runtime,
    SandboxProfile,
    Usage,
)
from protocol.receipts import Cheque, Receipt, check_receipt
from protocol.signing import Signed, check_ad_fresh, check_spec_fresh, open_signed, sign

__all__ = [
    "BadSignature", "CapacityAd", "Cheque", "DecodeError", "Device", "Expired",
    "FieldTypeError", "FrameTooLarge", "Identity", "InputFile", "InvalidMessage",
    "JobResult", "JobSpec", "LocalProtocolError", "MalformedMessage", "MissingField",
    "NonCanonical", "OutOfRange", "OutputFile", "Price", "ProtocolError", "Quote",
    "Receipt", "RemoteProtocolError", "Replayed", "Resources", "Runtime", "SandboxProfile",
    "Signed", "UnknownField", "UnsupportedVersion", "Usage", "ValueOutOfRange",
    "WrongMessageType", "check_ad_fresh", "check_receipt", "check_spec_fresh",
    "open_signed", "sha256_hex", "sign",
]
