"""The Ledger: deposits, escrow per job, receipts and cheques, reputation, verification.

Requester side: deposit -> lock(job) -> release(job, charge) | refund(job, reason).
A free job (quoted at zero): start_free(job) -> close_free(job, verdict), no escrow, a
receipt all the same. Every job has a record (records.py): records(), note().
Provider side: accept_cheque(raw), record_receipt(raw). Everyone: reputation(peer).
Amounts are integer micro-credits. Every method is one SQLite transaction.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from ledger import records
from ledger.chain import Entry, Fault, Memo, make_entry
from ledger.errors import (
    AmountOverCap,
    ChequeMisaddressed,
    ChequeOverCap,
    ChequeRefused,
    ChequeReplayed,
    ChequeRolledBack,
    EscrowStateError,
    InsufficientFunds,
    InvalidAmount,
    LedgerCorrupt,
    LocalLedgerError,
    ReceiptRefused,
    UnknownJob,
)
from ledger.escrow import (
    AVAILABLE,
    EARNED,
    ESCROW,
    EXTERNAL,
    PAID,
    REFUND_REASONS,
    Event,
    Kind,
    RefundReason,
    State,
    step,
)
from ledger.records import OPEN, Record, Status, row_record
from ledger.reputation import DEFAULT, NEUTRAL, Params, Tally, reputations
from ledger.settlement import LocalCredits, SettlementBackend
from ledger.store import ENTRY_COLUMNS, Store, head, insert_entry, row_entry, verify_file
from protocol.errors import InvalidMessage, ProtocolError
from protocol.identity import Identity
from protocol.limits import MAX_AMOUNT as MAX_AMOUNT  # one cap, owned by protocol/
from protocol.limits import MICRO
from protocol.messages import check_peer_id, check_sha256
from protocol.receipts import (
    MAX_REASON,
    MAX_RECEIPT_SIZE,
    Cheque,
    Receipt,
    open_cheque,
    open_receipt,
)
from protocol.signing import Signed, open_signed, sign

Clock = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Balance:
    """This node's books. available + escrow + paid == deposited, always."""

    available: int
    escrow: int
    paid: int
    """Released to providers (the sum of our latest cheques)."""
    earned: int
    """Promised to us by the cheques we accepted."""
    deposited: int


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One escrow: a job this node submitted."""

    job_id: str
    provider: str
    amount: int
    """What was locked: the quoted maximum."""
    state: State
    charge: int
    reason: str
    result: str
    """sha256 of the signed result released against ("" if none)."""
    locked_at: int
    closed_at: int | None

    @property
    def verified(self) -> bool:
        """Paid for a result whose signature and outputs this node verified."""
        return self.state == "released"


@dataclasses.dataclass(frozen=True, slots=True)
class Payment:
    """What a release produces: the entry, and the receipt and cheque to send the provider."""

    entry: Entry
    receipt: Signed[Receipt]
    cheque: Signed[Cheque]


class Ledger:
    """This node's signed, hash-chained books in one SQLite file (`Ledger.open(...)`)."""

    def __init__(self, store: Store, identity: Identity, clock: Clock,
                 backend: SettlementBackend, params: Params) -> None:
        self._store = store
        self._id = identity
        self._clock = clock
        self.backend = backend
        self.params = params
        self._rep_cache: tuple[tuple[int, int], dict[str, float]] | None = None

    @classmethod
    def open(cls, path: str | Path, identity: Identity, *, clock: Clock | None = None,
             backend: SettlementBackend | None = None, params: Params = DEFAULT,
             timeout_s: float = 30.0) -> Ledger:
        """Open (creating if needed) the ledger at `path` (":memory:" for tests) as
        `identity`; WrongOwner if it belongs to another key."""
        store = Store(path, identity.peer_id, timeout_s=timeout_s)
        return cls(store, identity, clock or wall_ms, backend or LocalCredits(), params)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._store.close()

    @property
    def peer_id(self) -> str:
        return self._id.peer_id

    # -- requester side ----------------------------------------------------------------

    def deposit(self, amount: int) -> Entry:
        """Fund the available balance through the settlement backend."""
        _check_amount(amount)
        b = self.balance()
        if max(b.available, b.deposited) + amount > MAX_AMOUNT:
            raise AmountOverCap(f"depositing {_fmt(amount)} credits would take the books past "
                                f"the cap of {_fmt(MAX_AMOUNT)} credits (available "
                                f"{_fmt(b.available)}, deposited {_fmt(b.deposited)} in all); "
                                "deposit less")
        ref = self.backend.fund(self.peer_id, amount)
        return self._append("deposit", amount=amount,
                            memo={"channel": self.backend.channel, "ref": ref})

    def lock(self, job_id: str, provider: str, amount: int) -> Entry:
        """Move a job's quoted maximum from available into escrow before it runs."""
        _check_amount(amount)
        _check_job(job_id)
        self._check_peer(provider, "provider")
        with self._store.write() as db:
            available = _account(db, AVAILABLE)
            if available < amount:
                raise InsufficientFunds(
                    f"locking {_fmt(amount)} credits for job {job_id[:16]} needs more than the "
                    f"{_fmt(available)} available; run `offload ledger deposit AMOUNT` or "
                    "lower --max-price")
            step(self._state(db, job_id), "lock", job_id)
            e = self._entry(db, "lock", job_id=job_id, peer=provider, amount=amount)
            insert_entry(db, e)
            db.execute("INSERT INTO escrows (job_id, provider, amount, state, locked_at) "
                       "VALUES (?, ?, ?, 'locked', ?)", (job_id, provider, amount, e.ts))
            records.start(db, job_id, provider, amount, e.ts)
        return e

    def release(self, job_id: str, charge: int, *, result_digest: str) -> Payment:
        """Pay `charge` of a verified result to the provider and refund the rest of the
        escrow. Returns the signed receipt and the provider's new cumulative cheque."""
        _check_job(job_id)
        _check_sha(result_digest, "result_digest")
        with self._store.write() as db:
            provider, amount = self._open_escrow(db, job_id, "release")
            if not 0 <= charge <= amount:
                raise InvalidAmount(f"charge {charge} of job {job_id[:16]} is outside 0.."
                                    f"{amount}, the escrowed maximum; charge at most the quote")
            now = self._clock()
            receipt = sign(Receipt(job_id=job_id, requester=self.peer_id, provider=provider,
                                   outcome="accepted", reason="", charge=charge,
                                   result_digest=result_digest, issued_at=now), self._id)
            serial, cumulative = _cheque_state(db, "out", provider)
            if cumulative + charge > MAX_AMOUNT:
                raise AmountOverCap(f"paying {charge} more to {provider[:16]} would take its "
                                    f"cheques past the cap of {MAX_AMOUNT} micro-credits")
            cheque = sign(Cheque(payer=self.peer_id, payee=provider,
                                 channel=self.backend.channel, cumulative=cumulative + charge,
                                 serial=serial + 1, issued_at=now), self._id)
            e = self._entry(db, "release", job_id=job_id, peer=provider, amount=charge,
                            memo={"rest": amount - charge, "receipt": receipt.digest,
                                  "result": result_digest, "serial": serial + 1,
                                  "cumulative": cumulative + charge})
            insert_entry(db, e, rest=amount - charge)
            self._close_escrow(db, job_id, "released", charge, "", result_digest, e.ts)
            records.close(db, job_id, "accepted", e.ts, charge=charge, result=result_digest)
            _put_cheque(db, "out", provider, cheque)
            _put_receipt(db, receipt)
        return Payment(entry=e, receipt=receipt, cheque=cheque)

    def refund(self, job_id: str, reason: RefundReason, *, detail: str = "",
               result_digest: str = "") -> Signed[Receipt] | None:
        """Return the whole escrow to available. A rejection (name the refused result) or a
        timeout is evidence against the provider: its signed receipt is returned; a
        failure or a cancellation produces none."""
        _check_job(job_id)
        if reason not in REFUND_REASONS:
            raise LocalLedgerError(f"refund reason must be one of {REFUND_REASONS}")
        if reason == "rejected":
            _check_sha(result_digest, "result_digest (a rejection names the result)")
        with self._store.write() as db:
            provider, amount = self._open_escrow(db, job_id, "refund")
            receipt = None
            memo: Memo = {"reason": reason, "result": result_digest}
            if reason in ("rejected", "timeout"):
                why = detail or ("rejected" if reason == "rejected" else "")
                receipt = sign(Receipt(
                    job_id=job_id, requester=self.peer_id, provider=provider, outcome=reason,
                    reason=why[:MAX_REASON], charge=0,
                    result_digest=result_digest if reason == "rejected" else "",
                    issued_at=self._clock()), self._id)
                memo["receipt"] = receipt.digest
                _put_receipt(db, receipt)
            e = self._entry(db, "refund", job_id=job_id, peer=provider, amount=amount,
                            memo=memo)
            insert_entry(db, e)
            self._close_escrow(db, job_id, "refunded", 0, reason, result_digest, e.ts)
            records.close(db, job_id, reason, e.ts, result=result_digest, reason=detail)
        return receipt

    # -- free jobs: a record and a receipt, no escrow ----------------------------------

    def start_free(self, job_id: str, provider: str) -> None:
        """Record a job quoted at zero: nothing is escrowed, but it is a job all the same
        (`records`), and its verdict gets a signed receipt (`close_free`)."""
        _check_job(job_id)
        self._check_peer(provider, "provider")
        with self._store.write() as db:
            if self._state(db, job_id) != "none":
                raise EscrowStateError(f"job {job_id[:16]} has an escrow; it is not free")
            records.start(db, job_id, provider, 0, self._clock())

    def close_free(self, job_id: str, verdict: Status, *, detail: str = "",
                   result_digest: str = "") -> Signed[Receipt] | None:
        """The verdict on a free job, once: accepted, rejected or timeout is signed as a
        receipt with charge 0 (evidence for reputation, returned to send on); failed,
        cancelled, and a rejection that names no result produce none. EscrowStateError if
        the job is not an open free job."""
        _check_job(job_id)
        if verdict not in ("accepted", *REFUND_REASONS):
            raise LocalLedgerError(f"a free job's verdict must be accepted or one of "
                                   f"{REFUND_REASONS}")
        if verdict == "accepted" or result_digest:
            _check_sha(result_digest, "result_digest (the verdict names the result)")
        with self._store.write() as db:
            row = db.execute("SELECT provider, status, max_charge FROM records WHERE job_id = ?",
                             (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(f"no record of job {job_id[:16]}; start it first")
            if row[1] not in OPEN or row[2] != 0 or self._state(db, job_id) != "none":
                raise EscrowStateError(f"job {job_id[:16]} is not an open free job "
                                       f"({row[1]}); its verdict is given once")
            now = self._clock()
            receipt = None
            if verdict in ("accepted", "timeout") or (verdict == "rejected"
                                                      and result_digest):
                why = detail or ("rejected" if verdict == "rejected" else "")
                receipt = sign(Receipt(
                    job_id=job_id, requester=self.peer_id, provider=str(row[0]),
                    outcome=verdict, reason="" if verdict == "accepted" else why[:MAX_REASON],
                    charge=0, result_digest="" if verdict == "timeout" else result_digest,
                    issued_at=now), self._id)
                _put_receipt(db, receipt)
            records.close(db, job_id, verdict, now, result=result_digest, reason=detail)
        return receipt

    def note(self, job_id: str, *, phases: dict[str, float] | None = None,
             out_dir: str | None = None, result_status: str | None = None,
             held: bool = False, detached: bool = False) -> None:
        """Add timings, the result's place or status to a job's record (none: no-op);
        `held` marks an open job's payment as held back, `detached` a running job as
        running on without us."""
        _check_job(job_id)
        with self._store.write() as db:
            records.note(db, job_id, phases=phases, out_dir=out_dir,
                         result_status=result_status)
            if held or detached:
                db.execute("UPDATE records SET status = ? WHERE job_id = ? AND "
                           "status IN ('running', 'detached')",
                           ("held" if held else "detached", job_id))

    # -- provider side -----------------------------------------------------------------

    def accept_cheque(self, raw: bytes) -> Signed[Cheque]:
        """Verify and keep a payer's cheque; ChequeRefused (named) unless it is addressed to
        us on our channel and its serial rises and its cumulative amount does not fall."""
        try:
            signed = open_cheque(raw)
        except ProtocolError as exc:
            raise ChequeRefused(f"cheque does not verify: {exc}") from exc
        c = signed.message
        if c.payee != self.peer_id or c.channel != self.backend.channel:
            raise ChequeMisaddressed(f"cheque pays {c.payee[:16]} on channel {c.channel!r}; "
                                     f"this node is {self.peer_id[:16]} on "
                                     f"{self.backend.channel!r}")
        with self._store.write() as db:
            serial, cumulative = _cheque_state(db, "in", c.payer)
            if c.serial <= serial:
                raise ChequeReplayed(f"cheque serial {c.serial} from {c.payer[:16]} is not "
                                     f"above the last accepted serial {serial}; each cheque "
                                     "is accepted once")
            if c.cumulative < cumulative:
                raise ChequeRolledBack(f"cheque from {c.payer[:16]} promises {c.cumulative} "
                                       f"in all, less than the {cumulative} already promised")
            e = self._entry(db, "cheque_in", peer=c.payer, amount=c.cumulative - cumulative,
                            memo={"serial": c.serial, "cumulative": c.cumulative,
                                  "cheque": signed.digest})
            try:
                insert_entry(db, e)
            except AmountOverCap as exc:
                raise ChequeOverCap(f"cheque from {c.payer[:16]} refused: earned would pass "
                                    f"{MAX_AMOUNT} micro-credits ({exc})") from exc
            _put_cheque(db, "in", c.payer, signed)
        return signed

    def latest_cheque(self, peer: str, *, direction: str = "in") -> Signed[Cheque] | None:
        """The last cheque accepted from (`in`) or issued to (`out`) `peer`."""
        rows = self._store.query("SELECT raw FROM cheques WHERE direction = ? AND peer = ?",
                                 (direction, peer))
        return open_cheque(bytes(rows[0][0])) if rows else None

    def record_receipt(self, raw: bytes, *, now_ms: int | None = None) -> Receipt | None:
        """Keep a requester's receipt as evidence (from a provider's own job or gossip).
        Returns it if new, None if already known; ReceiptRefused if it does not check."""
        try:
            signed = open_receipt(raw, self._clock() if now_ms is None else now_ms)
        except ProtocolError as exc:
            raise ReceiptRefused(f"receipt refused: {exc}") from exc
        with self._store.write() as db:
            return signed.message if _put_receipt(db, signed) else None

    # -- reading -----------------------------------------------------------------------

    def balance(self) -> Balance:
        with self._store.read() as db:
            rows = dict(db.execute("SELECT name, balance FROM accounts").fetchall())
        return Balance(available=rows.get(AVAILABLE, 0), escrow=rows.get(ESCROW, 0),
                       paid=sum(v for k, v in rows.items() if k.startswith(PAID)),
                       earned=rows.get(EARNED, 0), deposited=-rows.get(EXTERNAL, 0))

    def accounts(self) -> dict[str, int]:
        return dict(self._store.query("SELECT name, balance FROM accounts ORDER BY name"))

    def job(self, job_id: str) -> Job:
        rows = self._store.query(f"SELECT {_JOB} FROM escrows WHERE job_id = ?", (job_id,))
        if not rows:
            raise UnknownJob(f"no escrow for job {job_id[:16]}; see `offload jobs`")
        return Job(*rows[0])

    def jobs(self) -> list[Job]:
        return [Job(*r) for r in self._store.query(
            f"SELECT {_JOB} FROM escrows ORDER BY locked_at, rowid")]

    def records(self, *, limit: int | None = None,
                status: Status | None = None) -> list[Record]:
        """Every job this node submitted, oldest first (the latest `limit`, of `status`
        if given). Escrows older than records (no row) are read from the escrow table."""
        with self._store.read() as db:
            rows = [row_record(r) for r in db.execute(
                f"SELECT {records.COLUMNS} FROM records ORDER BY started_at, rowid")]
            known = {r.job_id for r in rows}
            legacy = [_legacy_record(Job(*r)) for r in db.execute(
                f"SELECT {_JOB} FROM escrows ORDER BY locked_at, rowid") if r[0] not in known]
        found = sorted(rows + legacy, key=lambda r: r.started_at)
        if status is not None:
            found = [r for r in found if r.status == status]
        return found[-limit:] if limit is not None else found

    def record(self, job_id: str) -> Record:
        rows = self._store.query(f"SELECT {records.COLUMNS} FROM records WHERE job_id = ?",
                                 (job_id,))
        if not rows:
            raise UnknownJob(f"no record of job {job_id[:16]}; see `offload jobs`")
        return row_record(rows[0])

    def history(self, *, limit: int | None = None) -> list[Entry]:
        """Entries, oldest first (the latest `limit` of them if given)."""
        rows = self._store.query(
            f"SELECT {ENTRY_COLUMNS} FROM entries ORDER BY seq DESC LIMIT ?",
            (-1 if limit is None else limit,))
        return [row_entry(r) for r in reversed(rows)]

    def verify(self) -> Fault | None:
        """Check every link, signature and rule, and every balance against the entries;
        the first fault found, or None if the file verifies."""
        with self._store.read() as db:
            return verify_file(db, self.peer_id)

    def check(self) -> None:
        """verify(), raising LedgerCorrupt on a fault."""
        fault = self.verify()
        if fault is not None:
            raise LedgerCorrupt(f"{self._store.path} does not verify at {fault}; restore it "
                                "from a backup or export it for inspection")

    def receipts(self) -> list[Signed[Receipt]]:
        rows = self._store.query("SELECT raw FROM receipts ORDER BY issued_at, digest")
        return [open_signed(bytes(r[0]), Receipt, max_size=MAX_RECEIPT_SIZE) for r in rows]

    def export(self) -> dict[str, Any]:
        """Everything, JSON-ready: entries with hashes and signatures, jobs, receipts."""
        return {"owner": self.peer_id, "balance": dataclasses.asdict(self.balance()),
                "accounts": self.accounts(),
                "entries": [e.to_json() for e in self.history()],
                "jobs": [_job_json(j) for j in self.jobs()],
                "receipts": [{**r.message.to_wire(), "digest": r.digest, "raw": r.raw.hex()}
                             for r in self.receipts()]}

    # -- reputation --------------------------------------------------------------------

    def evidence(self) -> dict[tuple[str, str], Tally]:
        """Latest receipts (at most params.pair_cap) per (requester, provider), tallied."""
        rows = self._store.query(
            "SELECT requester, provider, SUM(outcome = 'accepted'), SUM(outcome != 'accepted') "
            "FROM (SELECT requester, provider, outcome, ROW_NUMBER() OVER (PARTITION BY "
            "requester, provider ORDER BY issued_at DESC, digest) AS n FROM receipts) "
            "WHERE n <= ? GROUP BY requester, provider", (self.params.pair_cap,))
        return {(r, p): Tally(good=g, bad=b) for r, p, g, b in rows}

    def reputations(self, *, pre_trusted: Collection[str] = ()) -> dict[str, float]:
        """Peer -> 0..1 for every provider with receipts (see reputation.py); for
        scheduler Observations.reputation. Peers missing are strangers (0.5)."""
        key = cast(tuple[int, int], tuple(self._store.query(
            "SELECT COALESCE(MAX(rowid), 0), COUNT(*) FROM receipts")[0]))
        if not pre_trusted and self._rep_cache and self._rep_cache[0] == key:
            return dict(self._rep_cache[1])
        reps = reputations(self.evidence(), self.peer_id, pre_trusted=pre_trusted,
                           params=self.params)
        if not pre_trusted:
            self._rep_cache = (key, reps)
        return dict(reps)

    def reputation(self, peer: str) -> float:
        return self.reputations().get(peer, NEUTRAL)

    # -- internals ---------------------------------------------------------------------

    def _append(self, kind: Kind, *, amount: int, memo: Memo) -> Entry:
        with self._store.write() as db:
            e = self._entry(db, kind, amount=amount, memo=memo)
            insert_entry(db, e)
        return e

    def _entry(self, db: sqlite3.Connection, kind: Kind, *, job_id: str = "", peer: str = "",
               amount: int, memo: Memo | None = None) -> Entry:
        seq, prev = head(db)
        return make_entry(self._id, seq=seq + 1, ts=self._clock(), kind=kind, job_id=job_id,
                          peer=peer, amount=amount, memo=memo, prev=prev)

    @staticmethod
    def _state(db: sqlite3.Connection, job_id: str) -> State:
        row = db.execute("SELECT state FROM escrows WHERE job_id = ?", (job_id,)).fetchone()
        return "none" if row is None else cast(State, row[0])

    def _open_escrow(self, db: sqlite3.Connection, job_id: str, event: Event) -> tuple[str, int]:
        step(self._state(db, job_id), event, job_id)
        row = db.execute("SELECT provider, amount FROM escrows WHERE job_id = ?",
                         (job_id,)).fetchone()
        return str(row[0]), int(row[1])

    @staticmethod
    def _close_escrow(db: sqlite3.Connection, job_id: str, state: State, charge: int, reason: str,
                      result: str, ts: int) -> None:
        cur = db.execute("UPDATE escrows SET state = ?, charge = ?, reason = ?, result = ?, "
                         "closed_at = ? WHERE job_id = ? AND state = 'locked'",
                         (state, charge, reason, result, ts, job_id))
        if cur.rowcount != 1:  # pragma: no cover - the write lock makes this impossible
            raise EscrowStateError(f"escrow of job {job_id[:16]} changed under its own lock")

    def _check_peer(self, peer: str, what: str) -> None:
        try:
            check_peer_id(peer, what)
        except InvalidMessage as exc:
            raise LocalLedgerError(str(exc)) from None
        if peer == self.peer_id:
            raise LocalLedgerError(f"{what} is this node itself; a node does not pay itself")


_JOB = "job_id, provider, amount, state, charge, reason, result, locked_at, closed_at"


def _legacy_record(j: Job) -> Record:
    status: Status = ("running" if j.state == "locked" else "accepted"
                      if j.state == "released" else cast(Status, j.reason or "failed"))
    return Record(job_id=j.job_id, provider=j.provider, status=status, charge=j.charge,
                  max_charge=j.amount, started_at=j.locked_at, ended_at=j.closed_at,
                  phases={}, result=j.result, result_status="", out_dir="", reason="")


def _job_json(j: Job) -> dict[str, Any]:
    return {**dataclasses.asdict(j), "verified": j.verified}


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidAmount(f"amount must be a whole number of micro-credits in 1..{MAX_AMOUNT}"
                            f", not {amount!r}")


def _check_job(job_id: str) -> None:
    _check_sha(job_id, "job_id")


def _check_sha(value: str, what: str) -> None:
    try:
        check_sha256(value, what)
    except InvalidMessage as exc:
        raise LocalLedgerError(str(exc)) from None


def _fmt(micro: int) -> str:
    return f"{micro / MICRO:.6f}"


def _account(db: sqlite3.Connection, name: str) -> int:
    row = db.execute("SELECT balance FROM accounts WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def _cheque_state(db: sqlite3.Connection, direction: str, peer: str) -> tuple[int, int]:
    row = db.execute("SELECT serial, cumulative FROM cheques WHERE direction = ? AND peer = ?",
                     (direction, peer)).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _put_cheque(db: sqlite3.Connection, direction: str, peer: str, cheque: Signed[Cheque]) -> None:
    db.execute("INSERT OR REPLACE INTO cheques VALUES (?, ?, ?, ?, ?)",
               (direction, peer, cheque.message.serial, cheque.message.cumulative, cheque.raw))


def _put_receipt(db: sqlite3.Connection, signed: Signed[Receipt]) -> bool:
    r = signed.message
    cur = db.execute("INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (signed.digest, r.job_id, r.requester, r.provider, r.outcome, r.charge,
                      r.issued_at, signed.raw))
    return bool(cur.rowcount == 1)
