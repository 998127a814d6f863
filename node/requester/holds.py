"""Payments held back: results accepted without a second opinion are paid only later.

Adaptive replication checks a trusted provider rarely, which a "sleeper" exploits: honest
until trusted, then wrong. So an unreplicated result's escrow stays locked for a hold
period. If the provider is caught cheating before it ends, every held payment to it is
refused (a signed rejection, the user is told which results are suspect); otherwise the
payment is released. The simulation (bench/sim_verification.py, policy "escrow") is where
this policy met the 99 % / 10 % target. Kept in `<home>/holds.json`, settled at the start
and end of every requester session.

Detached jobs (node/requester/detach.py) are a book of the same kind, `<home>/detached.json`:
their escrows stay locked while their provider keeps their result.
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
from typing import Any, Generic, Protocol, Self, TypeVar

from node.home import Home, atomic_write_json

log = logging.getLogger(__name__)
MAX_HOLDS = 100_000
DEFAULT_HOLD_S = 600.0
DETACH_GRACE_S = 30.0
"""A detached job may end this long after its timeout (exchange.GRACE_S)."""
"""How long `verify="adaptive"` holds a payment no second provider checked."""


class _Keyed(Protocol):
    @property
    def job_id(self) -> str: ...


R = TypeVar("R", bound=_Keyed)


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


class JsonBook(Generic[R]):
    """Records by job id in one JSON file of a home. Several processes may use one home
    at once: every change is a read-merge-write of the file under an `flock`, and `all()`
    reads it afresh. None: in memory only."""

    what = "records"
    max_records = MAX_HOLDS
    home_path = ""
    """The `Home` property naming this book's file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._records: dict[str, R] = {}

    @classmethod
    def load(cls, home: Path) -> Self:
        book = cls(getattr(Home(home), cls.home_path))
        book._records = book._read()
        return book

    @staticmethod
    def parse(doc: dict[str, Any]) -> R:
        raise NotImplementedError

    def _read(self) -> dict[str, R]:
        if self.path is None:
            return dict(self._records)
        found: dict[str, R] = {}
        try:
            for doc in json.loads(self.path.read_text())[:self.max_records]:
                record = self.parse(doc)
                found[record.job_id] = record
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("cannot read %s (%s): %s stay locked until it is fixed",
                      self.path, exc, self.what)
            raise
        return found

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
        return len(self._records)

    def add(self, record: R) -> None:
        self._change(record.job_id, record)

    def remove(self, job_id: str) -> None:
        self._change(job_id, None)

    def all(self) -> list[R]:
        """Every record of the home, as the file says now (other processes add some)."""
        if self.path is not None:
            with self._locked():
                self._records = self._read()
        return list(self._records.values())

    def _change(self, job_id: str, record: R | None) -> None:
        if self.path is None:
            self._apply(self._records, job_id, record)
            return
        with self._locked():
            found = self._read()
            self._apply(found, job_id, record)
            atomic_write_json(self.path, [dataclasses.asdict(r)  # type: ignore[call-overload]
                                          for r in found.values()])
            self._records = found

    @staticmethod
    def _apply(found: dict[str, R], job_id: str, record: R | None) -> None:
        if record is None:
            found.pop(job_id, None)
        else:
            found[job_id] = record


class HoldBook(JsonBook[Hold]):
    """The holds of a home."""

    what = "held escrows"
    home_path = "holds"

    @staticmethod
    def parse(doc: dict[str, Any]) -> Hold:
        return Hold(job_id=str(doc["job_id"]), provider=str(doc["provider"]),
                    charge=int(doc["charge"]), result_digest=str(doc["result_digest"]),
                    until=float(doc["until"]), strikes=int(doc.get("strikes", 0)))


@dataclasses.dataclass(frozen=True, slots=True)
class Detached:
    """One detached job of this home, until its result is fetched and settled."""

    job_id: str
    provider: str
    addrs: tuple[str, ...]
    amount: int
    """Micro-credits escrowed (0: a free job, only recorded)."""
    max_seconds: int
    accepted_at: float
    keep_s: int

    @property
    def until(self) -> float:
        """Unix seconds after which the provider no longer keeps its result."""
        return self.accepted_at + self.max_seconds + DETACH_GRACE_S + self.keep_s


class DetachedBook(JsonBook[Detached]):
    what = "detached jobs' escrows"
    home_path = "detached"

    @staticmethod
    def parse(doc: dict[str, Any]) -> Detached:
        return Detached(job_id=str(doc["job_id"]), provider=str(doc["provider"]),
                        addrs=tuple(str(a) for a in doc.get("addrs", ())[:8]),
                        amount=int(doc["amount"]), max_seconds=int(doc["max_seconds"]),
                        accepted_at=float(doc["accepted_at"]), keep_s=int(doc["keep_s"]))

    def get(self, job_id: str) -> Detached | None:
        return next((d for d in self.all() if d.job_id == job_id), None)

    def kept(self, now: float) -> set[str]:
        """Ids whose provider still keeps their result: not orphans yet."""
        return {d.job_id for d in self.all() if now < d.until}
