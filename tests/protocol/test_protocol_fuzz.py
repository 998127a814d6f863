"""Fuzz: whatever bytes a peer sends, protocol/ answers with a RemoteProtocolError or a
valid message, never another exception. Derandomized so that every run is reproducible."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    CapacityAd,
    InvalidMessage,
    JobResult,
    JobSpec,
    ProtocolError,
    RemoteProtocolError,
    Signed,
    open_signed,
    sign,
    wire,
)
from protocol.codec import pack, unpack

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)
STRUCTURED = settings(max_examples=200, deadline=None, derandomize=True, database=None)

SIGNED_TYPES: dict[str, type[Any]] = {"ad": CapacityAd, "spec": JobSpec, "result": JobResult}

DECODERS: dict[str, Callable[[bytes], object]] = {
    "open-ad": lambda d: open_signed(d, CapacityAd),
    "open-spec": lambda d: open_signed(d, JobSpec),
    "open-result": lambda d: open_signed(d, JobResult),
    "wire-decode": wire.decode,
    "unpack": lambda d: unpack(d, max_size=1 << 20),
}


def outcome(decoder: Callable[[bytes], object], data: bytes) -> ProtocolError | None:
    """Run `decoder`; only a RemoteProtocolError may escape it. Anything else fails the test."""
    try:
        decoder(data)
    except ProtocolError as exc:
        assert isinstance(exc, RemoteProtocolError), f"a peer's bytes raised a local error: {exc!r}"
        return exc
    return None


def signed_of(build: Any, kind: str) -> Signed[Any]:
    if kind == "spec":
        return sign(build.spec(), build.alice)
    return sign(build.ad() if kind == "ad" else build.result(), build.bob)


# -- arbitrary bytes -------------------------------------------------------------------

# raw bytes, and bytes that start like a msgpack map so the fuzzer gets past the first byte
arbitrary_bytes = st.binary(max_size=600) | st.builds(
    lambda head, tail: head + tail,
    st.sampled_from([b"\x84", b"\x83", b"\x84\xa1v\x01", b"\x84\xa4body", b"\xde\x00\x04"]),
    st.binary(max_size=300),
)


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(data=arbitrary_bytes)
def test_arbitrary_bytes_raise_only_remote_protocol_errors(name: str, data: bytes) -> None:
    outcome(DECODERS[name], data)


# -- mutations of a valid envelope -------------------------------------------------------

edit = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.none()),
)


def mutate(raw: bytes, edits: list[tuple[str, int, Any]]) -> bytes:
    data = bytearray(raw)
    for op, pos, arg in edits:
        i = pos % (len(data) + 1)
        if op == "replace" and data:
            data[i % len(data)] = arg
        elif op == "insert":
            data[i:i] = arg
        elif op == "delete":
            del data[i:i + arg]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@pytest.mark.parametrize("kind", SIGNED_TYPES)
@FUZZ
@given(edits=st.lists(edit, min_size=1, max_size=4))
def test_mutated_envelopes_are_refused(build: Any, kind: str, edits: list[Any]) -> None:
    signed = signed_of(build, kind)
    mutated = mutate(signed.raw, edits)
    if mutated == signed.raw:
        assert open_signed(mutated, SIGNED_TYPES[kind]).message == signed.message
        return
    # a canonical signed envelope has exactly one byte spelling: any change is refused
    assert outcome(lambda d: open_signed(d, SIGNED_TYPES[kind]), mutated) is not None
    for decoder in DECODERS.values():
        outcome(decoder, mutated)


@FUZZ
@given(index=st.integers(0, 5), edits=st.lists(edit, min_size=1, max_size=4))
def test_mutated_wire_frames_never_crash(build: Any, index: int, edits: list[Any]) -> None:
    frames = [
        wire.SubmitJob(spec=signed_of(build, "spec").raw),
        wire.Accepted(job_id="0" * 64, need=("1" * 64,), resume={}),
        wire.Chunk(name="out/a.bin", offset=3, data=b"abc", final=True),
        wire.Running(elapsed_s=1.25),
        wire.ResultReady(result=signed_of(build, "result").raw),
        wire.ErrorReply(code="busy", message="later", retry_after_s=1.0),
    ]
    body = wire.encode(frames[index])[4:]
    assert wire.decode(body) == frames[index]  # canary
    mutated = mutate(body, edits)
    if outcome(wire.decode, mutated) is None:
        # a frame that still decodes must be a valid frame that re-encodes to those bytes
        assert wire.encode(wire.decode(mutated))[4:] == mutated


# -- structured: valid msgpack documents ----------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.floats(width=32)
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.sampled_from(["capacity_ad", "job_spec", "job_result", "chunk", "running", "v",
                       "type", "body", "sig"])
)
documents = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4), inner, max_size=5),
    max_leaves=25,
)


def packings(value: Any) -> list[bytes]:
    """msgpack's own bytes, and the canonical bytes when the codec can spell the value."""
    out = [msgpack.packb(value, use_bin_type=True)]
    with contextlib.suppress(InvalidMessage):
        out.append(pack(value))
    return out


@FUZZ
@given(value=documents)
def test_any_msgpack_document_raises_only_remote_errors(value: Any) -> None:
    for data in packings(value):
        for decoder in DECODERS.values():
            outcome(decoder, data)


@STRUCTURED
@given(
    type_name=st.sampled_from(["capacity_ad", "job_spec", "job_result", "chunk", "running",
                               "submit", "accepted", "result", "error", "nope"]),
    v=st.sampled_from([1, 2, 0, -1, None, "1"]),
    body=documents,
    sig=st.binary(min_size=64, max_size=64) | st.binary(max_size=70),
    extra=st.dictionaries(st.text(max_size=5), documents, max_size=1),
)
def test_envelope_shaped_documents_raise_only_remote_errors(
    type_name: str, v: Any, body: Any, sig: bytes, extra: dict[str, Any]
) -> None:
    doc = {"v": v, "type": type_name, "body": body, "sig": sig, **extra}
    for data in packings(doc):
        for decoder in DECODERS.values():
            outcome(decoder, data)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position inside a wire value: map keys and array indexes, depth first."""
    items: Any = value.items() if isinstance(value, dict) else (
        enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    if isinstance(value, dict):
        return {k: replaced(v, path[1:], new) if k == path[0] else v for k, v in value.items()}
    return [replaced(v, path[1:], new) if i == path[0] else v for i, v in enumerate(value)]


@pytest.mark.parametrize("kind", SIGNED_TYPES)
@STRUCTURED
@given(data=st.data(), new=leaves | documents)
def test_one_field_replaced_in_a_signed_body(
    build: Any, kind: str, data: st.DataObject, new: Any
) -> None:
    """Re-signed by the right key: the body is accepted exactly as sent, or refused."""
    signed = signed_of(build, kind)
    cls = SIGNED_TYPES[kind]
    body = signed.message.to_wire()
    path = data.draw(st.sampled_from(list(paths(body))))
    body = replaced(body, path, new)
    try:
        payload = pack(body)
    except InvalidMessage:
        return  # not spellable canonically (too deep): nothing a peer could send either
    signer = build.alice if kind == "spec" else build.bob
    doc = {"v": 1, "type": cls.type_name, "body": body,
           "sig": signer.sign(cls.domain() + payload)}
    raw = pack(doc)
    if outcome(lambda d: open_signed(d, cls), raw) is None:
        opened = open_signed(raw, cls)
        # no coercion (1 == 1.0 in Python, so compare the canonical bytes), nothing dropped
        assert pack(opened.message.to_wire()) == payload
        assert opened.raw == raw
