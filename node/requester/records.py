"""Sessions this requester opened, kept under `<home>/sessions/` for `offload sessions` and
`offload verify`.

`<id>.json` says which provider, when it opened, where it stands (written once the object
is built, rewritten when the session settles); `<id>.msgpack` is the verified signed
SessionResult it settled on, the provider's own bytes: the final result, or the last
checkpoint when the provider vanished. Both are replaced atomically. Writing a record never
fails a session: an OSError is logged and the session goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from node.home import Home, atomic_write_bytes, atomic_write_json
from protocol import ProtocolError, Signed
from protocol.messages import check_sha256
from protocol.sessions import SessionResult

log = logging.getLogger(__name__)

RESULT_SUFFIX = ".msgpack"
MAX_RECORDS = 10_000
"""The most records `load` reads (newest names first would need every stat: by id)."""
Unsigned = Literal["open", "lost", "rejected"]
"""open: still held by a live process; lost: no verified result to keep (nothing paid, or
the process died before it settled); rejected: the provider signed a wrong result."""


@dataclasses.dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    provider: str
    opened_at: float
    """Unix seconds."""
    status: str
    """The signed final result's status, or one of Unsigned (lost, with a file: the last
    checkpoint, kept after the provider vanished)."""
    calls: int
    charge: int
    """Micro-credits the kept result charged (0 without one)."""
    file: str | None
    """The kept signed result (for `offload verify`), if any."""
    pid: int
    settled_at: float | None = None

    def doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _paths(home: Path, session_id: str) -> tuple[Path, Path]:
    check_sha256(session_id, "session id")  # never a path of our choosing
    folder = Home(home).sessions
    return folder / f"{session_id}.json", folder / f"{session_id}{RESULT_SUFFIX}"


def _write(record: SessionRecord, home: Path, raw: bytes | None = None) -> None:
    meta, result = _paths(home, record.session_id)
    try:
        meta.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if raw is not None:
            atomic_write_bytes(result, raw, fsync=True)
        atomic_write_json(meta, record.doc(), sort_keys=True)
    except OSError as exc:
        log.warning("could not keep the record of session %s in %s: %s",
                    record.session_id[:12], meta.parent, exc.strerror or exc)


def record_open(home: Path, session_id: str, provider: str, opened_at: float) -> None:
    """The session's object is built: it shows as open while this process lives."""
    _write(SessionRecord(session_id=session_id, provider=provider, opened_at=opened_at,
                         status="open", calls=0, charge=0, file=None, pid=os.getpid()), home)


def record_end(home: Path, session_id: str, provider: str, opened_at: float,
               kept: Signed[SessionResult] | None, *, status: Unsigned = "lost",
               now: float) -> None:
    """How the session settled: `kept` (verified) is saved beside the record; without it,
    `status` says why nothing was."""
    _, result = _paths(home, session_id)
    r = kept.message if kept is not None else None
    record = SessionRecord(
        session_id=session_id, provider=provider, opened_at=opened_at,
        status=r.status if r is not None and r.status != "open" else status,
        calls=r.calls if r is not None else 0, charge=r.price_charged if r is not None else 0,
        file=str(result.absolute()) if kept is not None else None, pid=os.getpid(),
        settled_at=now)
    _write(record, home, kept.raw if kept is not None else None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return pid > 0


def _read(path: Path) -> SessionRecord | None:
    try:
        doc = json.loads(path.read_bytes())
        record = SessionRecord(**doc)
        check_sha256(record.session_id, "session id")
    except (OSError, ValueError, TypeError, ProtocolError) as exc:
        log.warning("skipping unreadable session record %s: %s", path, exc)
        return None
    if record.status == "open" and record.settled_at is None and not _alive(record.pid):
        return dataclasses.replace(record, status="lost")  # its process died unsettled
    return record


def load(home: Path, *, limit: int | None = None) -> list[SessionRecord]:
    """The records under the home, newest first (by opened_at)."""
    try:
        paths = sorted(Home(home).sessions.glob("*.json"))[:MAX_RECORDS]
    except OSError:
        return []
    records = [r for r in map(_read, paths) if r is not None]
    records.sort(key=lambda r: r.opened_at, reverse=True)
    return records if limit is None else records[:limit]
