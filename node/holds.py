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

import dataclasses
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
FILE = "holds.json"
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
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._holds: dict[str, Hold] = {}

    @classmethod
    def load(cls, home: Path) -> HoldBook:
        book = cls(home / FILE)
        try:
            for doc in json.loads((home / FILE).read_text()):
                hold = Hold(job_id=str(doc["job_id"]), provider=str(doc["provider"]),
                            charge=int(doc["charge"]), result_digest=str(doc["result_digest"]),
                            until=float(doc["until"]), strikes=int(doc.get("strikes", 0)))
                book._holds[hold.job_id] = hold
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("cannot read %s (%s): held escrows stay locked until it is fixed",
                      home / FILE, exc)
            raise
        return book

    def __len__(self) -> int:
        return len(self._holds)

    def add(self, hold: Hold) -> None:
        self._holds[hold.job_id] = hold
        self.save()

    def remove(self, job_id: str) -> None:
        if self._holds.pop(job_id, None) is not None:
            self.save()

    def all(self) -> list[Hold]:
        return list(self._holds.values())

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([dataclasses.asdict(h) for h in self._holds.values()]))
        os.replace(tmp, self.path)
