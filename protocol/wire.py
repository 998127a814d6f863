"""Frames of the `/offload/job/1.0.0`, `/offload/settle/1.0.0` and `/offload/session/1.0.0`
exchanges: every frame is `{v, type, body}`."""

from __future__ import annotations

from typing import ClassVar, Literal, TypeVar

from protocol.codec import pack, unpack
from protocol.errors import (
    DecodeError,
    InvalidMessage,
    MissingField,
    UnknownField,
    UnsupportedVersion,
    WrongMessageType,
)
from protocol.framing import DEFAULT_MAX_FRAME, encode_frame
from protocol.limits import MAX_COUNT, MAX_FILE_SIZE, MAX_JOB_SECONDS
from protocol.messages import check_method, check_rel_path, check_sha256
from protocol.schema import Message, field, message
from protocol.signing import MAX_SIGNED_SIZE, VERSION, is_version

JOB_PROTOCOL = "/offload/job/1.0.0"
SETTLE_PROTOCOL = "/offload/settle/1.0.0"
SESSION_PROTOCOL = "/offload/session/1.0.0"
MAX_VALUE = 1024 * 1024
"""A session call's arguments, or one item or reply value (protocol.sessions)."""
MAX_SESSION_WINDOW = 64
MAX_CALL_ID = 2**31 - 1
MAX_OUTPUT_TEXT = 64 * 1024
CHUNK_SIZE = 1024 * 1024
LANE_MIN_BYTES = 4 * 1024 * 1024
"""A phase (the inputs left to send, or all outputs) of at least this many bytes gets a
`lane` offer from its receiver; smaller ones move as chunks on the stream."""
MAX_LANE_CERT = 4096
MAX_RETRY_AFTER_S = float(MAX_JOB_SECONDS)
MAX_KEEP_S = 30 * 24 * 3600
"""The longest a provider may say it keeps a detached job's result."""
"""The longest back-off a `busy` may ask for; a requester waits at most its own deadline."""

ErrorCode = Literal[
    "bad_request", "bad_signature", "expired", "replayed", "wrong_provider",
    "busy", "no_sandbox", "too_large", "transfer_failed", "internal", "cancelled", "price",
    "draining", "payment", "timeout",
]


class Frame(Message):
    __slots__ = ()
    type_name: ClassVar[str]


@message
class SubmitJob(Frame):
    """Requester -> provider: the signed JobSpec envelope, byte for byte."""

    type_name: ClassVar[str] = "submit"
    spec: bytes = field(max_len=MAX_SIGNED_SIZE)


@message
class QuoteOffer(Frame):
    """Provider -> requester: the signed Quote; a slot is held until it expires."""

    type_name: ClassVar[str] = "quote"
    quote: bytes = field(max_len=MAX_SIGNED_SIZE)


@message
class QuoteAccept(Frame):
    """Requester -> provider: the quote is accepted; send what you need."""

    type_name: ClassVar[str] = "quote_accept"
    job_id: str = field(max_len=64)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class Queued(Frame):
    """Provider -> requester: admitted, waiting for a slot (position in the queue)."""

    type_name: ClassVar[str] = "queued"
    position: int = field(ge=0, le=MAX_COUNT)


@message
class Accepted(Frame):
    """Provider -> requester: send these input digests, in this order."""

    type_name: ClassVar[str] = "accepted"
    job_id: str = field(max_len=64)
    need: tuple[str, ...] = field(max_len=256)
    resume: dict[str, int] = field(max_len=256, ge=0, le=MAX_FILE_SIZE)
    """Byte offsets already held of some needed files: send only from there."""

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")
        for d in self.need:
            check_sha256(d, "needed digest")
        for d in self.resume:
            if d not in self.need:
                raise InvalidMessage("resume offsets must be for needed digests")


@message
class Chunk(Frame):
    """A piece of a content-addressed file; `final` marks its last piece."""

    type_name: ClassVar[str] = "chunk"
    name: str = field(max_len=1024)
    offset: int = field(ge=0, le=MAX_FILE_SIZE)
    data: bytes = field(max_len=CHUNK_SIZE)
    final: bool

    def validate(self) -> None:
        check_rel_path(self.name, "chunk name")


@message
class Lane(Frame):
    """Either side, before a phase of at least LANE_MIN_BYTES: the receiver's offer of a
    TLS 1.3 lane on `port` of its stream IP (port 0 and nothing else: no lane), then the
    sender's answer before it dials (port 0, no token, its own `cert`). `cert` is a libp2p
    TLS certificate (DER) bound to the sender's peer id; `token` is a one-time secret."""

    type_name: ClassVar[str] = "lane"
    port: int = field(ge=0, le=65535)
    token: bytes = field(max_len=32)
    cert: bytes = field(max_len=MAX_LANE_CERT)

    def validate(self) -> None:
        if self.port and (len(self.token) != 32 or not self.cert):
            raise InvalidMessage("a lane offer needs a 32-byte token and a certificate")


@message
class Running(Frame):
    """Provider -> requester heartbeat while the job runs."""

    type_name: ClassVar[str] = "running"
    elapsed_s: float


@message
class ResultReady(Frame):
    """Provider -> requester: the signed JobResult envelope; output chunks follow."""

    type_name: ClassVar[str] = "result"
    result: bytes = field(max_len=MAX_SIGNED_SIZE)


@message
class ErrorReply(Frame):
    """Either side: a named error, then the stream closes."""

    type_name: ClassVar[str] = "error"
    code: ErrorCode
    message: str = field(max_len=1024)
    retry_after_s: float | None = field(ge=0.0, le=MAX_RETRY_AFTER_S, default=None)


@message
class Output(Frame):
    """Provider -> requester while the job runs: new stdout or stderr text (capped)."""

    type_name: ClassVar[str] = "output"
    stream: Literal["stdout", "stderr"]
    text: str = field(max_len=MAX_OUTPUT_TEXT)


@message
class Settle(Frame):
    """Requester -> provider on `/offload/settle/1.0.0`: the signed Receipt of a job and,
    when it released a payment, the cumulative Cheque (empty otherwise)."""

    type_name: ClassVar[str] = "settle"
    receipt: bytes = field(max_len=4096)
    cheque: bytes = field(max_len=4096)


@message
class SettleAck(Frame):
    """Provider -> requester: receipt and cheque verified and stored."""

    type_name: ClassVar[str] = "settle_ack"
    job_id: str = field(max_len=64)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class ResultQuery(Frame):
    """Requester -> provider on `/offload/settle/1.0.0`: the signed result of this job,
    please (the requester lost it, e.g. its process died). Answered by a `result` frame
    if the provider still holds one, else by an error frame."""

    type_name: ClassVar[str] = "result_query"
    job_id: str = field(max_len=64)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class FetchOutputs(Frame):
    """Requester -> provider: on the job stream in `outputs`, "keep them, I fetch them on a
    new stream" (a relayed job stream, outputs too big for the relay, a direct connection
    now open); then on `/offload/settle/1.0.0`, over that connection, "send them". The
    outputs follow as in the job exchange, or an error frame if none are held for the
    sender."""

    type_name: ClassVar[str] = "fetch_outputs"
    job_id: str = field(max_len=64)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class Detached(Frame):
    """Provider -> requester on the job stream of a spec with `detach`, once the inputs
    are in: the job runs on without this stream, its signed result and outputs are kept
    `keep_s` seconds after it ends for its requester to fetch on the settle protocol."""

    type_name: ClassVar[str] = "detached"
    job_id: str = field(max_len=64)
    keep_s: int = field(ge=0, le=MAX_KEEP_S)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class LogsQuery(Frame):
    """Requester -> provider on `/offload/settle/1.0.0`: the output of this job of mine
    kept so far, and with `follow` what comes until it ends. Answered by `output`
    frames (and `running` heartbeats) then `logs_end`, by the signed `result` of a job
    that has ended, or by an error frame."""

    type_name: ClassVar[str] = "logs_query"
    job_id: str = field(max_len=64)
    follow: bool = field(default=False)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class LogsEnd(Frame):
    """Provider -> requester: the end of a `logs_query` answer; `running` says whether the
    job still runs, `dropped` how many bytes of older output the provider no longer kept."""

    type_name: ClassVar[str] = "logs_end"
    job_id: str = field(max_len=64)
    running: bool
    dropped: int = field(ge=0, le=MAX_FILE_SIZE, default=0)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class CancelJob(Frame):
    """Requester -> provider on `/offload/settle/1.0.0`: stop this job of mine. Answered
    by the signed `result` once it ended (status `killed`, charged for what it used),
    or by an error frame (`expired`: no such job of the sender's here)."""

    type_name: ClassVar[str] = "cancel_job"
    job_id: str = field(max_len=64)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class SessionOpen(Frame):
    """Requester -> provider on `/offload/session/1.0.0`: the signed SessionSpec envelope."""

    type_name: ClassVar[str] = "session_open"
    spec: bytes = field(max_len=MAX_SIGNED_SIZE)


@message
class SessionReady(Frame):
    """Provider -> requester: the object is built; calls may come."""

    type_name: ClassVar[str] = "session_ready"
    job_id: str = field(max_len=64)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")


@message
class MethodCall(Frame):
    """Requester -> provider: call `method` with `args` (cloudpickled, unpickled only in
    the session's sandbox); a generator's items may run `window` ahead of the reader."""

    type_name: ClassVar[str] = "call"
    id: int = field(ge=1, le=MAX_CALL_ID)
    method: str = field(max_len=128)
    args: bytes = field(max_len=MAX_VALUE)
    window: int = field(ge=0, le=MAX_SESSION_WINDOW)

    def validate(self) -> None:
        check_method(self.method)


@message
class Credit(Frame):
    """Requester -> provider: `n` more items of call `id` may come."""

    type_name: ClassVar[str] = "credit"
    id: int = field(ge=1, le=MAX_CALL_ID)
    n: int = field(ge=1, le=MAX_SESSION_WINDOW)


@message
class Item(Frame):
    """Provider -> requester: one item a generator method yielded (strict msgpack)."""

    type_name: ClassVar[str] = "item"
    id: int = field(ge=1, le=MAX_CALL_ID)
    value: bytes = field(max_len=MAX_VALUE)


@message
class Reply(Frame):
    """Provider -> requester: call `id` ended; `value` is what it returned, or with
    `error` what it raised (both strict msgpack, as node.api.values writes them)."""

    type_name: ClassVar[str] = "reply"
    id: int = field(ge=1, le=MAX_CALL_ID)
    value: bytes = field(max_len=MAX_VALUE)
    error: bool


@message
class Checkpoint(Frame):
    """Provider -> requester: a signed SessionResult with status `open`."""

    type_name: ClassVar[str] = "checkpoint"
    result: bytes = field(max_len=MAX_SIGNED_SIZE)


@message
class SessionClose(Frame):
    """Requester -> provider: end the lease once the calls in flight have replied, or at
    once with `abandon` (the requester gave up on them: Ctrl-C, a cancelled block)."""

    type_name: ClassVar[str] = "session_close"
    abandon: bool


@message
class SessionEnd(Frame):
    """Provider -> requester: the final signed SessionResult; the stream ends."""

    type_name: ClassVar[str] = "session_end"
    result: bytes = field(max_len=MAX_SIGNED_SIZE)


F = TypeVar("F", bound=Frame)

FRAME_TYPES: dict[str, type[Frame]] = {
    t.type_name: t for t in (SubmitJob, QuoteOffer, QuoteAccept, Queued, Accepted, Chunk,
                             Running, ResultReady, ErrorReply, Output, Settle, SettleAck,
                             ResultQuery, Lane, FetchOutputs, SessionOpen,
                             SessionReady, MethodCall, Credit, Item, Reply, Checkpoint,
                             SessionClose, SessionEnd, Detached, LogsQuery, LogsEnd,
                             CancelJob)
}


def encode(frame: Frame) -> bytes:
    """A frame ready for the stream: length prefix and canonical body."""
    return encode_frame(pack({"v": VERSION, "type": frame.type_name, "body": frame.to_wire()}))


def decode(body: bytes, *, max_size: int = DEFAULT_MAX_FRAME) -> Frame:
    doc = unpack(body, max_size=max_size)
    if not isinstance(doc, dict):
        raise DecodeError("a frame must be a map")
    unknown = set(doc) - {"v", "type", "body"}
    if unknown:
        raise UnknownField(f"frame has unknown field {sorted(map(str, unknown))[0]!r}")
    for key in ("v", "type", "body"):
        if key not in doc:
            raise MissingField(f"frame lacks field {key!r}")
    if not is_version(doc["v"]):
        raise UnsupportedVersion(f"frame version {doc['v']!r} is not {VERSION}")
    cls = FRAME_TYPES.get(doc["type"]) if isinstance(doc["type"], str) else None
    if cls is None:
        raise WrongMessageType(f"unknown frame type {doc['type']!r}")
    return cls.from_wire(doc["body"])


def expect(frame: Frame, cls: type[F]) -> F:
    if not isinstance(frame, cls):
        raise WrongMessageType(f"expected a {cls.type_name} frame, got {frame.type_name}")
    return frame
