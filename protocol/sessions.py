"""Sessions, sans-I/O: a lease on one provider that serves many calls on one stream.

`SessionSpec` (signed by the requester) says what to build and for how long; its digest
is the session id. Calls and replies are frames of `/offload/session/1.0.0` (wire.py,
exchange.SESSION). Each side keeps a `Calls` book that refuses what the peer may not send
(an unknown or reused call id, more calls in flight than `concurrency`, a streamed item
beyond the reader's credit) and a `Transcript`: a hash chain over every (call, reply),
in reply order, that the provider signs in each `SessionResult` (checkpoints while open,
the final one at the end). The requester's own chain must equal the signed one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import ClassVar, Literal

from protocol.codec import pack
from protocol.errors import InvalidMessage, OutOfOrder
from protocol.limits import MAX_AMOUNT, MAX_COUNT, MAX_TIME_MS
from protocol.messages import (
    InputFile,
    Resources,
    Signable,
    Usage,
    check_method,
    check_peer_id,
    check_sha256,
    check_work_spec,
)
from protocol.schema import field, message

CLASS_FILE = "session.pkl"
"""The input holding the pickled class and the constructor's arguments (only the
session's sandbox unpickles it)."""
HOST_FILE = "session_host.py"
"""The input the provider runs (`python session_host.py`, in the inputs folder): it
builds the object and serves calls over its stdin and stdout (HOST_FRAMES)."""
HOST_FRAMES = """\
Between a provider and the session host in its sandbox, both ways: frames of a 4-byte
big-endian length L (1 .. MAX_VALUE_BYTES + 1024), then L bytes: one kind byte, a body.
provider -> host (stdin; its end means quit):
  C  u32 id, u16 window, u16 n, method (n bytes UTF-8), args (the call's `args` bytes)
  K  u32 id, u16 n                      (n more items of call id may come)
host -> provider (stdout; the host's own prints go to stderr or O frames):
  R  (empty)                            the object is built
  F  value                              the constructor raised (an error value)
  I  u32 id, value                      an item a generator yielded
  E  u32 id, u8 error, value            call id returned (error 0) or raised (error 1)
  O  u8 stream (1 stdout, 2 stderr), text (UTF-8, at most 65536 bytes)
Values are strict msgpack as node/api/values.py writes them."""
MAX_IDLE_S = 3600
MAX_CONCURRENCY = 16
MAX_WINDOW = 64
"""The most streamed items a reader may leave unread (credit) for one call."""
MAX_VALUE_BYTES = 1024 * 1024
"""One call's arguments, or one item or reply value, as bytes."""
SessionStatus = Literal["open", "closed", "idle", "expired", "failed"]
"""open: a checkpoint; closed: the requester closed it; idle: idle timeout; expired:
max duration; failed: the constructor raised, or the sandbox died."""


@message
class SessionSpec(Signable):
    """What to build on which provider, for how long; signed by the requester."""

    type_name: ClassVar[str] = "session_spec"
    signer_field: ClassVar[str] = "requester"

    requester: str = field(max_len=64)
    provider: str = field(max_len=64)
    runtime: str = field(max_len=64)
    inputs: tuple[InputFile, ...] = field(max_len=256)
    """CLASS_FILE, HOST_FILE, then files the constructor's File arguments name."""
    resources: Resources
    """`max_seconds` is the lease's maximum duration."""
    idle_timeout_s: int = field(ge=1, le=MAX_IDLE_S)
    concurrency: int = field(ge=1, le=MAX_CONCURRENCY)
    max_price: int | None = field(ge=0, le=MAX_AMOUNT)
    nonce: bytes = field(max_len=32)
    created_at: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        names = check_work_spec(self.requester, self.provider, self.inputs, self.nonce)
        if names[:2] != [CLASS_FILE, HOST_FILE]:
            raise InvalidMessage(f"the first inputs must be {CLASS_FILE} and {HOST_FILE}")


@message
class SessionResult(Signable):
    """Where a session stands, signed by its provider: a checkpoint (`open`) or its end.
    `job_id` is the session id, named as for jobs so escrows and receipts treat both alike."""

    type_name: ClassVar[str] = "session_result"
    signer_field: ClassVar[str] = "provider"

    job_id: str = field(max_len=64)
    provider: str = field(max_len=64)
    requester: str = field(max_len=64)
    status: SessionStatus
    calls: int = field(ge=0, le=MAX_COUNT)
    transcript: str = field(max_len=64)
    """The head of the chain after `calls` replies (Transcript.head)."""
    usage: Usage
    price_charged: int = field(ge=0, le=MAX_AMOUNT)
    reason: str = field(max_len=1024)
    """Why it ended, for failed (the constructor's exception, say); else ""."""
    at: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")
        check_sha256(self.transcript, "transcript")
        check_peer_id(self.provider, "provider")
        check_peer_id(self.requester, "requester")


def _h(*parts: bytes) -> bytes:
    d = hashlib.sha256()
    for p in parts:
        d.update(len(p).to_bytes(8, "big"))
        d.update(p)
    return d.digest()


class Transcript:
    """The hash chain over a session's calls, in the order their replies came."""

    DOMAIN = b"offload/session-transcript/1"

    def __init__(self, session_id: str) -> None:
        check_sha256(session_id, "session id")
        self._head = _h(self.DOMAIN, bytes.fromhex(session_id))
        self.calls = 0

    @property
    def head(self) -> str:
        return self._head.hex()

    def add(self, call_id: int, method: str, args: bytes, items: bytes, value: bytes,
            error: bool) -> str:
        """One finished call; `items` is the digest of its streamed items (Call.items)."""
        call = _h(pack([call_id, method]), args)
        reply = _h(items, value, b"\x01" if error else b"\x00")
        self._head = _h(self._head, call, reply)
        self.calls += 1
        return self.head


@dataclasses.dataclass(slots=True)
class Call:
    id: int
    method: str
    args: bytes
    credit: int
    """Items the reader will still take before it grants more."""
    items_seen: int = 0
    _items: hashlib._Hash = dataclasses.field(default_factory=hashlib.sha256)

    def item(self, value: bytes) -> None:
        self._items.update(len(value).to_bytes(8, "big"))
        self._items.update(value)
        self.items_seen += 1

    @property
    def items(self) -> bytes:
        return self._items.digest()


class Calls:
    """One side's book of calls in flight and the session's transcript. Every method
    raises OutOfOrder (a remote error: the peer broke the rules) and leaves the book as
    it was."""

    def __init__(self, session_id: str, concurrency: int) -> None:
        self.concurrency = concurrency
        self.open: dict[int, Call] = {}
        self.last_id = 0
        self.transcript = Transcript(session_id)

    def call(self, call_id: int, method: str, args: bytes, window: int) -> Call:
        if call_id <= self.last_id:
            raise OutOfOrder(f"call id {call_id} is not above the last one ({self.last_id})")
        if len(self.open) >= self.concurrency:
            raise OutOfOrder(f"{len(self.open)} calls are in flight already, the session's "
                             f"concurrency is {self.concurrency}")
        check_method(method)
        if len(args) > MAX_VALUE_BYTES:
            raise OutOfOrder(f"call arguments exceed {MAX_VALUE_BYTES} bytes")
        if not 0 <= window <= MAX_WINDOW:
            raise OutOfOrder(f"window {window} is outside 0..{MAX_WINDOW}")
        c = self.open[call_id] = Call(call_id, method, args, window)
        self.last_id = call_id
        return c

    def _get(self, call_id: int) -> Call:
        c = self.open.get(call_id)
        if c is None:
            raise OutOfOrder(f"call {call_id} is not in flight")
        return c

    def grant(self, call_id: int, n: int) -> Call | None:
        """More credit for a call; None for one that already replied (the reader's credit
        and the call's reply may cross on the stream)."""
        if call_id <= self.last_id and call_id not in self.open:
            return None
        c = self._get(call_id)
        if n < 1 or c.credit + n > MAX_WINDOW:
            raise OutOfOrder(f"credit {n} would leave call {call_id} above {MAX_WINDOW} "
                             "unread items")
        c.credit += n
        return c

    def item(self, call_id: int, value: bytes) -> Call:
        c = self._get(call_id)
        if c.credit <= 0:
            raise OutOfOrder(f"an item of call {call_id} beyond the reader's credit")
        if len(value) > MAX_VALUE_BYTES:
            raise OutOfOrder(f"an item exceeds {MAX_VALUE_BYTES} bytes")
        c.credit -= 1
        c.item(value)
        return c

    def reply(self, call_id: int, value: bytes, error: bool) -> str:
        """The call's end: off the book, onto the transcript; the new head."""
        c = self._get(call_id)
        if len(value) > MAX_VALUE_BYTES:
            raise OutOfOrder(f"a reply exceeds {MAX_VALUE_BYTES} bytes")
        del self.open[call_id]
        return self.transcript.add(c.id, c.method, c.args, c.items, value, error)
