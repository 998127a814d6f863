"""Signed envelopes: round trips, job ids, and every way a peer's envelope must be refused."""

from __future__ import annotations

import re
from typing import Any

import msgpack
import pytest

from protocol import (
    BadSignature,
    CapacityAd,
    DecodeError,
    Expired,
    FieldTypeError,
    FrameTooLarge,
    InvalidMessage,
    JobResult,
    JobSpec,
    MalformedMessage,
    MissingField,
    NonCanonical,
    RemoteProtocolError,
    Signed,
    UnknownField,
    UnsupportedVersion,
    WrongMessageType,
    check_ad_fresh,
    check_spec_fresh,
    open_signed,
    sha256_hex,
    sign,
)
from protocol.codec import pack
from protocol.signing import MAX_SIGNED_SIZE, envelope_fields, signing_bytes

# Ed25519 group order; S + L is the classic malleated signature
ED25519_L = 2**252 + 27742317777372353535851937790883648493

KINDS = ["ad", "spec", "result"]
KIND_CLASS = {"ad": CapacityAd, "spec": JobSpec, "result": JobResult}


def signed_of(build: Any, kind: str) -> Signed[Any]:
    if kind == "ad":
        return sign(build.ad(), build.bob)
    if kind == "spec":
        return sign(build.spec(), build.alice)
    return sign(build.result(), build.bob)


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sign_then_open_gives_an_equal_message(build: Any, kind: str) -> None:
    signed = signed_of(build, kind)
    opened = open_signed(signed.raw, KIND_CLASS[kind])
    assert opened.message == signed.message
    assert type(opened.message) is KIND_CLASS[kind]
    assert opened.signature == signed.signature
    assert opened.raw == signed.raw
    assert opened.digest == signed.digest == sha256_hex(signing_bytes(signed.message))


@pytest.mark.parametrize("kind", KINDS)
def test_the_envelope_has_exactly_v_type_body_sig(build: Any, kind: str) -> None:
    signed = signed_of(build, kind)
    doc = envelope_fields(signed.raw)
    assert doc == {"v": 1, "type": KIND_CLASS[kind].type_name,
                   "body": signed.message.to_wire(), "sig": signed.signature}
    assert len(signed.signature) == 64
    # the signature is not inside the value it signs
    assert "sig" not in doc["body"]


def test_domain_tags_name_type_and_version() -> None:
    assert CapacityAd.domain() == b"offload/capacity_ad/1"
    assert JobSpec.domain() == b"offload/job_spec/1"
    assert JobResult.domain() == b"offload/job_result/1"


def test_signing_bytes_are_domain_then_canonical_body(build: Any) -> None:
    spec = build.spec()
    assert signing_bytes(spec) == b"offload/job_spec/1" + pack(spec.to_wire())


def test_round_trip_of_minimal_and_optional_fields(build: Any) -> None:
    ad = build.ad(addrs=(), devices=(), runtimes=(), coords=(), cached=(), load=0.0, seq=0)
    assert open_signed(sign(ad, build.bob).raw, CapacityAd).message == ad
    spec = build.spec(max_price=None, args=())
    assert open_signed(sign(spec, build.alice).raw, JobSpec).message == spec
    result = build.result(outputs=(), status="timeout", exit_code=-9, stdout_truncated=True)
    assert open_signed(sign(result, build.bob).raw, JobResult).message == result


def test_job_id_is_stable(build: Any) -> None:
    first = sign(build.spec(), build.alice)
    again = sign(build.spec(), build.alice)
    assert first.raw == again.raw
    assert first.digest == again.digest
    assert open_signed(first.raw, JobSpec).digest == first.digest
    # pinned: a change to the codec, field order or domain tag changes every job id
    assert first.digest == (
        "24c43968cd70d7aaa430784883c9847621aee1de0d7cd017fb229184fe5c049b")
    # and the id does depend on the spec
    assert sign(build.spec(nonce=bytes(range(1, 17))), build.alice).digest != first.digest


# -- tampering -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_flipped_byte_is_refused(build: Any, kind: str) -> None:
    signed = signed_of(build, kind)
    cls = KIND_CLASS[kind]
    assert open_signed(signed.raw, cls).message == signed.message  # canary
    for i in range(len(signed.raw)):
        for mask in (0x01, 0x80, 0xFF):
            data = bytearray(signed.raw)
            data[i] ^= mask
            with pytest.raises(RemoteProtocolError):
                open_signed(bytes(data), cls)


@pytest.mark.parametrize("kind", KINDS)
def test_every_truncation_is_refused(build: Any, kind: str) -> None:
    signed = signed_of(build, kind)
    for n in range(len(signed.raw)):
        with pytest.raises(RemoteProtocolError):
            open_signed(signed.raw[:n], KIND_CLASS[kind])
    with pytest.raises(DecodeError):
        open_signed(signed.raw + b"\x00", KIND_CLASS[kind])


def test_signature_by_another_key_is_refused(build: Any, pack_envelope: Any) -> None:
    spec = build.spec()
    honest = pack_envelope(spec.to_wire(), type_name="job_spec",
                           sig=build.alice.sign(signing_bytes(spec)))
    assert open_signed(honest, JobSpec).message == spec  # canary: hand-built envelope opens
    forged = pack_envelope(spec.to_wire(), type_name="job_spec",
                           sig=build.carol.sign(signing_bytes(spec)))
    with pytest.raises(BadSignature, match=rf"^signature does not verify for {spec.requester}$"):
        open_signed(forged, JobSpec)


def test_body_of_another_signer_with_a_stolen_signature(build: Any, pack_envelope: Any) -> None:
    """Carol re-labels alice's signed spec as her own: same sig, her id, refused."""
    signed = sign(build.spec(), build.alice)
    body = signed.message.to_wire() | {"requester": build.carol.peer_id}
    with pytest.raises(BadSignature, match=r"^signature does not verify for "):
        open_signed(pack_envelope(body, type_name="job_spec", sig=signed.signature), JobSpec)


def test_a_capacity_ad_signature_does_not_verify_as_a_job_spec(
    build: Any, pack_envelope: Any
) -> None:
    spec = build.spec()
    body = pack(spec.to_wire())
    right = build.alice.sign(b"offload/job_spec/1" + body)
    other_domain = build.alice.sign(b"offload/capacity_ad/1" + body)
    no_domain = build.alice.sign(body)
    assert open_signed(pack_envelope(spec.to_wire(), type_name="job_spec", sig=right),
                       JobSpec).message == spec  # canary
    for sig in (other_domain, no_domain):
        with pytest.raises(BadSignature, match=r"^signature does not verify for "):
            open_signed(pack_envelope(spec.to_wire(), type_name="job_spec", sig=sig), JobSpec)


def test_a_job_result_signature_does_not_verify_as_a_job_spec(
    build: Any, pack_envelope: Any
) -> None:
    spec = build.spec()
    sig = build.alice.sign(JobResult.domain() + pack(spec.to_wire()))
    with pytest.raises(BadSignature):
        open_signed(pack_envelope(spec.to_wire(), type_name="job_spec", sig=sig), JobSpec)


def test_an_envelope_of_another_type_is_refused(build: Any) -> None:
    spec = sign(build.spec(), build.alice)
    with pytest.raises(WrongMessageType, match=r"^expected capacity_ad, got 'job_spec'$"):
        open_signed(spec.raw, CapacityAd)
    with pytest.raises(WrongMessageType, match=r"^expected job_result, got 'job_spec'$"):
        open_signed(spec.raw, JobResult)


def test_a_relabelled_envelope_is_refused(build: Any, pack_envelope: Any) -> None:
    """A JobSpec envelope whose `type` is rewritten to capacity_ad fails on its body."""
    spec = sign(build.spec(), build.alice)
    relabelled = pack_envelope(spec.message.to_wire(), type_name="capacity_ad",
                               sig=spec.signature)
    with pytest.raises(UnknownField, match=r"^CapacityAd has unknown field 'args'$"):
        open_signed(relabelled, CapacityAd)
    with pytest.raises(WrongMessageType, match=r"^expected job_spec, got 'capacity_ad'$"):
        open_signed(relabelled, JobSpec)


def test_malleated_signature_s_plus_l_is_refused(build: Any, pack_envelope: Any) -> None:
    signed = sign(build.ad(), build.bob)
    r, s = signed.signature[:32], int.from_bytes(signed.signature[32:], "little")
    malleated = r + (s + ED25519_L).to_bytes(32, "little")
    assert s + ED25519_L < 2**256
    with pytest.raises(BadSignature):
        open_signed(pack_envelope(signed.message.to_wire(), type_name="capacity_ad",
                                  sig=malleated), CapacityAd)


# -- schema of the body --------------------------------------------------------------


DELETE = object()


def _edit(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    target: Any = body
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value

BODY_CASES = [
    # (kind, path, new value, error, exact message)
    ("ad", ("extra",), 1, UnknownField, "CapacityAd has unknown field 'extra'"),
    ("ad", ("price", "tip"), 1, UnknownField, "CapacityAd.price has unknown field 'tip'"),
    ("ad", ("devices", 0, "vendor"), "x", UnknownField,
     "CapacityAd.devices[0] has unknown field 'vendor'"),
    ("spec", ("extra",), None, UnknownField, "JobSpec has unknown field 'extra'"),
    ("result", ("usage", "extra"), 0, UnknownField, "JobResult.usage has unknown field 'extra'"),
    ("ad", ("seq",), DELETE, MissingField, "CapacityAd lacks field 'seq'"),
    # a field with a default is still required on the wire
    ("ad", ("price", "start"), DELETE, MissingField, "CapacityAd.price lacks field 'start'"),
    ("spec", ("max_price",), DELETE, MissingField, "JobSpec lacks field 'max_price'"),
    ("spec", ("inputs", 1, "size"), DELETE, MissingField,
     "JobSpec.inputs[1] lacks field 'size'"),
    ("result", ("stdout",), DELETE, MissingField, "JobResult lacks field 'stdout'"),
    ("ad", ("cpus",), "16", FieldTypeError, "CapacityAd.cpus must be an int"),
    ("ad", ("seq",), True, FieldTypeError, "CapacityAd.seq must be an int"),
    ("ad", ("load",), True, FieldTypeError, "CapacityAd.load must be a float"),
    ("ad", ("coords", 1), False, FieldTypeError, "CapacityAd.coords[1] must be a float"),
    ("ad", ("addrs",), "/ip4/1.2.3.4", FieldTypeError, "CapacityAd.addrs must be an array"),
    ("ad", ("price",), [], FieldTypeError, "CapacityAd.price must be a map"),
    ("ad", ("devices", 0, "gflops"), True, FieldTypeError,
     "CapacityAd.devices[0].gflops must be a float"),
    ("spec", ("nonce",), "0123456789abcdef", FieldTypeError, "JobSpec.nonce must be bytes"),
    ("spec", ("runtime",), b"python", FieldTypeError, "JobSpec.runtime must be str"),
    ("spec", ("max_price",), 1.5, FieldTypeError, "JobSpec.max_price must be an int"),
    ("result", ("stdout_truncated",), 0, FieldTypeError,
     "JobResult.stdout_truncated must be a bool"),
    ("ad", ("load",), 2.0, MalformedMessage, "load must be between 0 and 1"),
    ("ad", ("sandbox_tier",), "C", MalformedMessage,
     "sandbox_tier must be one of ('A', 'B', 'none'), not 'C'"),
    ("spec", ("inputs", 0, "name"), "../x", MalformedMessage,
     "input name '../x' is not a plain file name"),
    ("result", ("outputs", 0, "name"), "/etc/passwd", MalformedMessage,
     "output name '/etc/passwd' is not a safe relative path"),
]


@pytest.mark.parametrize(
    ("kind", "path", "value", "error", "message"),
    [pytest.param(*case, id=f"{case[0]}-{'.'.join(map(str, case[1]))}-{case[3].__name__}")
     for case in BODY_CASES],
)
def test_schema_violations_in_a_validly_signed_body(
    build: Any, pack_envelope: Any, kind: str, path: tuple[Any, ...], value: Any,
    error: type[Exception], message: str,
) -> None:
    """The body is re-signed by the right key, so only the schema can refuse it."""
    signed = signed_of(build, kind)
    identity = build.alice if kind == "spec" else build.bob
    cls = KIND_CLASS[kind]
    body = signed.message.to_wire()
    _edit(body, path, value)
    sig = identity.sign(cls.domain() + pack(body))
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        open_signed(pack_envelope(body, type_name=cls.type_name, sig=sig), cls)


# -- the envelope itself ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        pytest.param({"extra": 1}, UnknownField, "envelope has unknown field 'extra'",
                     id="unknown-field"),
        pytest.param({"sig": DELETE}, MissingField, "envelope lacks field 'sig'",
                     id="missing-sig"),
        pytest.param({"body": DELETE}, MissingField, "envelope lacks field 'body'",
                     id="missing-body"),
        pytest.param({"v": DELETE}, MissingField, "envelope lacks field 'v'", id="missing-v"),
        pytest.param({"v": 2}, UnsupportedVersion, "envelope version 2 is not 1", id="v2"),
        pytest.param({"v": 0}, UnsupportedVersion, "envelope version 0 is not 1", id="v0"),
        pytest.param({"v": "1"}, UnsupportedVersion, "envelope version '1' is not 1",
                     id="v-str"),
        pytest.param({"sig": b"\x00" * 63}, FieldTypeError, "sig must be 64 bytes",
                     id="short-sig"),
        pytest.param({"sig": "x" * 64}, FieldTypeError, "sig must be 64 bytes", id="str-sig"),
        pytest.param({"type": "job_spec"}, WrongMessageType,
                     "expected capacity_ad, got 'job_spec'", id="other-type"),
        pytest.param({"type": b"capacity_ad"}, WrongMessageType,
                     "expected capacity_ad, got b'capacity_ad'", id="bytes-type"),
        pytest.param({"body": [1]}, FieldTypeError, "CapacityAd must be a map",
                     id="body-not-map"),
    ],
)
def test_envelope_violations(
    build: Any, change: dict[str, Any], error: type[Exception], message: str
) -> None:
    signed = sign(build.ad(), build.bob)
    doc: dict[str, Any] = {"v": 1, "type": "capacity_ad", "body": signed.message.to_wire(),
                           "sig": signed.signature}
    assert open_signed(pack(doc), CapacityAd).message == signed.message  # canary
    for key, value in change.items():
        _edit(doc, (key,), value)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        open_signed(pack(doc), CapacityAd)


def test_a_non_canonical_envelope_is_refused(build: Any) -> None:
    signed = sign(build.ad(), build.bob)
    doc = {"v": 1, "type": "capacity_ad", "body": signed.message.to_wire(),
           "sig": signed.signature}
    assert pack(doc) == signed.raw  # canary: the codec's spelling is the one that was sent
    as_written = msgpack.packb(doc, use_bin_type=True)  # v, type, body, sig: unsorted keys
    with pytest.raises(NonCanonical, match=r"^bytes are not the canonical encoding of"):
        open_signed(as_written, CapacityAd)
    # a non-canonical body inside a canonical-looking envelope is refused as well
    body = dict(reversed(list(signed.message.to_wire().items())))
    inner = msgpack.packb({"body": body, "sig": signed.signature, "type": "capacity_ad",
                           "v": 1}, use_bin_type=True)
    with pytest.raises(NonCanonical):
        open_signed(inner, CapacityAd)


def test_an_envelope_that_is_not_a_map(build: Any) -> None:
    with pytest.raises(DecodeError, match=r"^a signed envelope must be a map$"):
        open_signed(pack([1, "capacity_ad", {}, b"\x00" * 64]), CapacityAd)


def test_oversize_envelope_is_refused(build: Any) -> None:
    signed = sign(build.ad(), build.bob)
    assert open_signed(signed.raw, CapacityAd, max_size=len(signed.raw)).raw == signed.raw
    with pytest.raises(FrameTooLarge, match=rf"^{len(signed.raw)} bytes exceed the cap of "):
        open_signed(signed.raw, CapacityAd, max_size=len(signed.raw) - 1)
    with pytest.raises(FrameTooLarge):
        open_signed(b"\x00" * (MAX_SIGNED_SIZE + 1), CapacityAd)


# -- sign() refuses misuse ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field"),
    [("ad", "CapacityAd.peer_id"), ("spec", "JobSpec.requester"),
     ("result", "JobResult.provider")],
)
def test_sign_with_an_identity_that_is_not_the_signer(build: Any, kind: str, field: str) -> None:
    message = {"ad": build.ad, "spec": build.spec, "result": build.result}[kind]()
    with pytest.raises(InvalidMessage, match=rf"^{field} must be the signing identity$"):
        sign(message, build.carol)


# -- freshness ------------------------------------------------------------------------


def test_ad_freshness_window(build: Any) -> None:
    ad = build.ad(expires=build.now_ms + 120_000)
    check_ad_fresh(ad, now_ms=build.now_ms)  # canary
    check_ad_fresh(ad, now_ms=ad.expires - 1)
    with pytest.raises(Expired, match=rf"^ad of {ad.peer_id} expired 0 ms ago$"):
        check_ad_fresh(ad, now_ms=ad.expires)
    with pytest.raises(Expired, match=r" expired 5000 ms ago$"):
        check_ad_fresh(ad, now_ms=ad.expires + 5000)


def test_ad_with_a_lifetime_too_far_ahead(build: Any) -> None:
    ten_minutes = 10 * 60 * 1000
    check_ad_fresh(build.ad(expires=build.now_ms + ten_minutes), now_ms=build.now_ms)
    too_far = build.ad(expires=build.now_ms + ten_minutes + 1)
    with pytest.raises(Expired, match=r"claims a lifetime beyond 600000 ms$"):
        check_ad_fresh(too_far, now_ms=build.now_ms)
    with pytest.raises(Expired, match=r"claims a lifetime beyond 1000 ms$"):
        check_ad_fresh(build.ad(expires=build.now_ms + 1001), now_ms=build.now_ms,
                       max_ahead_ms=1000)


@pytest.mark.parametrize(
    ("offset_ms", "fresh"),
    [(0, True), (300_000, True), (-300_000, True), (300_001, False), (-300_001, False),
     (86_400_000, False)],
)
def test_spec_clock_window(build: Any, offset_ms: int, fresh: bool) -> None:
    spec = build.spec(created_at=build.now_ms)
    now = build.now_ms + offset_ms
    if fresh:
        check_spec_fresh(spec, now_ms=now)
    else:
        with pytest.raises(Expired,
                           match=r"^job spec was created outside the accepted clock window$"):
            check_spec_fresh(spec, now_ms=now)


# -- regressions found by this suite, fixed in protocol/ --------------------------------


@pytest.mark.parametrize("v", [True, 1.0], ids=["true", "float"])
def test_version_must_be_the_integer_1(build: Any, pack_envelope: Any, v: Any) -> None:
    signed = sign(build.spec(), build.alice)
    respelled = pack_envelope(signed.message.to_wire(), type_name="job_spec",
                              sig=signed.signature, v=v)
    assert respelled != signed.raw
    with pytest.raises(UnsupportedVersion):
        open_signed(respelled, JobSpec)


SMALL_ORDER_KEYS = [
    bytes(32),  # order 4
    bytes([1]) + bytes(31),  # the identity, order 1
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
    bytes([0xEC]) + b"\xff" * 30 + b"\x7f",  # p - 1, order 2
    bytes([0xED]) + b"\xff" * 30 + b"\x7f",  # p itself: non-canonical
]


@pytest.mark.parametrize("key", SMALL_ORDER_KEYS, ids=lambda k: k.hex()[:8])
def test_small_order_public_keys_cannot_sign(build: Any, pack_envelope: Any,
                                             key: bytes) -> None:
    from protocol.identity import _PEER_PREFIX, b58encode, peer_id_from_public_key

    nobody = b58encode(_PEER_PREFIX + key)  # no private key exists for these points
    with pytest.raises(InvalidMessage, match="small order"):
        peer_id_from_public_key(key)
    with pytest.raises(InvalidMessage, match="not an Ed25519 peer id"):
        build.ad(peer_id=nobody)
    body = build.ad().to_wire() | {"peer_id": nobody}
    raw = pack_envelope(body, type_name="capacity_ad", sig=bytes(64))
    with pytest.raises(MalformedMessage, match="small-order or non-canonical"):
        open_signed(raw, CapacityAd)


def test_real_keys_are_never_taken_for_weak_ones() -> None:
    from protocol.identity import Identity, is_strong_public_key

    assert all(is_strong_public_key(Identity.generate().public_key) for _ in range(200))


def test_output_text_is_capped_in_bytes_not_characters(build: Any) -> None:
    with pytest.raises(InvalidMessage, match="stdout exceeds 65536 UTF-8 bytes"):
        build.result(stdout="\U0001f600" * (16 * 1024 + 1))


def test_the_largest_result_the_rules_allow_still_signs_and_opens(build: Any) -> None:
    from protocol import OutputFile
    from protocol.messages import MAX_OUTPUTS

    outputs = tuple(OutputFile(name=f"{i:04d}" + "x" * 123 + "/" + "y" * 127, sha256="ab" * 32,
                               size=2**40)
                    for i in range(MAX_OUTPUTS))
    result = build.result(stdout="\U0001f600" * (16 * 1024), stderr="e" * 65536,
                          outputs=outputs)
    signed = sign(result, build.bob)
    assert open_signed(signed.raw, JobResult).message == result


def test_sign_refuses_what_open_signed_would_refuse(build: Any) -> None:
    from protocol.messages import MAX_ARGS_BYTES

    with pytest.raises(InvalidMessage, match="args exceed 65536 bytes in all"):
        build.spec(args=tuple("a" * 1024 for _ in range(MAX_ARGS_BYTES // 1024 + 1)))


def test_job_id_ignores_which_valid_signature_carries_the_spec(build: Any,
                                                               pack_envelope: Any) -> None:
    spec = build.spec()
    first = sign(spec, build.alice)
    again = sign(spec, build.alice)
    assert first.digest == again.digest
    assert first.digest != sign(build.spec(nonce=b"n" * 16), build.alice).digest
