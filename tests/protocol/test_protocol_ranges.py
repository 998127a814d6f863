"""Every integer field has a range that fits where it is stored: the boundary builds, one
past it is refused locally (ValueOutOfRange) and from the wire (OutOfRange, remote)."""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any

import pytest

from protocol import (
    CapacityAd,
    Cheque,
    Device,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Quote,
    Receipt,
    RemoteProtocolError,
    Resources,
    SandboxProfile,
    Usage,
    check_receipt,
    open_signed,
    sha256_hex,
    sign,
    wire,
)
from protocol.codec import pack
from protocol.errors import InvalidMessage, OutOfRange, ValueOutOfRange
from protocol.receipts import open_cheque
from protocol.schema import Message, field, int_range, message
from protocol.sessions import CLASS_FILE, HOST_FILE, SessionResult, SessionSpec

AMOUNT = 10**15
SAFE = 2**53 - 1
TIME = SAFE
FILE = 2**40
MB = 2**31 - 1
COUNT = 2**31 - 1
WEEK = 7 * 24 * 3600
JOB = sha256_hex(b"job")
DIGEST = sha256_hex(b"x")

# (type, field) -> (lowest allowed, highest allowed): the contract SPEC.md states
RANGES: dict[tuple[type[Message], str], tuple[int, int]] = {
    (Device, "memory_mb"): (0, MB),
    (Device, "count"): (1, 64),
    **{(Price, f): (0, AMOUNT) for f in ("start", "per_cpu_second", "per_gpu_second",
                                         "per_gb_second", "per_gb_transfer", "minimum")},
    (CapacityAd, "cpus"): (0, 2**16),
    (CapacityAd, "memory_mb"): (0, MB),
    (CapacityAd, "seq"): (0, SAFE),
    (CapacityAd, "expires"): (0, TIME),
    (Quote, "max_charge"): (0, AMOUNT),
    (Quote, "expires"): (0, TIME),
    (InputFile, "size"): (0, FILE),
    (Resources, "gpus"): (0, 1024),
    (Resources, "cpus"): (1, 2**16),
    (Resources, "memory_mb"): (1, MB),
    (Resources, "disk_mb"): (1, MB),
    (Resources, "max_seconds"): (1, WEEK),
    (JobSpec, "max_price"): (0, AMOUNT),
    (JobSpec, "created_at"): (0, TIME),
    (JobSpec, "output_cap"): (0, 65536),
    (OutputFile, "size"): (0, FILE),
    (Usage, "peak_memory_mb"): (0, MB),
    (SandboxProfile, "wall_limit_s"): (0, WEEK),
    (SandboxProfile, "memory_limit_mb"): (0, MB),
    (SandboxProfile, "pids_limit"): (0, COUNT),
    (SandboxProfile, "disk_limit_mb"): (0, MB),
    (JobResult, "exit_code"): (-(2**31), 2**31 - 1),
    (JobResult, "price_charged"): (0, AMOUNT),
    (JobResult, "stdout_dropped"): (0, SAFE),
    (JobResult, "stderr_dropped"): (0, SAFE),
    (JobResult, "finished_at"): (0, TIME),
    (Receipt, "charge"): (0, AMOUNT),
    (Receipt, "issued_at"): (0, TIME),
    (Cheque, "cumulative"): (0, AMOUNT),
    (Cheque, "serial"): (1, SAFE),
    (Cheque, "issued_at"): (0, TIME),
    (wire.Queued, "position"): (0, COUNT),
    (wire.Accepted, "resume"): (0, FILE),
    (wire.Chunk, "offset"): (0, FILE),
    (wire.Lane, "port"): (0, 65535),
    (wire.Detached, "keep_s"): (0, 30 * 24 * 3600),
    (wire.LogsEnd, "dropped"): (0, FILE),
    (SessionSpec, "idle_timeout_s"): (1, 3600),
    (SessionSpec, "concurrency"): (1, 16),
    (SessionSpec, "max_price"): (0, AMOUNT),
    (SessionSpec, "created_at"): (0, TIME),
    (SessionResult, "calls"): (0, COUNT),
    (SessionResult, "price_charged"): (0, AMOUNT),
    (SessionResult, "at"): (0, TIME),
    **{(f, "id"): (1, 2**31 - 1) for f in (wire.MethodCall, wire.Credit, wire.Item,
                                           wire.Reply)},
    (wire.MethodCall, "window"): (0, 64),
    (wire.Credit, "n"): (1, 64),
}


def samples(build: Any) -> dict[type[Message], Message]:
    """One valid instance of every type with an int field."""
    result = build.result()
    return {
        Device: build.device(), Price: build.ad().price, CapacityAd: build.ad(),
        Quote: Quote(job_id=JOB, provider=build.bob.peer_id, requester=build.alice.peer_id,
                     price=Price(start=1), max_charge=10, expires=build.now_ms),
        InputFile: build.input_file(), Resources: build.spec().resources,
        JobSpec: build.spec(), OutputFile: result.outputs[0], Usage: result.usage,
        SandboxProfile: result.sandbox,
        JobResult: dataclasses.replace(result, stdout_truncated=True, stderr_truncated=True),
        Receipt: Receipt(job_id=JOB, requester=build.alice.peer_id, provider=build.bob.peer_id,
                         outcome="accepted", reason="", charge=1, result_digest=DIGEST,
                         issued_at=build.now_ms),
        Cheque: Cheque(payer=build.alice.peer_id, payee=build.bob.peer_id, channel="local",
                       cumulative=1, serial=1, issued_at=build.now_ms),
        wire.Queued: wire.Queued(position=1),
        wire.Accepted: wire.Accepted(job_id=JOB, need=(DIGEST,), resume={}),
        wire.Chunk: wire.Chunk(name="a.bin", offset=0, data=b"x", final=True),
        wire.Lane: wire.Lane(port=1, token=b"t" * 32, cert=b"c"),
        wire.Detached: wire.Detached(job_id=JOB, keep_s=1),
        wire.LogsEnd: wire.LogsEnd(job_id=JOB, running=False),
        SessionSpec: SessionSpec(
            requester=build.alice.peer_id, provider=build.bob.peer_id, runtime="python3",
            inputs=(InputFile(name=CLASS_FILE, sha256=DIGEST, size=1),
                    InputFile(name=HOST_FILE, sha256=JOB, size=1)),
            resources=Resources(), idle_timeout_s=60, concurrency=1, max_price=None,
            nonce=b"n" * 16, created_at=build.now_ms),
        SessionResult: SessionResult(
            job_id=JOB, provider=build.bob.peer_id, requester=build.alice.peer_id,
            status="open", calls=0, transcript=DIGEST, usage=result.usage, price_charged=0,
            reason="", at=build.now_ms),
        wire.MethodCall: wire.MethodCall(id=1, method="reply", args=b"", window=0),
        wire.Credit: wire.Credit(id=1, n=1),
        wire.Item: wire.Item(id=1, value=b""),
        wire.Reply: wire.Reply(id=1, value=b"", error=False),
    }


def with_value(cls: type[Message], name: str, value: int) -> Any:
    """The field's value as the message holds it (resume is a dict of offsets)."""
    return {DIGEST: value} if (cls, name) == (wire.Accepted, "resume") else value


CASES = [pytest.param(cls, name, id=f"{cls.__name__}.{name}") for cls, name in RANGES]


@pytest.mark.parametrize(("cls", "name"), CASES)
def test_boundaries_build_and_one_past_is_refused(build: Any, cls: type[Message],
                                                   name: str) -> None:
    base = samples(build)[cls]
    lo, hi = RANGES[cls, name]
    for ok in (lo, hi):
        made = dataclasses.replace(base, **{name: with_value(cls, name, ok)})  # type: ignore
        assert cls.from_wire(made.to_wire()) == made
    for bad in (lo - 1, hi + 1):
        with pytest.raises(ValueOutOfRange, match=rf"{name}.* is {bad}, outside its range "
                                                  rf"{lo}\.\.{hi}"):
            dataclasses.replace(base, **{name: with_value(cls, name, bad)})  # type: ignore
        body = base.to_wire() | {name: with_value(cls, name, bad)}
        with pytest.raises(OutOfRange, match=rf"{cls.__name__}: {name}.* is {bad}, outside"):
            cls.from_wire(body)


def holds_int(tp: Any) -> bool:
    """int itself, or int inside an Optional, a tuple or a dict's values."""
    return tp is int or (typing.get_origin(tp) is not typing.Literal
                         and any(holds_int(a) for a in typing.get_args(tp)))


def int_fields(cls: type[Message]) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if holds_int(hints[f.name])]


def all_message_types() -> list[type[Message]]:
    seen: list[type[Message]] = []
    todo = list(Message.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        module = sys.modules[cls.__module__]
        # @message builds a new slotted class; the module's name points at that one
        if (dataclasses.is_dataclass(cls) and cls.__module__.startswith("protocol.")
                and getattr(module, cls.__name__, None) is cls):
            seen.append(cls)
    return seen


def test_every_int_field_declares_its_range_and_is_in_the_table() -> None:
    found = {(cls, n) for cls in all_message_types() for n in int_fields(cls)}
    assert len(found) >= len(RANGES)  # canary: the walk sees the fields
    assert found == set(RANGES)
    for cls, name in found:
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[name]  # type: ignore
        assert "ge" in meta and "le" in meta, f"{cls.__name__}.{name} declares no range"
        assert int_range(meta) == RANGES[cls, name]


def test_an_undeclared_int_gets_the_signed_64_bit_range() -> None:
    @message
    class Probe(Message):
        n: int
        m: int = field(default=0)

    Probe(n=-(2**63))
    Probe(n=2**63 - 1)
    for bad in (2**63, -(2**63) - 1, 2**64 - 1):
        with pytest.raises(ValueOutOfRange, match=rf"n is {bad}, outside its range "):
            Probe(n=bad)
    with pytest.raises(OutOfRange):
        Probe.from_wire({"n": 2**63, "m": 0})


def test_out_of_range_is_remote_and_local_is_invalid_message() -> None:
    assert issubclass(OutOfRange, RemoteProtocolError)
    assert issubclass(ValueOutOfRange, InvalidMessage)


def resigned(signer: Any, cls: type[Any], body: dict[str, Any]) -> bytes:
    sig = signer.sign(cls.domain() + pack(body))
    return pack({"v": 1, "type": cls.type_name, "body": body, "sig": sig})


def test_the_overflowing_receipt_of_the_issue_is_refused_by_check_receipt(build: Any) -> None:
    """The remote crash: a validly signed Receipt with charge = 2**63."""
    body = samples(build)[Receipt].to_wire() | {"charge": 2**63}
    with pytest.raises(OutOfRange, match=r"Receipt: charge is 9223372036854775808, outside "
                                         r"its range 0\.\.1000000000000000"):
        check_receipt(resigned(build.alice, Receipt, body), build.now_ms)
    body["charge"] = AMOUNT
    assert check_receipt(resigned(build.alice, Receipt, body), build.now_ms).charge == AMOUNT


@pytest.mark.parametrize(("field_name", "value"), [("cumulative", 2**63),
                                                   ("cumulative", AMOUNT + 1),
                                                   ("serial", 2**53), ("serial", 0)])
def test_open_cheque_refuses_out_of_range(build: Any, field_name: str, value: int) -> None:
    body = samples(build)[Cheque].to_wire() | {field_name: value}
    with pytest.raises(OutOfRange, match=rf"Cheque: {field_name} is {value}, outside"):
        open_cheque(resigned(build.alice, Cheque, body))


@pytest.mark.parametrize(("kind", "path", "value"), [
    ("ad", ("expires",), 2**53), ("ad", ("price", "start"), AMOUNT + 1),
    ("ad", ("devices", 0, "count"), 65), ("spec", ("max_price",), 2**63),
    ("spec", ("resources", "max_seconds"), WEEK + 1), ("spec", ("inputs", 0, "size"), FILE + 1),
    ("result", ("exit_code",), 2**31), ("result", ("usage", "peak_memory_mb"), -1),
    ("result", ("price_charged",), AMOUNT + 1),
])
def test_signed_messages_refuse_out_of_range_nested_ints(build: Any, kind: str,
                                                          path: tuple[Any, ...],
                                                          value: int) -> None:
    msg = {"ad": build.ad, "spec": build.spec, "result": build.result}[kind]()
    signer = build.alice if kind == "spec" else build.bob
    body = msg.to_wire()
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(OutOfRange, match=rf"{path[-1]} is {value}, outside"):
        open_signed(resigned(signer, type(msg), body), type(msg))
    assert open_signed(sign(msg, signer).raw, type(msg)).message == msg  # canary


def test_wire_frames_refuse_out_of_range(build: Any) -> None:
    doc = {"v": 1, "type": "chunk", "body": {"name": "a", "offset": FILE + 1, "data": b"",
                                             "final": True}}
    with pytest.raises(OutOfRange, match=r"Chunk: offset is 1099511627777, outside"):
        wire.decode(pack(doc))
    doc["body"]["offset"] = FILE  # type: ignore[index]
    assert wire.decode(pack(doc)) == wire.Chunk(name="a", offset=FILE, data=b"", final=True)
    with pytest.raises(OutOfRange, match=r"Queued: position is -1"):
        wire.decode(pack({"v": 1, "type": "queued", "body": {"position": -1}}))


def test_a_declared_range_never_reaches_past_64_bits() -> None:
    @message
    class Wide(Message):
        n: int = field(ge=-(2**70), le=2**70)

    Wide(n=2**63 - 1)
    with pytest.raises(ValueOutOfRange, match=r"outside its range -9223372036854775808\.\."
                                              r"9223372036854775807"):
        Wide(n=2**63)
