"""Fuzz targets and mutators shared by tests/test_fuzz.py and bench/fuzz.py.

A target is one decoder a peer's bytes reach, the real seeds it sees (signed by real
keys), and the only errors it may raise. Mutators turn a seed into hostile input: byte
edits (bit flips, truncation, splices), structural edits of the decoded document (an int
replaced by a boundary int, a type swapped, a key dropped or added) re-signed by the
right key so the signature passes and the field checks are what is exercised, and
random bytes. Nothing here mocks: ledgers are real SQLite files.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

from ledger import Ledger, RemoteLedgerError
from node.api.values import WRAPPER, WRAPPER_NAME, ReturnValueRejected, decode_return_bytes
from protocol import (
    CapacityAd,
    Cheque,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Quote,
    Receipt,
    RemoteProtocolError,
    Resources,
    Runtime,
    Usage,
    sha256_hex,
    sign,
    wire,
)
from protocol.codec import pack, unpack
from protocol.errors import ProtocolError
from protocol.framing import FrameDecoder, encode_frame
from protocol.receipts import open_cheque, open_receipt
from protocol.sessions import CLASS_FILE, HOST_FILE, SessionResult, SessionSpec
from protocol.signing import check_ad_fresh, check_spec_fresh, open_signed
from tests import factories
from tests.factories import ALICE, BOB, NOW_MS

JOB = sha256_hex(b"fuzzed job")
DIGEST = sha256_hex(b"fuzzed digest")

BOUNDARY_INTS = (0, 1, -1, 63, 64, 2**7, 2**8, 2**15, 2**16, 2**31 - 1, 2**31, -(2**31) - 1,
                 2**32, 2**40, 2**40 + 1, 2**53 - 1, 2**53, 10**15, 10**15 + 1, 2**63 - 1,
                 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, NOW_MS, NOW_MS + 1)
SWAPS: tuple[Any, ...] = (None, True, False, 0.0, 1.0, -0.0, float("inf"), float("nan"), "",
                          "x", "1", b"", b"\x00" * 64, [], [1], [[]], {}, {"a": 1}, {"": None},
                          "a" * 5000, b"b" * 5000, [0] * 300)


# -- seeds: real messages ----------------------------------------------------------------

def ad() -> CapacityAd:
    return factories.ad(
        devices=(factories.device(model="H100"),),
        runtimes=(Runtime(name="python", version="3.11", packages={"torch": "2.3"},
                          digest="ab" * 32),),
        region="eu", coords=(52.5, 13.4), cached=(DIGEST,), seq=NOW_MS)


def spec() -> JobSpec:
    return factories.spec(inputs=(InputFile(name="main.py", sha256=DIGEST, size=120),))


def result() -> JobResult:
    return factories.result(
        job_id=JOB, stdout="epoch 1\n",
        outputs=(OutputFile(name="out/model.pt", sha256=DIGEST, size=2048),),
        sandbox=factories.sandbox(runtime_digest=DIGEST))


def quote() -> Quote:
    return Quote(job_id=JOB, provider=BOB.peer_id, requester=ALICE.peer_id,
                 price=Price(start=10), max_charge=5000, expires=NOW_MS + 30_000)


def receipts() -> list[Receipt]:
    return [factories.receipt(job_id=JOB, result_digest=DIGEST),
            factories.receipt(job_id=JOB, outcome="rejected", reason="digest mismatch", charge=0,
                              result_digest=DIGEST),
            factories.receipt(job_id=JOB, outcome="timeout", charge=0, result_digest="")]


def cheque() -> Cheque:
    return Cheque(payer=ALICE.peer_id, payee=BOB.peer_id, channel="local", cumulative=4200,
                  serial=1, issued_at=NOW_MS)


def session_spec() -> SessionSpec:
    return SessionSpec(
        requester=ALICE.peer_id, provider=BOB.peer_id, runtime="python3",
        inputs=(InputFile(name=CLASS_FILE, sha256=DIGEST, size=10),
                InputFile(name=HOST_FILE, sha256=JOB, size=20)),
        resources=Resources(cpus=1, max_seconds=600), idle_timeout_s=60, concurrency=2,
        max_price=5000, nonce=bytes(range(16)), created_at=NOW_MS)


def session_result() -> SessionResult:
    return SessionResult(
        job_id=JOB, provider=BOB.peer_id, requester=ALICE.peer_id, status="open", calls=3,
        transcript=DIGEST, usage=Usage(wall_s=2.5, cpu_s=1.0, gpu_s=0.0, peak_memory_mb=50),
        price_charged=1200, reason="", at=NOW_MS)


SIGNER = {"capacity_ad": BOB, "quote": BOB, "job_result": BOB, "job_spec": ALICE,
          "receipt": ALICE, "cheque": ALICE, "session_spec": ALICE, "session_result": BOB}


def signed_seeds() -> dict[str, list[bytes]]:
    """type name -> real signed envelopes of that type."""
    out: dict[str, list[bytes]] = {}
    for msg in (ad(), spec(), result(), quote(), *receipts(), cheque(), session_spec(),
                session_result()):
        out.setdefault(msg.type_name, []).append(sign(msg, SIGNER[msg.type_name]).raw)
    return out


def frames() -> list[wire.Frame]:
    """A real frame of every type; a type added later with only a job_id field is
    seeded by itself (tests/test_fuzz.py fails for any other type left unseeded)."""
    s = signed_seeds()
    out = [
        wire.SubmitJob(spec=s["job_spec"][0]), wire.QuoteOffer(quote=s["quote"][0]),
        wire.QuoteAccept(job_id=JOB), wire.Queued(position=3),
        wire.Accepted(job_id=JOB, need=(DIGEST,), resume={DIGEST: 1024}),
        wire.Chunk(name="out/a.bin", offset=4096, data=b"abc", final=True),
        wire.Running(elapsed_s=1.25), wire.ResultReady(result=s["job_result"][0]),
        wire.ErrorReply(code="busy", message="later", retry_after_s=1.0),
        wire.Output(stream="stdout", text="hello\n"),
        wire.Settle(receipt=s["receipt"][0], cheque=s["cheque"][0]),
        wire.SettleAck(job_id=JOB),
        wire.Lane(port=40123, token=bytes(range(32)), cert=b"\x30\x82" + bytes(200)),
        wire.SessionOpen(spec=s["session_spec"][0]),
        wire.MethodCall(id=7, method="reply", args=b"\x80\x05" + bytes(30), window=8),
        wire.Credit(id=7, n=4), wire.Item(id=7, value=b"\x81\xa1v\x01"),
        wire.Reply(id=7, value=b"\xc0", error=True),
        wire.Checkpoint(result=s["session_result"][0]), wire.SessionClose(abandon=False),
        wire.SessionEnd(result=s["session_result"][0]),
        wire.Detached(job_id=JOB, keep_s=86400), wire.LogsQuery(job_id=JOB, follow=True),
        wire.LogsEnd(job_id=JOB, running=True, dropped=4096),
    ]
    seeded = {type(f) for f in out}
    for cls in wire.FRAME_TYPES.values():
        if cls not in seeded:
            try:
                out.append(cls(job_id=JOB))  # type: ignore[call-arg]
            except (TypeError, ProtocolError):
                pass
    return out


def _wrapper_dumps() -> Callable[[Any], bytes]:
    namespace: dict[str, Any] = {"__name__": "offload_wrapper"}
    exec(compile(WRAPPER, WRAPPER_NAME, "exec"), namespace)
    return namespace["dumps"]  # type: ignore[no-any-return]


def return_seeds() -> list[bytes]:
    """Return files as the sandbox wrapper writes them: values and an error record."""
    dumps = _wrapper_dumps()
    values: list[Any] = [None, 1, -(2**63), 2**70, 1.5, "text", b"bytes", [1, [2, 3]],
                         {"a": (1, 2), 3: b"x"}, np.arange(6, dtype=np.int32).reshape(2, 3),
                         torch.ones(2, 2), torch.zeros(3, dtype=torch.bfloat16)]
    out = [dumps({"v": 1, "ok": True, "value": v}) for v in values]
    out.append(dumps({"v": 1, "ok": False, "error": {
        "type": "ValueError", "message": "bad", "traceback": "Traceback ...\n"}}))
    return out


# -- mutators ----------------------------------------------------------------------------

def mutate_bytes(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four byte-level edits: flips, sets, inserts, deletes, truncation, splices."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[i % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i % len(buf)] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xD3,
                                            0xDD, 0xDF, 0xC9, rng.randrange(256)))
        elif op == 2:
            buf[i:i] = rng.randbytes(rng.randint(1, 9))
        elif op == 3:
            del buf[i:i + rng.randint(1, 32)]
        elif op == 4:
            del buf[i:]
        elif op == 5 and pool:
            other = rng.choice(pool)
            j = rng.randrange(len(other) + 1)
            buf = buf[:i] + bytearray(other[j:])
        elif buf:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j:j + rng.randint(1, 16)]
    return bytes(buf)


def _positions(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    items: Any = (value.items() if isinstance(value, dict)
                  else enumerate(value) if isinstance(value, list) else ())
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_positions(child, (*prefix, key)))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any, *, drop: bool = False) -> Any:
    if isinstance(value, dict):
        out = dict(value)
        if len(path) == 1:
            if drop:
                out.pop(path[0], None)
            else:
                out[path[0]] = new
            return out
        out[path[0]] = _replace(value[path[0]], path[1:], new, drop=drop)
        return out
    out_list = list(value)
    if len(path) == 1:
        if drop:
            del out_list[path[0]]
        else:
            out_list[path[0]] = new
        return out_list
    out_list[path[0]] = _replace(value[path[0]], path[1:], new, drop=drop)
    return out_list


def mutate_document(rng: random.Random, doc: Any) -> Any:
    """One structural edit: a leaf (ints preferred) replaced by a boundary int or another
    type, a map key dropped, an unknown key added, or an int nudged by one."""
    positions = _positions(doc)
    if not positions:
        return rng.choice(SWAPS)
    ints = [p for p in positions if _get(doc, p).__class__ is int]
    path = rng.choice(ints) if ints and rng.random() < 0.75 else rng.choice(positions)
    old = _get(doc, path)
    op = rng.randrange(10)
    if op < 4:
        new: Any = rng.choice(BOUNDARY_INTS)
    elif op < 6 and type(old) is int:
        new = old + rng.choice((-1, 1))
    elif op < 8:
        new = rng.choice(SWAPS)
    elif op == 8:
        return _replace(doc, path, None, drop=True)
    else:
        parent = _get(doc, path[:-1])
        if isinstance(parent, dict):
            return _replace(doc, (*path[:-1], "zz_unknown"), rng.choice(BOUNDARY_INTS))
        new = rng.choice(SWAPS)
    return _replace(doc, path, new)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _pack_any(value: Any, *, canonical: bool = True) -> bytes | None:
    """Canonical bytes where the codec can spell the value (and `canonical` asks for
    them), msgpack's own otherwise (the codec spells an ext value as an array)."""
    if canonical:
        try:
            return pack(value)
        except ProtocolError:
            pass
    try:
        data: bytes = msgpack.packb(value, use_bin_type=True)
        return data
    except (TypeError, ValueError, OverflowError):
        return None  # an int beyond 64 bits: nothing a peer could send either


def resign(rng: random.Random, raw: bytes) -> bytes:
    """Mutate a signed envelope's body and sign it again with the right key."""
    doc = unpack(raw, max_size=1 << 20)
    signer, domain = SIGNER[doc["type"]], f"offload/{doc['type']}/1".encode()
    if rng.random() < 0.85:
        doc["body"] = mutate_document(rng, doc["body"])
    else:  # the envelope itself: v, type, sig or a key of its own
        doc = mutate_document(rng, doc)
    if isinstance(doc, dict) and "body" in doc and isinstance(doc.get("sig"), bytes):
        payload = _pack_any(doc["body"])
        if payload is not None:
            doc["sig"] = signer.sign(domain + payload)
    return _pack_any(doc) or raw


def restructure(rng: random.Random, raw: bytes) -> bytes:
    """Mutate a wire document (a signed envelope is re-signed) and pack it canonically."""
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        return raw
    if isinstance(doc, dict) and "sig" in doc and doc.get("type") in SIGNER:
        return resign(rng, raw)
    return _pack_any(mutate_document(rng, doc)) or raw


def restructure_return(rng: random.Random, raw: bytes) -> bytes:
    """Mutate a return file, planting ext values (arrays, tensors, tuples) anywhere."""
    doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    return _pack_any(_ext_swap(rng, mutate_document(rng, doc)), canonical=False) or raw


def _ext(code: int, dtype: str, shape: list[int], nbytes: int) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb([dtype, shape, b"\x00" * nbytes]))


EXT_VALUES = (
    _ext(1, "int64", [2], 16), _ext(1, "int64", [0], 0), _ext(1, "int64", [1], 8),
    _ext(2, "float32", [2, 2], 16), _ext(2, "bfloat16", [3], 6), _ext(1, "bool", [1], 1),
    _ext(1, "object", [1], 8), _ext(1, "int64", [0, 2**64 - 1], 0),
    _ext(2, "bfloat16", [0, 2**62], 0), _ext(1, "float32", [3], 8),
    msgpack.ExtType(3, msgpack.packb([1, 2])), msgpack.ExtType(3, msgpack.packb({"a": 1})),
    msgpack.ExtType(4, b"\x01" * 9), msgpack.ExtType(4, b"\x01"), msgpack.ExtType(9, b""),
    msgpack.Timestamp(1, 0),
)
"""Ext values a return file may carry (arrays, tensors, tuples, big ints), sane or not."""


def _ext_swap(rng: random.Random, doc: Any) -> Any:
    """Sometimes plant an ext value anywhere in a return document."""
    positions = _positions(doc)
    if positions and rng.random() < 0.5:
        return _replace(doc, rng.choice(positions), rng.choice(EXT_VALUES))
    return doc


def random_input(rng: random.Random) -> bytes:
    prefix = rng.choice((b"", b"\x84", b"\x83", b"\x84\xa1v\x01", b"\xde\x00\x04",
                         b"\x00\x00\x00\x10", b"\x83\xa1v\x01\xa2ok\xc3"))
    return prefix + rng.randbytes(rng.randint(0, 200))


# -- targets -----------------------------------------------------------------------------

@dataclasses.dataclass
class Target:
    """One decoder of peer bytes: how to run it, its seeds, the errors it may raise."""

    name: str
    run: Callable[[bytes], object]
    seeds: list[bytes]
    allowed: tuple[type[BaseException], ...]
    structural: Callable[[random.Random, bytes], bytes] = restructure

    def generate(self, rng: random.Random) -> bytes:
        roll = rng.random()
        seed = rng.choice(self.seeds)
        if roll < 0.5:
            return self.structural(rng, seed)
        if roll < 0.85:
            return mutate_bytes(rng, seed, self.seeds)
        return random_input(rng)

    def check(self, data: bytes) -> BaseException | None:
        """None if the target accepted or refused `data` by name; else the foreign error."""
        try:
            self.run(data)
        except self.allowed:
            return None
        except Exception as exc:
            return exc
        return None


def _framing(data: bytes) -> None:
    decoder = FrameDecoder(max_size=64 * 1024)
    step = max(1, len(data) // 3)
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
        while (body := decoder.next_frame()) is not None:
            wire.decode(body)


def _reframe(rng: random.Random, data: bytes) -> bytes:
    return encode_frame(restructure(rng, data[4:]))


def _open(cls: type[Any], check: Callable[[Any], None] | None = None) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        message = open_signed(data, cls).message
        if check is not None:
            check(message)
    return run


def targets(ledger_dir: Path) -> tuple[list[Target], Ledger]:
    """Every decoder, and the real ledger (a SQLite file under `ledger_dir`) that the
    ledger targets write to; close it when done."""
    s = signed_seeds()
    wire_seeds = [wire.encode(f)[4:] for f in frames()]
    every_signed = [raw for raws in s.values() for raw in raws]
    remote = (RemoteProtocolError,)
    ledger = Ledger.open(ledger_dir / "fuzz-bob.db", BOB, clock=lambda: NOW_MS)
    out = [
        Target("codec.unpack", lambda d: unpack(d, max_size=1 << 20),
               every_signed + wire_seeds, remote),
        Target("framing+wire", _framing, [wire.encode(f) for f in frames()], remote,
               structural=_reframe),
        Target("wire.decode", wire.decode, wire_seeds, remote),
        Target("capacity_ad+check_ad_fresh", _open(
            CapacityAd, lambda m: check_ad_fresh(m, now_ms=NOW_MS)), s["capacity_ad"], remote),
        Target("job_spec+check_spec_fresh", _open(
            JobSpec, lambda m: check_spec_fresh(m, now_ms=NOW_MS)), s["job_spec"], remote),
        Target("job_result", _open(JobResult), s["job_result"], remote),
        Target("quote", _open(Quote), s["quote"], remote),
        Target("session_spec", _open(SessionSpec), s["session_spec"], remote),
        Target("session_result", _open(SessionResult), s["session_result"], remote),
        Target("receipt+check_receipt", lambda d: open_receipt(d, NOW_MS), s["receipt"],
               remote),
        Target("cheque+open_cheque", open_cheque, s["cheque"], remote),
        Target("ledger.record_receipt", ledger.record_receipt, s["receipt"],
               (RemoteLedgerError,)),
        Target("ledger.accept_cheque", ledger.accept_cheque, s["cheque"],
               (RemoteLedgerError,)),
        Target("values.decode_return", decode_return_bytes, return_seeds(),
               (ReturnValueRejected,), structural=restructure_return),
    ]
    return out, ledger
