"""The `offload ledger ...` and `offload jobs` verbs: thin commands over ledger.Ledger.

Amounts are typed and printed in credits (decimals); the ledger keeps micro-credits.
In JSON output amounts are exact decimal strings of credits.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger import Entry, Job, Ledger, LedgerError, LocalLedgerError
from ledger.records import STATUSES, Record
from node.cli.common import report_swept
from node.errors import LedgerFailed, UserError
from node.home import Home, init_identity, open_ledger, resolve_home
from node.requester import session
from node.requester.payments import Swept
from protocol.identity import Identity
from scheduler.pricing import MICRO, credits

log = logging.getLogger(__name__)
JOB_STATUSES = ("locked", "released", "refunded", *STATUSES)
"""`offload jobs --status`: the escrow's words (status) or the verdict's (outcome)."""
EXAMPLES = {
    "ledger": "offload ledger balance --json",
    "balance": "offload ledger balance --json",
    "history": "offload ledger history --limit 20",
    "deposit": "offload ledger deposit 25.5",
    "verify": "offload ledger verify",
    "export": "offload ledger export --json > ledger.json",
    "jobs": "offload jobs --json",
    "refund": "offload ledger refund 3f2a9c01b7e4",
}


def register(sub: Any) -> None:
    """Add the `ledger` and `jobs` parsers to node/cli.py's subparsers."""
    raw = argparse.RawDescriptionHelpFormatter
    c = sub.add_parser("ledger", help="this node's credit: balance, history, deposits, checks",
                       description="this node's signed, hash-chained credit ledger "
                                   f"(<home>/{Home(Path()).ledger.name}); amounts in credits",
                       epilog=f"example: {EXAMPLES['ledger']}", formatter_class=raw)
    actions = c.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    for name, help_ in (
            ("balance", "available, in escrow, paid to providers, earned, deposited"),
            ("history", "the ledger's entries, oldest first"),
            ("deposit", "fund the available balance (LocalCredits backend)"),
            ("verify", "check every hash link, signature and balance; exit 1 naming the "
                       "first bad entry"),
            ("export", "every entry with its hash and signature: CSV, or one JSON document "
                       "with jobs and receipts"),
            ("refund", "give back now the escrow of a job whose process died (JOB: its id "
                       "or a unique prefix, see `offload jobs`)")):
        a = actions.add_parser(name, help=help_, description=help_,
                               epilog=f"example: {EXAMPLES[name]}", formatter_class=raw)
        if name == "deposit":
            a.add_argument("amount", metavar="AMOUNT", help="credits, e.g. 25 or 0.125")
        if name == "refund":
            a.add_argument("job", metavar="JOB", help="job id or a unique prefix of it")
        if name == "history":
            a.add_argument("--limit", type=int, metavar="N", help="only the latest N entries")
        a.add_argument("--json", action="store_true")
    j = sub.add_parser("jobs", help="jobs this node submitted: provider, status, charge",
                       description="every job (and session) this node submitted, free ones "
                                   "included, from its ledger, oldest first: job id, "
                                   "provider, status, charge, wall time, where its result "
                                   "lies; a session is marked so (see `offload sessions`)",
                       epilog=f"example: {EXAMPLES['jobs']}", formatter_class=raw)
    j.add_argument("--json", action="store_true")
    j.add_argument("--limit", type=int, metavar="N", help="only the latest N jobs")
    j.add_argument("--status", choices=JOB_STATUSES, metavar="S",
                   help="only jobs in this status or outcome: " + ", ".join(JOB_STATUSES))


def parse_credits(text: str) -> int:
    """'25.5' -> 25_500_000 micro-credits; UserError for anything but a positive amount
    with at most six decimals."""
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        value = decimal.Decimal("NaN")
    micro = value * MICRO
    if not value.is_finite() or value <= 0 or micro != micro.to_integral_value():
        raise UserError(f"AMOUNT {text!r} must be a positive number of credits with at most "
                        "6 decimals, e.g. 25 or 0.125")
    return int(micro)


def ledger_path(home: str | Path | None) -> Path:
    """Where the node with this home keeps its ledger (for node/requester.py, provider.py)."""
    return Home(resolve_home(home)).ledger


def sweep_orphans(ledger: Ledger, home: Path, identity: Identity) -> Swept:
    """Settle escrows that dead processes on this home left locked, and say so."""
    import trio

    swept = trio.run(session.sweep_orphans, ledger, home, identity)
    report_swept(swept)
    return swept


def _open(args: argparse.Namespace) -> Ledger:
    home = resolve_home(args.home)
    identity, _ = init_identity(home)
    ledger = open_ledger(home, identity)
    try:
        sweep_orphans(ledger, home, identity)
    except BaseException:
        ledger.close()
        raise
    return ledger


def _run(args: argparse.Namespace, body: Callable[[Ledger], int]) -> int:
    """Open the ledger, run `body`, and map ledger errors onto the CLI's exit codes."""
    with _open(args) as ledger:
        try:
            return body(ledger)
        except LocalLedgerError as exc:
            raise UserError(str(exc)) from None
        except LedgerError as exc:
            raise LedgerFailed(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise LedgerFailed(f"the ledger file cannot be read ({exc}); run `offload ledger "
                            "verify`") from None


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    print(json.dumps(doc) if args.json else text)


def _when(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")


def cmd_ledger(args: argparse.Namespace) -> int:
    action: Callable[[argparse.Namespace, Ledger], int] = _ACTIONS[args.ledger_command]
    return _run(args, lambda ledger: action(args, ledger))


def _balance(args: argparse.Namespace, ledger: Ledger) -> int:
    b = ledger.balance()
    rows = {"available": b.available, "escrow": b.escrow, "paid": b.paid,
            "earned": b.earned, "deposited": b.deposited}
    _emit(args, {k: credits(v) for k, v in rows.items()},
          "\n".join(f"{k:<10} {credits(v):>18}" for k, v in rows.items()))
    return 0


def _entry_json(e: Entry) -> dict[str, Any]:
    return {"seq": e.seq, "ts": e.ts, "kind": e.kind, "job_id": e.job_id, "peer": e.peer,
            "amount": credits(e.amount), "memo": e.memo, "hash": e.hash}


def _history(args: argparse.Namespace, ledger: Ledger) -> int:
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    entries = ledger.history(limit=args.limit)
    lines = [f"#{e.seq:<6} {_when(e.ts)}  {e.kind:<9} {credits(e.amount):>16}"
             + (f"  job {e.job_id[:12]}" if e.job_id else "")
             + (f"  {e.peer[:20]}" if e.peer else "") for e in entries]
    _emit(args, [_entry_json(e) for e in entries], "\n".join(lines) or "no entries yet")
    return 0


def _deposit(args: argparse.Namespace, ledger: Ledger) -> int:
    amount = parse_credits(args.amount)
    e = ledger.deposit(amount)
    available = ledger.balance().available
    _emit(args, {"deposited": credits(amount), "seq": e.seq, "available": credits(available),
                 "ref": e.memo.get("ref")},
          f"deposited {credits(amount)} credits (entry {e.seq}); available "
          f"{credits(available)}")
    return 0


def _verify(args: argparse.Namespace, ledger: Ledger) -> int:
    try:
        fault = ledger.verify()
    except sqlite3.DatabaseError as exc:
        _emit(args, {"valid": False, "seq": None, "reason": str(exc)},
              f"INVALID: the file cannot be read ({exc})")
        return 1
    entries = len(ledger.history())
    if fault is None:
        _emit(args, {"valid": True, "entries": entries, "seq": None, "reason": None},
              f"valid: {entries} {'entry' if entries == 1 else 'entries'}; every hash link "
              "and signature checks and every balance matches its entries")
        return 0
    _emit(args, {"valid": False, "entries": entries, "seq": fault.seq, "reason": fault.reason},
          f"INVALID at {fault}; restore {Home(Path()).ledger.name} from a backup "
          "(`offload ledger export` shows what it holds)")
    return 1


def _export(args: argparse.Namespace, ledger: Ledger) -> int:
    if args.json:
        print(json.dumps({**ledger.export(), "unit": "micro-credits"}))
        return 0
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["seq", "ts", "kind", "job_id", "peer", "amount", "memo", "prev", "hash",
                  "sig"])
    for e in ledger.history():
        out.writerow([e.seq, e.ts, e.kind, e.job_id, e.peer, credits(e.amount),
                      json.dumps(e.memo, sort_keys=True), e.prev, e.hash, e.sig.hex()])
    return 0


def _refund(args: argparse.Namespace, ledger: Ledger) -> int:
    from node.requester.escrows import live_owner
    from node.requester.holds import DetachedBook, HoldBook

    home = resolve_home(args.home)
    want = args.job.strip().lower()
    if len(want) < 6:
        raise UserError("JOB must be a job id or at least 6 of its first characters; see "
                        "`offload jobs`")
    found = [j for j in ledger.jobs() if j.job_id.startswith(want)]
    if not found:
        raise UserError(f"no job {want} in this ledger; see `offload jobs`")
    if len(found) > 1:
        raise UserError(f"{want} names {len(found)} jobs; give more of the id")
    job = found[0]
    if job.state != "locked":
        raise UserError(f"job {job.job_id[:12]} is already {_status(job)}; nothing is left "
                        "in escrow")
    pid = live_owner(home, job.job_id)
    if pid is not None:
        raise UserError(f"job {job.job_id[:12]} belongs to a running process (pid {pid}) "
                        "on this home; it settles the escrow itself, or stop it first")
    if DetachedBook.load(home).get(job.job_id) is not None:
        raise UserError(f"job {job.job_id[:12]} runs detached on its provider; `offload "
                        f"cancel {job.job_id[:12]}` stops it and refunds what it did not use")
    if any(h.job_id == job.job_id for h in HoldBook.load(home).all()):
        raise UserError(f"job {job.job_id[:12]} is a payment held for a result already "
                        "returned; it is paid or refused when its hold ends")
    ledger.refund(job.job_id, "cancelled", detail="refunded by `offload ledger refund`")
    available = ledger.balance().available
    _emit(args, {"job_id": job.job_id, "refunded": credits(job.amount),
                 "available": credits(available)},
          f"refunded {credits(job.amount)} credits of job {job.job_id[:12]}; available "
          f"{credits(available)}")
    return 0


def _status(j: Job) -> str:
    return j.state if j.state != "refunded" else f"refunded ({j.reason})"


def _escrow_status(r: Record) -> tuple[str, str]:
    """The status and reason `offload jobs` has always shown (the escrow's words), which
    free jobs share: released is accepted (charge 0 included), refunded is not paid."""
    if r.status == "running":
        return ("locked" if r.max_charge else "running"), ""
    if r.status == "detached":
        return "detached", ""
    if r.status in ("held", "accepted"):
        return ("held" if r.status == "held" else "released"), ""
    return "refunded", r.status


def _record_json(r: Record, kind: str) -> dict[str, Any]:
    status, reason = _escrow_status(r)
    return {"job_id": r.job_id, "kind": kind, "provider": r.provider, "status": status,
            "reason": reason, "outcome": r.status, "detail": r.reason,
            "result_status": r.result_status, "charge": credits(r.charge),
            "locked": credits(r.max_charge), "free": r.max_charge == 0,
            "verified": r.verified, "started_at": r.started_at, "ended_at": r.ended_at,
            "wall_s": r.wall_s, "phases_ms": r.phases, "result": r.result,
            "out_dir": r.out_dir or None}


def _record_line(r: Record, kind: str) -> str:
    status, reason = _escrow_status(r)
    shown = f"{status} ({reason})" if reason else status
    return (f"{r.job_id[:12]}  {r.provider[:20]}  {shown:<20} {credits(r.charge):>14}"
            f"{' free' if r.max_charge == 0 else '     '}  {r.wall_s:>7.1f} s  "
            f"{r.out_dir or '-'}  {'verified' if r.verified else '-'}"
            f"{'  session' if kind == 'session' else ''}")


def cmd_jobs(args: argparse.Namespace) -> int:
    from node.requester import records

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")

    def body(ledger: Ledger) -> int:
        found = [r for r in ledger.records() if args.status in (
            None, r.status, *_escrow_status(r))]
        found = found[-args.limit:] if args.limit is not None else found
        # a session's escrow is a job row under the session id; its record says which
        sessions = {r.session_id for r in records.load(resolve_home(args.home))}
        kinds = {r.job_id: "session" if r.job_id in sessions else "job" for r in found}
        empty = f"no {args.status} jobs" if args.status else "no jobs yet"
        _emit(args, [_record_json(r, kinds[r.job_id]) for r in found],
              "\n".join(_record_line(r, kinds[r.job_id]) for r in found) or empty)
        return 0

    return _run(args, body)


_ACTIONS: dict[str, Callable[[argparse.Namespace, Ledger], int]] = {
    "balance": _balance, "history": _history, "deposit": _deposit, "verify": _verify,
    "export": _export, "refund": _refund,
}

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "ledger": cmd_ledger, "jobs": cmd_jobs,
}

__all__ = ["COMMANDS", "ledger_path", "open_ledger", "parse_credits", "register",
           "sweep_orphans"]
