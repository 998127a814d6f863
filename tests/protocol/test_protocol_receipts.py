"""Receipts and cheques: round trips, field rules, and check_receipt as a gossip validator."""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    BadSignature,
    Cheque,
    Expired,
    FrameTooLarge,
    InvalidMessage,
    MalformedMessage,
    Receipt,
    UnknownField,
    WrongMessageType,
    check_receipt,
    open_signed,
    sha256_hex,
    sign,
)
from protocol.receipts import MAX_RECEIPT_SIZE, open_cheque, open_receipt
from protocol.signing import signing_bytes

JOB = sha256_hex(b"job")
RESULT = sha256_hex(b"result")


def receipt(build: Any, **kw: Any) -> Receipt:
    fields: dict[str, Any] = dict(job_id=JOB, requester=build.alice.peer_id,
                                  provider=build.bob.peer_id, outcome="accepted", reason="",
                                  charge=4200, result_digest=RESULT, issued_at=build.now_ms)
    fields.update(kw)
    return Receipt(**fields)


def cheque(build: Any, **kw: Any) -> Cheque:
    fields: dict[str, Any] = dict(payer=build.alice.peer_id, payee=build.bob.peer_id,
                                  channel="local", cumulative=4200, serial=1,
                                  issued_at=build.now_ms)
    fields.update(kw)
    return Cheque(**fields)


def test_domain_tags() -> None:
    assert Receipt.domain() == b"offload/receipt/1"
    assert Cheque.domain() == b"offload/cheque/1"


def test_round_trips(build: Any) -> None:
    r = sign(receipt(build), build.alice)
    assert open_signed(r.raw, Receipt).message == r.message
    assert open_receipt(r.raw, build.now_ms).digest == r.digest
    c = sign(cheque(build), build.alice)
    assert open_cheque(c.raw).message == c.message
    assert len(r.raw) < MAX_RECEIPT_SIZE // 2


@pytest.mark.parametrize(("kw", "match"), [
    ({"outcome": "rejected", "charge": 5, "reason": "x"},
     "a rejected receipt releases nothing; charge must be 0"),
    ({"outcome": "rejected", "charge": 0, "reason": ""}, "a rejected receipt must say why"),
    ({"outcome": "timeout", "charge": 0}, "a timeout receipt judges no result"),
    ({"outcome": "accepted", "result_digest": ""}, "result_digest must be 64 lowercase hex"),
    ({"charge": -1}, "charge is -1, outside its range 0..1000000000000000"),
    ({"provider": "alice"}, "provider is not an Ed25519 peer id"),
    ({"outcome": "paid"}, "outcome must be one of"),
    ({"reason": "x" * 257}, "reason is longer than 256"),
])
def test_receipt_field_rules(build: Any, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidMessage, match=match):
        receipt(build, **kw)


def test_a_receipt_about_oneself_is_refused(build: Any) -> None:
    with pytest.raises(InvalidMessage, match="a receipt about oneself is no evidence"):
        receipt(build, provider=build.alice.peer_id)


def test_valid_variants_build(build: Any) -> None:
    receipt(build, outcome="timeout", charge=0, result_digest="")
    receipt(build, outcome="rejected", charge=0, reason="output digest mismatch")


@pytest.mark.parametrize(("kw", "match"), [
    ({"payee": "alice"}, "payer must differ from payee"),
    ({"serial": 0}, "serial is 0, outside its range 1..9007199254740991"),
    ({"cumulative": -5}, "cumulative is -5, outside its range 0..1000000000000000"),
    ({"channel": ""}, "channel must name the settlement channel"),
])
def test_cheque_field_rules(build: Any, kw: dict[str, Any], match: str) -> None:
    if kw.get("payee") == "alice":
        kw = {"payee": build.alice.peer_id}
    with pytest.raises(InvalidMessage, match=match):
        cheque(build, **kw)


def test_only_the_requester_can_sign_a_receipt(build: Any) -> None:
    with pytest.raises(InvalidMessage, match=r"Receipt\.requester must be the signing identity"):
        sign(receipt(build), build.bob)


def test_a_provider_forging_praise_is_caught(build: Any, pack_envelope: Any) -> None:
    """The provider signs a receipt naming alice as requester: the signature is bob's."""
    forged = receipt(build)
    raw = pack_envelope(forged.to_wire(), type_name="receipt",
                        sig=build.bob.sign(signing_bytes(forged)))
    with pytest.raises(BadSignature, match="signature does not verify for"):
        check_receipt(raw, build.now_ms)
    honest = pack_envelope(forged.to_wire(), type_name="receipt",
                           sig=build.alice.sign(signing_bytes(forged)))
    assert check_receipt(honest, build.now_ms) == forged  # the canary


def test_a_cheque_signature_is_no_receipt(build: Any, pack_envelope: Any) -> None:
    c = sign(cheque(build), build.alice)
    with pytest.raises(WrongMessageType, match="expected receipt, got 'cheque'"):
        check_receipt(c.raw, build.now_ms)


def test_check_receipt_refuses_a_bad_clock(build: Any) -> None:
    r = sign(receipt(build), build.alice)
    assert check_receipt(r.raw, build.now_ms) == r.message
    with pytest.raises(Expired, match="ms in the future"):
        check_receipt(r.raw, build.now_ms - 10 * 60 * 1000)
    with pytest.raises(Expired, match="older than"):
        check_receipt(r.raw, build.now_ms + 31 * 24 * 3600 * 1000)


def test_check_receipt_caps_size_and_fields(build: Any, pack_envelope: Any) -> None:
    r = receipt(build)
    body = r.to_wire()
    with pytest.raises(UnknownField, match="unknown field 'bonus'"):
        check_receipt(pack_envelope({**body, "bonus": 1}, type_name="receipt",
                                    sig=b"\0" * 64), build.now_ms)
    with pytest.raises(FrameTooLarge, match=f"exceed the cap of {MAX_RECEIPT_SIZE}"):
        check_receipt(pack_envelope({**body, "reason": "x" * 3000}, type_name="receipt",
                                    sig=b"\0" * 64), build.now_ms)
    with pytest.raises(MalformedMessage, match="charge must be 0"):
        check_receipt(pack_envelope({**body, "outcome": "rejected", "reason": "bad"},
                                    type_name="receipt", sig=b"\0" * 64), build.now_ms)
