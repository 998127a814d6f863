"""`offload sessions`: the sessions this node opened (`@remote` classes), from the records
under its home (node/requester/records.py), newest first."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable
from typing import Any

from node.cli.common import emit
from node.errors import UserError
from node.home import resolve_home
from node.requester import records
from scheduler.pricing import credits

EXAMPLES = {"sessions": "offload sessions --json --limit 20"}


def register(sub: Any, cmd: Any) -> None:
    c = cmd("sessions", "sessions this node opened, newest first: provider, age, calls, "
                        "charge, status, and the signed result kept for `offload verify`")
    c.add_argument("--limit", type=int, metavar="N", help="only the newest N sessions")
    c.add_argument("--json", action="store_true")


def _age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def session_doc(r: records.SessionRecord) -> dict[str, Any]:
    return {"session_id": r.session_id, "provider": r.provider, "opened_at": r.opened_at,
            "calls": r.calls, "charge": credits(r.charge), "status": r.status,
            "file": r.file}


def cmd_sessions(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    now = datetime.datetime.now(datetime.UTC).timestamp()
    found = records.load(resolve_home(args.home), limit=args.limit)
    lines = [f"{r.session_id[:12]}  {r.provider[:20]}  {_age(now - r.opened_at):>5} ago  "
             f"{r.calls:5d} call(s)  {credits(r.charge):>14}  {r.status}" for r in found]
    emit(args, [session_doc(r) for r in found], "\n".join(lines) or "no sessions yet")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"sessions": cmd_sessions}
