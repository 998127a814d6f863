"""Test vectors of the wire spec (vectors.json), checked both ways: decoding each hex gives
its fields and a valid signature by its key, and encoding (signing) the fields gives exactly
the hex. Regenerate after a deliberate wire change with

    OFFLOAD_WRITE_VECTORS=1 .venv/bin/python -m pytest -q tests/protocol/test_protocol_vectors.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    BadSignature,
    CapacityAd,
    Cheque,
    Device,
    FieldTypeError,
    Identity,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Quote,
    Receipt,
    Resources,
    Runtime,
    SandboxProfile,
    Signed,
    Usage,
    open_signed,
    sign,
    wire,
)
from protocol.codec import pack
from protocol.messages import Signable
from protocol.sessions import CLASS_FILE, HOST_FILE, SessionResult, SessionSpec
from protocol.signing import signing_bytes

VECTORS = Path(__file__).with_name("vectors.json")
REQUESTER = Identity(hashlib.sha256(b"offload test vector: requester").digest())
PROVIDER = Identity(hashlib.sha256(b"offload test vector: provider").digest())
SIGNED: dict[str, type[Signable]] = {c.type_name: c for c in (
    CapacityAd, JobSpec, Quote, JobResult, Receipt, Cheque, SessionSpec, SessionResult)}
T = 1_700_000_000_000
PRICE = Price(start=1000, per_cpu_second=50, per_gpu_second=2000, per_gb_second=1,
              per_gb_transfer=10, minimum=500)


def messages() -> list[tuple[str, Signable, Identity]]:
    """Every signed message type once, with fixed fields and the key that signs it."""
    p, r = PROVIDER.peer_id, REQUESTER.peer_id
    script = b"print('hello')\n"
    spec = JobSpec(
        requester=r, provider=p, runtime="python3", entrypoint="main.py", args=("--n", "3"),
        inputs=(InputFile(name="main.py", sha256=hashlib.sha256(script).hexdigest(),
                          size=len(script)),),
        resources=Resources(cpus=2, memory_mb=1024, max_seconds=60), max_price=100_000,
        verification="none", nonce=bytes(range(16)), created_at=T)
    job_id = sign(spec, REQUESTER).digest
    result = JobResult(
        job_id=job_id, provider=p, requester=r, status="ok", exit_code=0,
        stdout="hello\n", stderr="", stdout_truncated=False, stderr_truncated=False,
        outputs=(OutputFile(name="out/a.txt", sha256=hashlib.sha256(b"a").hexdigest(),
                            size=1),),
        limits_hit=(), usage=Usage(wall_s=1.25, cpu_s=0.5, gpu_s=0.0, peak_memory_mb=12),
        sandbox=SandboxProfile(tier="A", wall_limit_s=60, memory_limit_mb=1024,
                               cpu_limit=2.0, pids_limit=64, disk_limit_mb=1024,
                               network="none", runtime="python3", runtime_digest="",
                               warm=True),
        price_charged=1200, finished_at=T + 2000)
    result_digest = sign(result, PROVIDER).digest
    return [
        ("capacity_ad", CapacityAd(
            peer_id=p, addrs=(f"/ip4/127.0.0.1/tcp/4001/p2p/{p}",),
            devices=(Device(kind="cpu", model="Test CPU", memory_mb=16384,
                            compute_capability="", count=1, gflops=120.5),),
            cpus=8, memory_mb=16384,
            runtimes=(Runtime(name="python3", version="3.11", packages={"numpy": "1.26"},
                              digest=""),),
            price=PRICE, sandbox_tier="A", region="eu", coords=(1.5, -2.0, 0.25),
            cached=(), load=0.5, seq=T, expires=T + 120_000), PROVIDER),
        ("job_spec", spec, REQUESTER),
        ("quote", Quote(job_id=job_id, provider=p, requester=r, price=PRICE,
                        max_charge=4000, expires=T + 30_000), PROVIDER),
        ("job_result", result, PROVIDER),
        ("receipt", Receipt(job_id=job_id, requester=r, provider=p, outcome="accepted",
                            reason="", charge=1200, result_digest=result_digest,
                            issued_at=T + 3000), REQUESTER),
        ("cheque", Cheque(payer=r, payee=p, channel="local", cumulative=1200, serial=1,
                          issued_at=T + 3000), REQUESTER),
        ("session_spec", SessionSpec(
            requester=r, provider=p, runtime="python3",
            inputs=(InputFile(name=CLASS_FILE, sha256=hashlib.sha256(b"c").hexdigest(),
                              size=1),
                    InputFile(name=HOST_FILE, sha256=hashlib.sha256(b"h").hexdigest(),
                              size=1)),
            resources=Resources(cpus=1, memory_mb=2048, max_seconds=3600), idle_timeout_s=60,
            concurrency=1, max_price=1_000_000, nonce=bytes(range(16)), created_at=T),
         REQUESTER),
        ("session_result", SessionResult(
            job_id=job_id, provider=p, requester=r, status="closed", calls=2,
            transcript=hashlib.sha256(b"t").hexdigest(),
            usage=Usage(wall_s=3.5, cpu_s=1.0, gpu_s=0.0, peak_memory_mb=100),
            price_charged=900, reason="", at=T + 4000), PROVIDER),
    ]


def frames() -> list[wire.Frame]:
    signed = {name: sign(m, key).raw for name, m, key in messages()}
    job_id = sign(messages()[1][1], REQUESTER).digest
    digest = hashlib.sha256(b"print('hello')\n").hexdigest()
    return [
        wire.SubmitJob(spec=signed["job_spec"]),
        wire.QuoteOffer(quote=signed["quote"]),
        wire.QuoteAccept(job_id=job_id),
        wire.Queued(position=2),
        wire.Accepted(job_id=job_id, need=(digest,), resume={digest: 4}),
        wire.Chunk(name="main.py", offset=4, data=b"t('hello')\n", final=True),
        wire.Running(elapsed_s=2.5),
        wire.Output(stream="stdout", text="hello\n"),
        wire.ResultReady(result=signed["job_result"]),
        wire.ErrorReply(code="busy", message="all slots are taken", retry_after_s=5.0),
        wire.Settle(receipt=signed["receipt"], cheque=signed["cheque"]),
        wire.SettleAck(job_id=job_id),
        wire.ResultQuery(job_id=job_id),
        wire.FetchOutputs(job_id=job_id),
        wire.SessionOpen(spec=signed["session_spec"]),
        wire.SessionReady(job_id=job_id),
        wire.MethodCall(id=1, method="reply", args=b"\x80\x05", window=8),
        wire.Credit(id=1, n=4),
        wire.Item(id=1, value=b"\xa2hi"),
        wire.Reply(id=1, value=b"\xc0", error=False),
        wire.Checkpoint(result=signed["session_result"]),
        wire.SessionClose(abandon=False),
        wire.SessionEnd(result=signed["session_result"]),
        wire.Lane(port=40123, token=bytes(range(32)), cert=b"0\x82\x01\x00"),
        wire.Detached(job_id=job_id, keep_s=86400),
        wire.LogsQuery(job_id=job_id, follow=True),
        wire.LogsEnd(job_id=job_id, running=False, dropped=0),
        wire.CancelJob(job_id=job_id),
    ]


def to_json(value: Any) -> Any:
    """Wire values as JSON: bytes become {"bin": hex}; floats stay floats (5.0, not 5)."""
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"bin"}:
            return bytes.fromhex(value["bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def generate() -> dict[str, Any]:
    keys = {"requester": REQUESTER, "provider": PROVIDER}
    return {
        "keys": {name: {"seed": k.seed.hex(), "public_key": k.public_key.hex(),
                        "peer_id": k.peer_id} for name, k in keys.items()},
        "signed": [{"type": name, "signer": "provider" if key is PROVIDER else "requester",
                    "body": to_json(m.to_wire()),
                    "signing_bytes": signing_bytes(m).hex(),
                    "hex": sign(m, key).raw.hex()}
                   for name, m, key in messages()],
        "frames": [{"type": f.type_name, "body": to_json(f.to_wire()),
                    "hex": wire.encode(f).hex()} for f in frames()],
        "int_for_float": [{
            "note": "elapsed_s sent as the integer 5: decodes to 5.0; canonical is float64",
            "hex": pack({"v": 1, "type": "running", "body": {"elapsed_s": 5}}).hex(),
            "canonical_hex": pack({"v": 1, "type": "running",
                                   "body": {"elapsed_s": 5.0}}).hex()}],
    }


def load() -> dict[str, Any]:
    if os.environ.get("OFFLOAD_WRITE_VECTORS"):
        VECTORS.write_text(json.dumps(generate(), indent=1) + "\n")
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


DATA = load()


def test_the_keys_are_what_their_seeds_give() -> None:
    for k in DATA["keys"].values():
        identity = Identity(bytes.fromhex(k["seed"]))
        assert (identity.public_key.hex(), identity.peer_id) == (k["public_key"], k["peer_id"])


@pytest.mark.parametrize("vector", DATA["signed"], ids=lambda v: v["type"])
def test_signed_vector_decodes_to_its_fields_and_verifies(vector: dict[str, Any]) -> None:
    cls = SIGNED[vector["type"]]
    opened = open_signed(bytes.fromhex(vector["hex"]), cls)
    assert to_json(opened.message.to_wire()) == vector["body"]
    assert opened.message.signer() == DATA["keys"][vector["signer"]]["peer_id"]
    assert signing_bytes(opened.message).hex() == vector["signing_bytes"]
    tampered = bytearray.fromhex(vector["hex"])
    tampered[tampered.index(opened.signature) + 10] ^= 1
    with pytest.raises(BadSignature):
        open_signed(bytes(tampered), cls)


@pytest.mark.parametrize("vector", DATA["signed"], ids=lambda v: v["type"])
def test_signing_the_fields_gives_exactly_the_vector(vector: dict[str, Any]) -> None:
    cls = SIGNED[vector["type"]]
    message = cls.from_wire(from_json(vector["body"]))
    key = Identity(bytes.fromhex(DATA["keys"][vector["signer"]]["seed"]))
    assert sign(message, key).raw.hex() == vector["hex"]


@pytest.mark.parametrize("vector", DATA["frames"], ids=lambda v: v["type"])
def test_frame_vector_decodes_to_its_fields_and_encodes_back(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    frame = wire.decode(data[4:])
    assert frame.type_name == vector["type"]
    assert to_json(frame.to_wire()) == vector["body"]
    again = wire.FRAME_TYPES[vector["type"]].from_wire(from_json(vector["body"]))
    assert wire.encode(again).hex() == vector["hex"]


def test_every_signed_type_and_frame_type_has_a_vector() -> None:
    assert {v["type"] for v in DATA["signed"]} == set(SIGNED)
    assert {v["type"] for v in DATA["frames"]} == set(wire.FRAME_TYPES)


def test_an_integer_in_a_float_field_decodes_and_re_encodes_canonically() -> None:
    (vector,) = DATA["int_for_float"]
    frame = wire.decode(bytes.fromhex(vector["hex"]))
    assert isinstance(frame, wire.Running) and frame.elapsed_s == 5.0
    assert type(frame.elapsed_s) is float
    assert wire.encode(frame)[4:].hex() == vector["canonical_hex"]


def test_the_vectors_file_is_what_the_generator_writes() -> None:
    assert json.loads(json.dumps(generate())) == DATA


def _ad_with_int_coord(sign_canonical: bool) -> tuple[bytes, Signed[CapacityAd]]:
    """The vector ad with its coordinate -2.0 spelled as the integer -2 on the wire."""
    name, ad, key = messages()[0]
    assert name == "capacity_ad" and isinstance(ad, CapacityAd) and ad.coords[1] == -2.0
    canonical: Signed[CapacityAd] = sign(ad, key)
    body = ad.to_wire()
    body["coords"] = [1.5, -2, 0.25]
    signed_bytes = signing_bytes(ad) if sign_canonical else ad.domain() + pack(body)
    raw = pack({"v": 1, "type": "capacity_ad", "body": body, "sig": key.sign(signed_bytes)})
    return raw, canonical


def test_an_int_spelling_verifies_when_the_canonical_float_bytes_were_signed() -> None:
    raw, canonical = _ad_with_int_coord(sign_canonical=True)
    opened = open_signed(raw, CapacityAd)
    assert opened.message == canonical.message and type(opened.message.coords[1]) is float
    assert opened.digest == canonical.digest  # the id is over the canonical bytes
    assert opened.raw == raw != canonical.raw


def test_a_signature_over_the_int_spelling_does_not_verify() -> None:
    raw, _ = _ad_with_int_coord(sign_canonical=False)
    with pytest.raises(BadSignature):
        open_signed(raw, CapacityAd)


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_still_not_a_number(value: bool) -> None:
    with pytest.raises(FieldTypeError, match=r"^Running\.elapsed_s must be a float$"):
        wire.decode(pack({"v": 1, "type": "running", "body": {"elapsed_s": value}}))
