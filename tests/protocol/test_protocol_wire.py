"""Frames of the job exchange stream: encode -> FrameDecoder -> decode, and strict refusal."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest

from protocol import (
    DecodeError,
    FieldTypeError,
    FrameTooLarge,
    InvalidMessage,
    MalformedMessage,
    MissingField,
    NonCanonical,
    OutOfRange,
    Price,
    Quote,
    UnknownField,
    UnsupportedVersion,
    WrongMessageType,
    sha256_hex,
    sign,
)
from protocol.codec import pack
from protocol.framing import FrameDecoder
from protocol.wire import (
    CHUNK_SIZE,
    FRAME_TYPES,
    Accepted,
    CancelJob,
    Checkpoint,
    Chunk,
    Credit,
    Detached,
    ErrorReply,
    FetchOutputs,
    Frame,
    Item,
    Lane,
    LogsEnd,
    LogsQuery,
    MethodCall,
    Output,
    Queued,
    QuoteAccept,
    QuoteOffer,
    Reply,
    ResultQuery,
    ResultReady,
    Running,
    SessionClose,
    SessionEnd,
    SessionOpen,
    SessionReady,
    Settle,
    SettleAck,
    SubmitJob,
    decode,
    encode,
    expect,
)

DIGEST = sha256_hex(b"x")


def all_frames(build: Any) -> list[Frame]:
    return [
        SubmitJob(spec=sign(build.spec(), build.alice).raw),
        Accepted(job_id=DIGEST, need=(sha256_hex(b"a"), sha256_hex(b"b")),
                 resume={sha256_hex(b"b"): 4096}),
        Accepted(job_id=DIGEST, need=(), resume={}),
        Chunk(name="main.py", offset=0, data=b"print(1)\n", final=True),
        Chunk(name="out/model.pt", offset=CHUNK_SIZE, data=b"\x00" * 100, final=False),
        Running(elapsed_s=12.5),
        QuoteOffer(quote=sign(Quote(job_id=DIGEST, provider=build.bob.peer_id,
                                    requester=build.alice.peer_id, price=Price(start=5),
                                    max_charge=1234, expires=1), build.bob).raw),
        QuoteAccept(job_id=DIGEST),
        Queued(position=3),
        ResultReady(result=sign(build.result(), build.bob).raw),
        ErrorReply(code="busy", message="provider is at capacity; retry later",
                   retry_after_s=30.0),
        ErrorReply(code="bad_signature", message="spec signature did not verify"),
        Output(stream="stdout", text="step 1 loss 0.5\n"),
        Output(stream="stderr", text=""),
        Settle(receipt=b"r" * 100, cheque=b""),
        SettleAck(job_id=DIGEST),
        ResultQuery(job_id=DIGEST),
        FetchOutputs(job_id=DIGEST),
        SessionOpen(spec=b"s" * 100),
        SessionReady(job_id=DIGEST),
        MethodCall(id=1, method="reply", args=b"a" * 10, window=8),
        Credit(id=1, n=8),
        Item(id=1, value=b"\x01"),
        Reply(id=1, value=b"\xc0", error=False),
        Checkpoint(result=b"r" * 100),
        SessionClose(abandon=False),
        SessionEnd(result=b"r" * 100),
        Lane(port=40123, token=b"\x07" * 32, cert=b"0" * 600),
        Lane(port=0, token=b"", cert=b""),
        Detached(job_id=DIGEST, keep_s=86400),
        LogsQuery(job_id=DIGEST, follow=True),
        LogsEnd(job_id=DIGEST, running=True, dropped=12),
        CancelJob(job_id=DIGEST),
    ]


def test_every_frame_type_is_covered(build: Any) -> None:
    assert {type(f) for f in all_frames(build)} == set(FRAME_TYPES.values())


def test_every_frame_round_trips_through_the_stream(build: Any) -> None:
    frames = all_frames(build)
    stream = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(stream), 7):  # an awkward split
        decoder.feed(stream[i:i + 7])
        while (body := decoder.next_frame()) is not None:
            got.append(decode(body))
    assert got == frames
    assert [type(g) for g in got] == [type(f) for f in frames]


@pytest.mark.parametrize("index", range(9))
def test_each_frame_round_trips_alone(build: Any, index: int) -> None:
    frame = all_frames(build)[index]
    decoder = FrameDecoder()
    decoder.feed(encode(frame))
    body = decoder.next_frame()
    assert body is not None
    assert decode(body) == frame


def test_a_full_chunk_fits_in_a_frame() -> None:
    chunk = Chunk(name="big.bin", offset=0, data=b"\xab" * CHUNK_SIZE, final=True)
    decoder = FrameDecoder()
    decoder.feed(encode(chunk))
    body = decoder.next_frame()
    assert body is not None and decode(body) == chunk
    with pytest.raises(InvalidMessage, match=rf"^data is longer than {CHUNK_SIZE}$"):
        Chunk(name="big.bin", offset=0, data=b"\xab" * (CHUNK_SIZE + 1), final=True)


def frame_doc(type_name: str, body: Any, **extra: Any) -> bytes:
    return pack({"v": 1, "type": type_name, "body": body, **extra})


CHUNK_BODY = {"name": "a.bin", "offset": 0, "data": b"x", "final": False}


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        pytest.param(frame_doc("nope", {}), WrongMessageType, "unknown frame type 'nope'",
                     id="unknown-type"),
        pytest.param(frame_doc("Chunk", CHUNK_BODY), WrongMessageType,
                     "unknown frame type 'Chunk'", id="class-name-not-type-name"),
        pytest.param(pack({"v": 1, "type": 5, "body": {}}), WrongMessageType,
                     "unknown frame type 5", id="int-type"),
        pytest.param(pack({"v": 1, "type": b"chunk", "body": CHUNK_BODY}), WrongMessageType,
                     "unknown frame type b'chunk'", id="bytes-type"),
        pytest.param(frame_doc("chunk", CHUNK_BODY | {"name": "../x"}), MalformedMessage,
                     "chunk name '../x' is not a safe relative path", id="chunk-dotdot"),
        pytest.param(frame_doc("chunk", CHUNK_BODY | {"name": "/etc/passwd"}), MalformedMessage,
                     "chunk name '/etc/passwd' is not a safe relative path",
                     id="chunk-absolute"),
        pytest.param(frame_doc("chunk", CHUNK_BODY | {"name": "a/../../b"}), MalformedMessage,
                     "chunk name 'a/../../b' is not a safe relative path", id="chunk-inner"),
        pytest.param(frame_doc("chunk", CHUNK_BODY | {"offset": -1}), OutOfRange,
                     "Chunk: offset is -1, outside its range 0..1099511627776",
                     id="chunk-negative-offset"),
        pytest.param(frame_doc("chunk", CHUNK_BODY | {"final": 1}), FieldTypeError,
                     "Chunk.final must be a bool", id="chunk-final-int"),
        pytest.param(frame_doc("chunk", CHUNK_BODY | {"sha": "x"}), UnknownField,
                     "Chunk has unknown field 'sha'", id="chunk-unknown-field"),
        pytest.param(frame_doc("error", {"code": "oops", "message": "x", "retry_after_s": None}),
                     MalformedMessage, "code must be one of", id="error-code"),
        pytest.param(frame_doc("accepted", {"job_id": "x", "need": [], "resume": {}}),
                     MalformedMessage,
                     "job_id must be 64 lowercase hex digits", id="accepted-job-id"),
        pytest.param(frame_doc("running", {}), MissingField, "Running lacks field 'elapsed_s'",
                     id="running-missing"),
        pytest.param(pack({"v": 2, "type": "running", "body": {"elapsed_s": 1.0}}),
                     UnsupportedVersion, "frame version 2 is not 1", id="v2"),
        pytest.param(frame_doc("running", {"elapsed_s": 1.0}, extra=1), UnknownField,
                     "frame has unknown field 'extra'", id="frame-unknown-field"),
        pytest.param(pack({"v": 1, "type": "running"}), MissingField,
                     "frame lacks field 'body'", id="frame-missing-body"),
        pytest.param(pack({"type": "running", "body": {}}), MissingField,
                     "frame lacks field 'v'", id="frame-missing-v"),
        pytest.param(pack(["running"]), DecodeError, "a frame must be a map", id="not-a-map"),
    ],
)
def test_bad_frames_are_refused(data: bytes, error: type[Exception], message: str) -> None:
    # canary: the same document with a valid running/chunk body decodes
    assert decode(frame_doc("chunk", CHUNK_BODY)) == Chunk(**CHUNK_BODY)
    with pytest.raises(error, match=f"^{re.escape(message)}") as info:
        decode(data)
    assert type(info.value).__module__ == "protocol.errors"


def test_field_type_error_of_a_frame_field() -> None:
    with pytest.raises(FieldTypeError, match=r"^Running\.elapsed_s must be a float$"):
        decode(frame_doc("running", {"elapsed_s": True}))


def test_chunk_constructor_refuses_traversal_locally() -> None:
    with pytest.raises(InvalidMessage, match=r"^chunk name '\.\./x' is not a safe relative path$"):
        Chunk(name="../x", offset=0, data=b"", final=True)


def test_a_non_canonical_frame_is_refused() -> None:
    doc = {"v": 1, "type": "running", "body": {"elapsed_s": 1.0}}
    assert decode(msgpack.packb(dict(sorted(doc.items())))) == Running(elapsed_s=1.0)
    with pytest.raises(NonCanonical, match=r"^bytes are not the canonical encoding of"):
        decode(msgpack.packb(doc))


def test_decode_enforces_its_size_cap() -> None:
    data = frame_doc("running", {"elapsed_s": 1.0})
    assert decode(data, max_size=len(data)) == Running(elapsed_s=1.0)
    with pytest.raises(FrameTooLarge):
        decode(data, max_size=len(data) - 1)


def test_expect_returns_the_frame_of_the_right_type() -> None:
    frame: Frame = Running(elapsed_s=1.0)
    assert expect(frame, Running) is frame


@pytest.mark.parametrize(
    ("frame", "cls", "message"),
    [
        (Running(elapsed_s=1.0), Chunk, "expected a chunk frame, got running"),
        (ErrorReply(code="internal", message="x"), ResultReady,
         "expected a result frame, got error"),
        (Accepted(job_id=DIGEST, need=(), resume={}),
         SubmitJob, "expected a submit frame, got accepted"),
    ],
)
def test_expect_refuses_another_frame_type(frame: Frame, cls: type[Frame], message: str) -> None:
    with pytest.raises(WrongMessageType, match=f"^{re.escape(message)}$"):
        expect(frame, cls)


@pytest.mark.parametrize("v", [True, 1.0], ids=["true", "float"])
def test_frame_version_must_be_the_integer_1(v: Any) -> None:
    with pytest.raises(UnsupportedVersion):
        decode(pack({"v": v, "type": "running", "body": {"elapsed_s": 1.0}}))


def test_resume_offsets_must_name_needed_files() -> None:
    with pytest.raises(InvalidMessage, match="resume offsets must be for needed digests"):
        Accepted(job_id=DIGEST, need=(), resume={DIGEST: 10})
    with pytest.raises(InvalidMessage, match=r"resume\.[0-9a-f]{64} is -1, outside its range"):
        Accepted(job_id=DIGEST, need=(DIGEST,), resume={DIGEST: -1})
