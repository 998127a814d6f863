"""Hash-chained signed entries and the replay that checks them (pure: no SQLite here).

Each entry signs `DOMAIN || canonical msgpack(seq, ts, kind, job_id, peer, amount, memo,
prev)` with the owner's key; its hash is the sha256 of the same bytes and the next entry's
`prev`. Replaying the entries through escrow.py's rules rebuilds every balance, escrow
and cheque counter, which the stored tables must then match.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from ledger.errors import InvalidAmount
from ledger.escrow import EVENT_OF, KINDS, Kind, State, moves, step
from protocol.codec import pack
from protocol.errors import ProtocolError
from protocol.identity import Identity, verify

DOMAIN = b"offload/ledger_entry/1"
GENESIS = "0" * 64
Memo = dict[str, str | int]


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One signed line of the ledger."""

    seq: int
    ts: int
    kind: Kind
    job_id: str
    peer: str
    amount: int
    memo: Memo
    prev: str
    hash: str
    sig: bytes

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["sig"] = self.sig.hex()
        return doc


def entry_bytes(*, seq: int, ts: int, kind: str, job_id: str, peer: str, amount: int,
                memo: Memo, prev: str) -> bytes:
    return DOMAIN + pack({"seq": seq, "ts": ts, "kind": kind, "job_id": job_id, "peer": peer,
                          "amount": amount, "memo": memo, "prev": prev})


def make_entry(identity: Identity, *, seq: int, ts: int, kind: Kind, job_id: str = "",
               peer: str = "", amount: int, memo: Memo | None = None, prev: str) -> Entry:
    memo = dict(memo or {})
    data = entry_bytes(seq=seq, ts=ts, kind=kind, job_id=job_id, peer=peer, amount=amount,
                       memo=memo, prev=prev)
    return Entry(seq=seq, ts=ts, kind=kind, job_id=job_id, peer=peer, amount=amount,
                 memo=memo, prev=prev, hash=hashlib.sha256(data).hexdigest(),
                 sig=identity.sign(data))


@dataclasses.dataclass(frozen=True, slots=True)
class Fault:
    """Where a ledger stops verifying: the first bad entry (seq), or a table (seq None)."""

    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"entry {self.seq}" if self.seq is not None else "tables"
        return f"{where}: {self.reason}"


def check_link(entry: Entry, *, owner: str, seq: int, prev: str) -> str | None:
    """Why `entry` does not belong at `seq` after `prev`, or None."""
    if entry.seq != seq:
        return f"expected entry {seq} here (entries missing or reordered)"
    if entry.prev != prev:
        return "its prev hash does not match the entry before it (an entry was removed or edited)"
    if entry.kind not in KINDS:
        return f"unknown kind {entry.kind!r}"
    try:
        data = entry_bytes(seq=entry.seq, ts=entry.ts, kind=entry.kind, job_id=entry.job_id,
                           peer=entry.peer, amount=entry.amount, memo=entry.memo,
                           prev=entry.prev)
    except ProtocolError as exc:
        return f"fields cannot be encoded ({exc})"
    if hashlib.sha256(data).hexdigest() != entry.hash:
        return "its hash does not match its fields (edited behind the ledger's back)"
    try:
        verify(owner, data, entry.sig)
    except ProtocolError:
        return f"its signature is not {owner[:16]}'s"
    return None


@dataclasses.dataclass(slots=True)
class EscrowRow:
    provider: str
    amount: int
    state: State
    charge: int = 0
    reason: str = ""
    result: str = ""


class Replay:
    """Balances, escrows and cheque counters rebuilt from entries, checking every rule."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.escrows: dict[str, EscrowRow] = {}
        self.cheques_out: dict[str, tuple[int, int]] = {}
        self.cheques_in: dict[str, tuple[int, int]] = {}

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def apply(self, e: Entry) -> None:
        """Apply one entry; raise InvalidAmount or EscrowStateError if it breaks a rule."""
        if e.amount < 0 or (e.kind in ("deposit", "lock") and e.amount == 0):
            raise InvalidAmount(f"{e.kind} of {e.amount} micro-credits")
        rest = 0
        if e.kind in EVENT_OF:
            row = self.escrows.get(e.job_id)
            after = step(row.state if row else "none", EVENT_OF[e.kind], e.job_id)
            if row is None:
                row = self.escrows[e.job_id] = EscrowRow(e.peer, e.amount, after)
                if self.balance("available") < e.amount:
                    raise InvalidAmount(f"lock of {e.amount} exceeds the available balance")
            else:
                if e.peer != row.provider:
                    raise InvalidAmount(f"{e.kind} pays {e.peer[:16]}, escrow names "
                                        f"{row.provider[:16]}")
                rest = memo_int(e.memo, "rest") if e.kind == "release" else 0
                if e.amount + rest != row.amount:
                    raise InvalidAmount(f"{e.kind} moves {e.amount + rest}, escrow holds "
                                        f"{row.amount}")
                row.state, row.charge = after, e.amount if e.kind == "release" else 0
                row.reason = str(e.memo.get("reason", ""))
                row.result = str(e.memo.get("result", ""))
            if e.kind == "release":
                self._cheque(self.cheques_out, e, e.peer)
        elif e.kind == "cheque_in":
            self._cheque(self.cheques_in, e, e.peer)
        for src, dst, amount in moves(e.kind, peer=e.peer, amount=e.amount, rest=rest):
            self.balances[src] = self.balance(src) - amount
            self.balances[dst] = self.balance(dst) + amount

    @staticmethod
    def _cheque(table: dict[str, tuple[int, int]], e: Entry, peer: str) -> None:
        serial, cumulative = table.get(peer, (0, 0))
        new_serial, new_cumulative = memo_int(e.memo, "serial"), memo_int(e.memo, "cumulative")
        if new_serial <= serial or new_cumulative != cumulative + e.amount:
            raise InvalidAmount(f"cheque serial {new_serial}/cumulative {new_cumulative} does "
                                f"not follow {serial}/{cumulative} + {e.amount}")
        table[peer] = (new_serial, new_cumulative)


def memo_int(memo: Memo, key: str) -> int:
    value = memo.get(key)
    if not isinstance(value, int):
        raise InvalidAmount(f"memo lacks the integer {key!r}")
    return value
