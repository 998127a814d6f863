"""The receipts topic's validator: only intact, signed, fresh receipts travel."""

from __future__ import annotations

import types

from node.net.gossip import MAX_MESSAGE, Gossip
from protocol import Identity, sign
from protocol.identity import sha256_hex
from protocol.receipts import Receipt

NOW_S = 1_800_000_000.0


def receipt(requester: Identity, *, charge: int = 5, issued_at_s: float = NOW_S) -> bytes:
    provider = Identity.generate()
    return sign(Receipt(job_id=sha256_hex(b"job"), requester=requester.peer_id,
                        provider=provider.peer_id, outcome="accepted", reason="", charge=charge,
                        result_digest=sha256_hex(b"result"),
                        issued_at=int(issued_at_s * 1000)), requester).raw


def judge(data: bytes) -> tuple[bool, int]:
    g = Gossip(pubsub=None, clock=lambda: NOW_S)
    ok = g.validate(None, types.SimpleNamespace(data=data))
    return ok, g.dropped


def test_an_intact_receipt_passes() -> None:  # the canary for the refusals below
    assert judge(receipt(Identity.generate())) == (True, 0)


def test_a_tampered_receipt_is_dropped() -> None:
    raw = bytearray(receipt(Identity.generate()))
    raw[-70] ^= 1
    assert judge(bytes(raw)) == (False, 1)


def test_garbage_stale_and_oversize_messages_are_dropped() -> None:
    assert judge(b"\x93\x01\x02\x03") == (False, 1)
    assert judge(receipt(Identity.generate(), issued_at_s=NOW_S - 90 * 86_400)) == (False, 1)
    assert judge(b"\x00" * (MAX_MESSAGE + 1)) == (False, 1)
