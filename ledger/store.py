"""The SQLite file: schema, pragmas, write transactions, entry rows, and the full check.

Entries are the truth; `accounts`, `escrows` and `cheques` are derived tables written in
the same transaction as the entry that changes them, and `verify_file` rebuilds them
from the entries to catch any edit made behind the ledger's back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from ledger.chain import GENESIS, Entry, Fault, Memo, Replay, check_link
from ledger.errors import AmountOverCap, LedgerError, LedgerUnavailable, WrongOwner
from ledger.escrow import Kind, moves
from ledger.records import SCHEMA as RECORDS_SCHEMA
from protocol.codec import pack, unpack
from protocol.errors import ProtocolError
from protocol.limits import MAX_AMOUNT
from protocol.receipts import MAX_CHEQUE_SIZE, MAX_RECEIPT_SIZE, Cheque, Receipt
from protocol.signing import open_signed

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, kind TEXT NOT NULL,
    job_id TEXT NOT NULL, peer TEXT NOT NULL, amount INTEGER NOT NULL, memo BLOB NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, sig BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (name TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS escrows (
    job_id TEXT PRIMARY KEY, provider TEXT NOT NULL, amount INTEGER NOT NULL,
    state TEXT NOT NULL, charge INTEGER NOT NULL DEFAULT 0, reason TEXT NOT NULL DEFAULT '',
    result TEXT NOT NULL DEFAULT '', locked_at INTEGER NOT NULL, closed_at INTEGER);
CREATE TABLE IF NOT EXISTS cheques (
    direction TEXT NOT NULL, peer TEXT NOT NULL, serial INTEGER NOT NULL,
    cumulative INTEGER NOT NULL, raw BLOB NOT NULL, PRIMARY KEY (direction, peer));
CREATE TABLE IF NOT EXISTS receipts (
    digest TEXT PRIMARY KEY, job_id TEXT NOT NULL, requester TEXT NOT NULL,
    provider TEXT NOT NULL, outcome TEXT NOT NULL, charge INTEGER NOT NULL,
    issued_at INTEGER NOT NULL, raw BLOB NOT NULL, UNIQUE (job_id, requester));
CREATE INDEX IF NOT EXISTS receipts_pair ON receipts (requester, provider, issued_at);
""" + RECORDS_SCHEMA
MAX_MEMO = 4096


class Store:
    """One connection to a ledger file; every write is one IMMEDIATE transaction."""

    def __init__(self, path: str | Path, owner: str, *, timeout_s: float = 30.0) -> None:
        self.path = str(path)
        self.owner = owner
        self._mutex = threading.RLock()
        with self.named_errors():
            self.db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                      check_same_thread=False)
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            if self.path != ":memory:":
                self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            with self.write() as db:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                found = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if found.get("owner", owner) != owner:
                    raise WrongOwner(f"{self.path} is the ledger of {found['owner']}, not of "
                                     f"{owner}; open it with that node's --home")
                db.execute("INSERT OR IGNORE INTO meta VALUES ('owner', ?), ('schema', ?)",
                           (owner, SCHEMA_VERSION))
        except sqlite3.OperationalError as exc:
            self.db.close()
            raise unavailable(self.path, exc) from None
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        with self._mutex:
            self.db.close()

    @contextlib.contextmanager
    def named_errors(self) -> Iterator[None]:
        """SQLite's operational errors (disk full, read-only, locked) as LedgerUnavailable."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise unavailable(self.path, exc) from None

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement, so
        two writers (threads, connections or processes) never interleave."""
        with self._mutex, self.named_errors():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """All rows of one SELECT, never interleaved with another thread's transaction."""
        with self._mutex, self.named_errors():
            return self.db.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._mutex, self.named_errors():
            self.db.execute("BEGIN")
            try:
                yield self.db
            finally:
                if self.db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("COMMIT")


def unavailable(path: str, exc: sqlite3.Error) -> LedgerUnavailable:
    """A one-line error that names why the file at `path` cannot be used now."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    where = os.path.dirname(os.path.abspath(path))
    try:
        fs = os.statvfs(where)
        full = fs.f_bavail * fs.f_frsize < 64 * 1024
        readonly = bool(fs.f_flag & os.ST_RDONLY)
    except OSError:
        full = readonly = False
    if code == sqlite3.SQLITE_FULL or (full and code in (sqlite3.SQLITE_IOERR, 0)):
        why = f"the disk is full; free space on {where}"
    elif code == sqlite3.SQLITE_READONLY or readonly:
        why = f"{where} is read-only; make the home writable"
    elif code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        why = "another process holds its write lock; let it finish"
    elif code == sqlite3.SQLITE_CANTOPEN:
        why = f"it cannot be opened; check that {where} exists and is writable"
    else:
        why = f"{exc}; check the disk"
    return LedgerUnavailable(f"ledger {path} cannot be used now: {why}, then run the "
                             f"command again ({exc})")


def head(db: sqlite3.Connection) -> tuple[int, str]:
    row = db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def insert_entry(db: sqlite3.Connection, e: Entry, *, rest: int = 0) -> None:
    """Append `e` and apply the credit it moves to `accounts` (inside a write transaction);
    AmountOverCap, before anything is written, if an amount or a balance would leave
    -MAX_AMOUNT..MAX_AMOUNT (SQLite would turn an overflowing sum into a float)."""
    deltas = _account_deltas(e, rest)
    for name, delta in deltas.items():
        row = db.execute("SELECT balance FROM accounts WHERE name = ?", (name,)).fetchone()
        after = (0 if row is None else row[0]) + delta
        if type(after) is not int or not -MAX_AMOUNT <= after <= MAX_AMOUNT:
            raise AmountOverCap(f"account {name!r} would hold {after} micro-credits, beyond "
                                f"the cap of {MAX_AMOUNT}; nothing was written")
    db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (e.seq, e.ts, e.kind, e.job_id, e.peer, e.amount, pack(e.memo), e.prev, e.hash,
                e.sig))
    for name, delta in deltas.items():
        db.execute("INSERT INTO accounts VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                   "SET balance = balance + excluded.balance", (name, delta))


def _account_deltas(e: Entry, rest: int) -> dict[str, int]:
    for what, value in ((e.kind, e.amount), ("rest", rest)):
        if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
            raise AmountOverCap(f"{what} of {value} micro-credits is outside 0..{MAX_AMOUNT}; "
                                "nothing was written")
    deltas: dict[str, int] = {}
    for src, dst, amount in moves(e.kind, peer=e.peer, amount=e.amount, rest=rest):
        deltas[src] = deltas.get(src, 0) - amount
        deltas[dst] = deltas.get(dst, 0) + amount
    return deltas


ENTRY_COLUMNS = "seq, ts, kind, job_id, peer, amount, memo, prev, hash, sig"


def row_entry(row: tuple[Any, ...]) -> Entry:
    """An Entry from its row; LedgerError if the memo is not a canonical msgpack map."""
    seq, ts, kind, job_id, peer, amount, memo, prev, hash_, sig = row
    try:
        value = unpack(bytes(memo), max_size=MAX_MEMO)
    except (ProtocolError, TypeError) as exc:
        raise LedgerError(f"entry {seq}: memo is not canonical msgpack ({exc})") from exc
    if not isinstance(value, dict):
        raise LedgerError(f"entry {seq}: memo is not a map")
    return Entry(seq=seq, ts=ts, kind=cast(Kind, kind), job_id=job_id, peer=peer,
                 amount=amount, memo=cast(Memo, value), prev=prev, hash=hash_,
                 sig=bytes(sig) if isinstance(sig, bytes) else b"")


def verify_file(db: sqlite3.Connection, owner: str) -> Fault | None:
    """Check every link, signature and rule, then every derived table; the first fault."""
    replay = Replay()
    seq, prev = 1, GENESIS
    for row in db.execute(f"SELECT {ENTRY_COLUMNS} FROM entries ORDER BY seq"):
        try:
            e = row_entry(row)
        except LedgerError as exc:
            return Fault(row[0], str(exc).split(": ", 1)[1])
        why = check_link(e, owner=owner, seq=seq, prev=prev)
        if why is not None:
            return Fault(e.seq if e.seq == seq else seq, why)
        try:
            replay.apply(e)
        except LedgerError as exc:
            return Fault(e.seq, f"breaks a ledger rule: {exc}")
        seq, prev = seq + 1, e.hash
    return _check_tables(db, replay)


def _check_tables(db: sqlite3.Connection, replay: Replay) -> Fault | None:
    stored = {str(n): int(b) for n, b in db.execute("SELECT name, balance FROM accounts")}
    for name in sorted(set(stored) | set(replay.balances)):
        if stored.get(name, 0) != replay.balance(name):
            return Fault(None, f"account {name!r} holds {stored.get(name, 0)} but its entries "
                               f"add up to {replay.balance(name)} micro-credits")
    rows = {r[0]: r[1:] for r in db.execute(
        "SELECT job_id, provider, amount, state, charge, reason, result FROM escrows")}
    for job_id in sorted(set(rows) | set(replay.escrows)):
        want = replay.escrows.get(job_id)
        expected = (None if want is None else
                    (want.provider, want.amount, want.state, want.charge, want.reason,
                     want.result))
        if rows.get(job_id) != expected:
            return Fault(None, f"escrow of job {job_id[:16]} is {rows.get(job_id)} but its "
                               f"entries say {expected}")
    for direction, table in (("out", replay.cheques_out), ("in", replay.cheques_in)):
        found = {r[0]: (r[1], r[2], bytes(r[3])) for r in db.execute(
            "SELECT peer, serial, cumulative, raw FROM cheques WHERE direction = ?",
            (direction,))}
        for peer in sorted(set(found) | set(table)):
            got = found.get(peer)
            if got is None or (got[0], got[1]) != table.get(peer):
                return Fault(None, f"cheque {direction} for {peer[:16]} does not match the "
                                   "entries")
            why = _cheque_row_problem(got[2], got[0], got[1])
            if why:
                return Fault(None, f"cheque {direction} for {peer[:16]}: {why}")
    for row in db.execute("SELECT digest, job_id, requester, provider, outcome, charge, "
                          "issued_at, raw FROM receipts ORDER BY issued_at, digest"):
        why = _receipt_row_problem(row)
        if why:
            return Fault(None, f"receipt {str(row[0])[:16]}: {why}")
    return None


def _cheque_row_problem(raw: bytes, serial: int, cumulative: int) -> str | None:
    try:
        c = open_signed(raw, Cheque, max_size=MAX_CHEQUE_SIZE).message
    except ProtocolError as exc:
        return f"stored cheque does not verify ({exc})"
    if (c.serial, c.cumulative) != (serial, cumulative):
        return "stored cheque says other amounts than its row"
    return None


def _receipt_row_problem(row: tuple[Any, ...]) -> str | None:
    digest, job_id, requester, provider, outcome, charge, issued_at, raw = row
    try:
        signed = open_signed(bytes(raw), Receipt, max_size=MAX_RECEIPT_SIZE)
    except (ProtocolError, TypeError) as exc:
        return f"does not verify ({exc})"
    r = signed.message
    if (signed.digest, r.job_id, r.requester, r.provider, r.outcome, r.charge,
            r.issued_at) != (digest, job_id, requester, provider, outcome, charge, issued_at):
        return "its row says other things than the signed receipt"
    return None
