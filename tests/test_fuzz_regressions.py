"""Inputs that once escaped a decoder with a foreign exception, kept as regression tests.

Each case names where it came from (the issue, a review of the code, or tests/test_fuzz.py /
bench/fuzz.py) and must now raise only the package's own named error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch

from ledger import ChequeRefused, Ledger, ReceiptRefused
from node.api.values import ReturnValueRejected, decode_return_bytes
from protocol import Cheque, Receipt
from tests.fuzz_targets import ALICE, BOB, DIGEST, JOB, NOW_MS


def _array(name: str, shape: list[int], raw: bytes, code: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb([name, shape, raw]))


def _doc(**kw: Any) -> bytes:
    data: bytes = msgpack.packb({"v": 1, "ok": True, "value": 1} | kw)
    return data


def test_the_canary_decodes() -> None:
    assert decode_return_bytes(_doc()).value == 1


@pytest.mark.parametrize("data", [
    # the issue: `doc.get("v") != 1` on an array is elementwise, and its truth value raises
    pytest.param(_doc(v=_array("int64", [2], b"\0" * 16)), id="v-ndarray"),
    pytest.param(_doc(v=_array("int64", [0], b"")), id="v-empty-ndarray"),
    pytest.param(_doc(v=_array("int64", [2], b"\0" * 16, code=2)), id="v-tensor"),
    # an array of one 1 compared equal to 1, so the header check passed
    pytest.param(_doc(v=_array("int64", [1], b"\1" + b"\0" * 7)), id="v-one-element"),
    pytest.param(_doc(v=1.0), id="v-float"),
    pytest.param(_doc(v=True), id="v-true"),
    pytest.param(_doc(v=[1]), id="v-list"),
    pytest.param(_doc(ok=_array("bool", [1], b"\1")), id="ok-ndarray"),
    pytest.param(msgpack.packb({"v": _array("int64", [2], b"\0" * 16, code=2), "ok": False,
                                "error": {"type": "E", "message": "", "traceback": ""}}),
                 id="error-record-v-tensor"),
])
def test_a_hostile_header_is_rejected_by_name(data: bytes) -> None:
    assert torch.tensor([1]).item() == 1  # torch is imported: tensors decode as tensors
    with pytest.raises(ReturnValueRejected, match=r"lacks its header \(v=1, ok\)"):
        decode_return_bytes(data)


@pytest.mark.parametrize("data", [
    pytest.param(_doc(value=_array("bfloat16", [0, 2**64 - 1], b"", code=2)), id="bf16-huge"),
    pytest.param(_doc(value=_array("int64", [0, 2**64 - 1], b"", code=2)), id="tensor-huge"),
    pytest.param(_doc(value=_array("int64", [0, 2**62], b"")), id="ndarray-huge"),
])
def test_arrays_of_absurd_shape_are_rejected_by_name(data: bytes) -> None:
    with pytest.raises(ReturnValueRejected):
        decode_return_bytes(data)


# found by tests/test_fuzz.py and bench/fuzz.py against the code before issue #11: each
# raised OverflowError("Python int too large to convert to SQLite INTEGER") from SQLite
def _signed(cls: type[Any], body: dict[str, Any]) -> bytes:
    payload = msgpack.packb(dict(sorted(body.items())), use_bin_type=True)
    sig = ALICE.sign(cls.domain() + payload)
    data: bytes = msgpack.packb(dict(sorted({"v": 1, "type": cls.type_name, "body": body,
                                             "sig": sig}.items())), use_bin_type=True)
    return data


CHEQUE = {"channel": "local", "cumulative": 4200, "issued_at": NOW_MS, "payee": BOB.peer_id,
          "payer": ALICE.peer_id, "serial": 1}
RECEIPT = {"charge": 4200, "issued_at": NOW_MS, "job_id": JOB, "outcome": "accepted",
           "provider": BOB.peer_id, "reason": "", "requester": ALICE.peer_id,
           "result_digest": DIGEST}


@pytest.mark.parametrize(("kind", "field", "value"), [
    ("cheque", "serial", 2**63), ("cheque", "cumulative", 2**63),
    ("receipt", "charge", 2**63), ("receipt", "charge", 2**64 - 1),
])
def test_overflowing_ints_from_a_peer_are_refused_by_the_ledger(
        tmp_path: Path, kind: str, field: str, value: int) -> None:
    with Ledger.open(tmp_path / "bob.db", BOB, clock=lambda: NOW_MS) as bob:
        if kind == "cheque":
            bob.accept_cheque(_signed(Cheque, CHEQUE))  # canary: the unmutated one passes
            with pytest.raises(ChequeRefused, match=rf"{field} is {value}, outside its range"):
                bob.accept_cheque(_signed(Cheque, CHEQUE | {"serial": 2, field: value}))
        else:
            assert bob.record_receipt(_signed(Receipt, RECEIPT)) is not None  # canary
            with pytest.raises(ReceiptRefused, match=rf"{field} is {value}, outside its range"):
                bob.record_receipt(_signed(Receipt, RECEIPT | {field: value,
                                                               "job_id": DIGEST}))
        assert bob.verify() is None
