"""One record per job this node submitted, free or paid: provider, status, charge, timings,
where its result lies. Records are bookkeeping beside the hash chain (no credit moves
here); a paid job's row changes in the same transaction as its escrow.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any, Literal

from ledger.errors import LocalLedgerError

Status = Literal["running", "detached", "held", "accepted", "rejected", "timeout", "failed",
                 "cancelled"]
STATUSES: tuple[Status, ...] = ("running", "detached", "held", "accepted", "rejected",
                                "timeout", "failed", "cancelled")
"""running: no verdict yet; detached: running on its provider without a process of ours,
its result to be fetched (`offload result`); held: accepted but its payment is held back
(holds.py);
accepted: the verified result was accepted (and its charge, zero included, paid);
rejected/timeout/failed/cancelled: nothing was paid, for that reason."""
OPEN: tuple[Status, ...] = ("running", "detached", "held")
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    job_id TEXT PRIMARY KEY, provider TEXT NOT NULL, status TEXT NOT NULL,
    charge INTEGER NOT NULL DEFAULT 0, max_charge INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL, ended_at INTEGER, phases TEXT NOT NULL DEFAULT '{}',
    result TEXT NOT NULL DEFAULT '', result_status TEXT NOT NULL DEFAULT '',
    out_dir TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS records_started ON records (started_at);
"""
COLUMNS = ("job_id, provider, status, charge, max_charge, started_at, ended_at, phases, "
           "result, result_status, out_dir, reason")
MAX_REASON = 200
MAX_PATH = 4096
MAX_PHASES = 16
"""Phase names kept per record (exchange.PHASES has 9)."""
RESULT_STATUSES = ("ok", "failed", "timeout", "killed", "error", "open", "closed", "idle",
                   "expired", "")
"""A job's (JobStatus) or a session's (SessionStatus) own status; "" if none came."""


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """One job this node submitted (`offload jobs`)."""

    job_id: str
    provider: str
    status: Status
    charge: int
    """Micro-credits paid (0 for a free job, or nothing paid)."""
    max_charge: int
    """The quoted maximum (what was escrowed; 0 for a free job)."""
    started_at: int
    """Unix ms when the quote was accepted."""
    ended_at: int | None
    phases: dict[str, float]
    """Milliseconds per phase of the exchange (exchange.PHASES)."""
    result: str
    """sha256 of the signed result judged ("" if none came)."""
    result_status: str
    """The job's own status in that result (ok, failed, timeout, killed)."""
    out_dir: str
    """Where the accepted result's files were put ("" if none)."""
    reason: str

    @property
    def verified(self) -> bool:
        return self.status in ("accepted", "held")

    @property
    def wall_s(self) -> float:
        return round(sum(self.phases.values()) / 1000.0, 3)

    def doc(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verified": self.verified, "wall_s": self.wall_s}


def row_record(row: tuple[Any, ...]) -> Record:
    job_id, provider, status, charge, max_charge, started_at, ended_at, phases = row[:8]
    try:
        loaded = json.loads(phases)
    except ValueError:
        loaded = {}
    clean = ({str(k): float(v) for k, v in list(loaded.items())[:MAX_PHASES]
              if isinstance(v, int | float)} if isinstance(loaded, dict) else {})
    return Record(job_id, provider, status, charge, max_charge, started_at, ended_at, clean,
                  *row[8:])


def start(db: sqlite3.Connection, job_id: str, provider: str, max_charge: int,
          ts: int) -> None:
    """A job's record, running from `ts` (kept as it is if it exists)."""
    db.execute("INSERT OR IGNORE INTO records (job_id, provider, status, max_charge, "
               "started_at) VALUES (?, ?, 'running', ?, ?)", (job_id, provider, max_charge, ts))


def close(db: sqlite3.Connection, job_id: str, status: Status, ts: int, *, charge: int = 0,
          result: str = "", reason: str = "") -> None:
    """The job's verdict (a legacy escrow without a record gets none: `jobs` derives it)."""
    db.execute("UPDATE records SET status = ?, charge = ?, result = CASE WHEN ? = '' THEN "
               "result ELSE ? END, reason = ?, ended_at = ? WHERE job_id = ?",
               (status, charge, result, result, reason[:MAX_REASON], ts, job_id))


def note(db: sqlite3.Connection, job_id: str, *, phases: dict[str, float] | None = None,
         out_dir: str | None = None, result_status: str | None = None,
         status: Status | None = None) -> None:
    """Add what the exchange or the placement learned to a job's record."""
    sets: list[str] = []
    values: list[Any] = []
    if phases is not None:
        sets.append("phases = ?")
        values.append(json.dumps({str(k)[:32]: round(float(v), 3)
                                  for k, v in list(phases.items())[:MAX_PHASES]}))
    if out_dir is not None:
        if len(out_dir) > MAX_PATH:
            raise LocalLedgerError(f"out_dir is longer than {MAX_PATH} characters")
        sets.append("out_dir = ?")
        values.append(out_dir)
    if result_status is not None:
        sets.append("result_status = ?")
        values.append(result_status if result_status in RESULT_STATUSES else "error")
    if status is not None:
        if status not in STATUSES:
            raise LocalLedgerError(f"record status must be one of {STATUSES}")
        sets.append("status = ?")
        values.append(status)
    if sets:
        db.execute(f"UPDATE records SET {', '.join(sets)} WHERE job_id = ?",
                   (*values, job_id))
