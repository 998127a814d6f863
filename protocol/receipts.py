"""Payment evidence: the requester's signed Receipt of a result and its cumulative Cheque."""

from __future__ import annotations

from typing import ClassVar, Literal

from protocol.errors import Expired, InvalidMessage
from protocol.limits import MAX_AMOUNT, MAX_SERIAL, MAX_TIME_MS
from protocol.messages import Signable, check_peer_id, check_sha256
from protocol.schema import field, message
from protocol.signing import Signed, open_signed

MAX_RECEIPT_SIZE = 2048
"""Cap, in bytes, of a signed Receipt envelope (a real one is about 600)."""
MAX_CHEQUE_SIZE = 1024
MAX_REASON = 256
RECEIPT_MAX_AGE_MS = 30 * 24 * 3600 * 1000
RECEIPT_MAX_AHEAD_MS = 5 * 60 * 1000

Outcome = Literal["accepted", "rejected", "timeout"]


@message
class Receipt(Signable):
    """A requester's verdict on one job of one provider: evidence the provider cannot forge.

    accepted: the result verified and `charge` micro-credits were released to the provider;
    rejected: a result came but was refused (`reason` says why), nothing was paid;
    timeout: no result came in time, nothing was paid.
    """

    type_name: ClassVar[str] = "receipt"
    signer_field: ClassVar[str] = "requester"

    job_id: str = field(max_len=64)
    requester: str = field(max_len=64)
    provider: str = field(max_len=64)
    outcome: Outcome
    reason: str = field(max_len=MAX_REASON)
    charge: int = field(ge=0, le=MAX_AMOUNT)
    result_digest: str = field(max_len=64)
    """sha256 of the signed JobResult judged; "" for a timeout."""
    issued_at: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        check_sha256(self.job_id, "job_id")
        check_peer_id(self.requester, "requester")
        check_peer_id(self.provider, "provider")
        if self.requester == self.provider:
            raise InvalidMessage("a receipt about oneself is no evidence; requester must "
                                 "differ from provider")
        if self.outcome != "accepted" and self.charge != 0:
            raise InvalidMessage(f"a {self.outcome} receipt releases nothing; charge must be 0")
        if self.outcome == "rejected" and not self.reason:
            raise InvalidMessage("a rejected receipt must say why in reason")
        if self.outcome == "timeout":
            if self.result_digest:
                raise InvalidMessage("a timeout receipt judges no result; result_digest "
                                     "must be empty")
        else:
            check_sha256(self.result_digest, "result_digest")


@message
class Cheque(Signable):
    """The total a payer has released to one payee so far, signed by the payer.

    Each new cheque replaces the last: `cumulative` never falls and `serial` always
    rises, so a payee keeps only the latest and a replayed or rolled-back cheque is
    refused. `channel` names the settlement backend's channel ("local" for LocalCredits).
    """

    type_name: ClassVar[str] = "cheque"
    signer_field: ClassVar[str] = "payer"

    payer: str = field(max_len=64)
    payee: str = field(max_len=64)
    channel: str = field(max_len=64)
    cumulative: int = field(ge=0, le=MAX_AMOUNT)
    serial: int = field(ge=1, le=MAX_SERIAL)
    issued_at: int = field(ge=0, le=MAX_TIME_MS)

    def validate(self) -> None:
        check_peer_id(self.payer, "payer")
        check_peer_id(self.payee, "payee")
        if self.payer == self.payee:
            raise InvalidMessage("a cheque to oneself pays nothing; payer must differ from "
                                 "payee")
        if not self.channel:
            raise InvalidMessage("channel must name the settlement channel, e.g. 'local'")


def check_receipt(raw: bytes, now_ms: int, *, max_age_ms: int = RECEIPT_MAX_AGE_MS,
                  max_ahead_ms: int = RECEIPT_MAX_AHEAD_MS) -> Receipt:
    """Validate a receipt from a peer (e.g. in a pubsub validator); raises a
    RemoteProtocolError on a size over MAX_RECEIPT_SIZE, any decode or field flaw, a bad
    signature, or an `issued_at` outside [now - max_age_ms, now + max_ahead_ms]."""
    return open_receipt(raw, now_ms, max_age_ms=max_age_ms, max_ahead_ms=max_ahead_ms).message


def open_receipt(raw: bytes, now_ms: int, *, max_age_ms: int = RECEIPT_MAX_AGE_MS,
                 max_ahead_ms: int = RECEIPT_MAX_AHEAD_MS) -> Signed[Receipt]:
    """`check_receipt`, keeping the signature and digest (what a ledger stores)."""
    signed = open_signed(raw, Receipt, max_size=MAX_RECEIPT_SIZE)
    issued = signed.message.issued_at
    if issued > now_ms + max_ahead_ms:
        raise Expired(f"receipt of job {signed.message.job_id[:12]} is dated "
                      f"{issued - now_ms} ms in the future")
    if issued < now_ms - max_age_ms:
        raise Expired(f"receipt of job {signed.message.job_id[:12]} is older than "
                      f"{max_age_ms} ms")
    return signed


def open_cheque(raw: bytes) -> Signed[Cheque]:
    """Decode and verify a cheque; a RemoteProtocolError on any flaw or a size over the cap."""
    return open_signed(raw, Cheque, max_size=MAX_CHEQUE_SIZE)
