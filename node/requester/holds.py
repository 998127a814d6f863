"""Payments held back: results accepted without a second opinion are paid only later.

Adaptive replication checks a trusted provider rarely, which a "sleeper" exploits: honest
until trusted, then wrong. So an unreplicated result's escrow stays locked for a hold
period. If the provider is caught cheating before it ends, every held payment to it is
refused (a signed rejection, the user is told which results are suspect); otherwise the
payment is released. The simulation (bench/sim_verification.py, policy "escrow") is where
this policy met the 99 % / 10 % target. Kept in `<home>/holds.json`, settled at the start
and end of every requester session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from node.home import Home, atomic_write_json

log = logging.getLogger(__name__)
MAX_HOLDS = 100_000
DEFAULT_HOLD_S = 600.0
"""How long `verify="adaptive"` holds a payment no second provider checked."""


@dataclasses.dataclass(frozen=True, slots=True)
class Hold:
    job_id: str
    provider: str
    charge: int
    result_digest: str
    until: float
    """Unix seconds."""
    strikes: int = 0
    """How often the provider had been caught when the hold began."""


class HoldBook:
    """The holds of a home. Several processes may use one home at once: every change is a
    read-merge-write of the file under an `flock`, and `all()` reads it afresh."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._holds: dict[str, Hold] = {}

    @classmethod
    def load(cls, home: Path) -> HoldBook:
        book = cls(Home(home).holds)
        book._holds = book._read()
        return book

    def _read(self) -> dict[str, Hold]:
        if self.path is None:
            return dict(self._holds)
        holds: dict[str, Hold] = {}
        try:
            for doc in json.loads(self.path.read_text())[:MAX_HOLDS]:
                hold = Hold(job_id=str(doc["job_id"]), provider=str(doc["provider"]),
                            charge=int(doc["charge"]), result_digest=str(doc["result_digest"]),
                            until=float(doc["until"]), strikes=int(doc.get("strikes", 0)))
                holds[hold.job_id] = hold
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("cannot read %s (%s): held escrows stay locked until it is fixed",
                      self.path, exc)
            raise
        return holds

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._holds)

    def add(self, hold: Hold) -> None:
        self._change(hold.job_id, hold)

    def remove(self, job_id: str) -> None:
        self._change(job_id, None)

    def all(self) -> list[Hold]:
        """Every hold of the home, as the file says now (other processes add some)."""
        if self.path is not None:
            with self._locked():
                self._holds = self._read()
        return list(self._holds.values())

    def _change(self, job_id: str, hold: Hold | None) -> None:
        if self.path is None:
            self._apply(self._holds, job_id, hold)
            return
        with self._locked():
            holds = self._read()
            self._apply(holds, job_id, hold)
            atomic_write_json(self.path, [dataclasses.asdict(h) for h in holds.values()])
            self._holds = holds

    @staticmethod
    def _apply(holds: dict[str, Hold], job_id: str, hold: Hold | None) -> None:
        if hold is None:
            holds.pop(job_id, None)
        else:
            holds[job_id] = hold
