"""Escrows that outlive their process: per-process leases, and the sweep of orphans.

Every requester process that may lock escrow holds a lease: a file under
`<home>/leases/` that it keeps `flock`ed for its whole life and to which it appends a
line for each job *before* the job's escrow is locked. The kernel drops the lock when
the process dies (kill -9 included), so a lease whose lock can be taken belongs to a
dead process. An escrow is orphaned when it is still locked in the ledger, no live
lease claims it, and no payment hold (holds.py) keeps it. The sweep (payments.py) asks
the provider for a signed result of each orphan and releases the charge if one
verifies, else refunds once the provider disclaims it or the grace has passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ledger import Job, Ledger
from node.errors import HostError
from node.home import Home
from node.requester.holds import DetachedBook, HoldBook

log = logging.getLogger(__name__)
SWEEP_LOCK = ".sweep.lock"
ORPHAN_GRACE_S = 120.0
"""After the lock, how long an orphan whose provider cannot be reached stays locked:
the provider's quote hold (30 s by default) and a grace to come back online."""
UNCLAIMED_GRACE_S = 2 * 3600.0
"""An escrow no lease describes (locked by code without one): refunded after this."""
MAX_LEASE_BYTES = 4 * 1024 * 1024
MAX_LEASES = 1024
MAX_ADDRS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A lease's line: one job whose escrow its process locks."""

    job_id: str
    provider: str
    addrs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Orphan:
    """A locked escrow whose process is gone."""

    job: Job
    addrs: tuple[str, ...]
    refund_after_ms: int
    """Unix ms after which it is refunded even if its provider cannot be asked."""
    detached: bool = False
    """A detached job whose provider's keeping time ran out (holds.DetachedBook)."""


class Lease:
    """This process's claim on the escrows it locks (see the module docstring)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def open(cls, home: Path) -> Lease:
        """Create and lock a fresh lease file; HostError naming the problem if it cannot."""
        folder = Home(home).leases
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        tmp = folder / f".{name}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise HostError(f"cannot create an escrow lease in {folder}: {exc.strerror}; "
                            "free space or make the home writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, folder / f"{name}.lease")  # locked before any sweep can see it
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise HostError(f"cannot create an escrow lease in {folder}: {exc.strerror}") \
                from None
        return cls(folder / f"{name}.lease", fd)

    def claim(self, job_id: str, provider: str, addrs: Sequence[str] = ()) -> None:
        """Record a job before its escrow is locked; HostError (nothing locked) if the
        line cannot be written."""
        if self._fd is None:
            raise HostError("the escrow lease is closed; open a new session")
        line = json.dumps({"job_id": job_id, "provider": provider,
                           "addrs": [str(a)[:256] for a in list(addrs)[:MAX_ADDRS]]}) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:
            raise HostError(f"cannot record the escrow of job {job_id[:12]} in {self.path}: "
                            f"{exc.strerror}; free space in the home and run again") from None

    def close(self, *, keep: bool = False) -> None:
        """Let go of the lease; `keep` leaves the file (escrows still locked) for a sweep."""
        if self._fd is None:
            return
        if not keep:
            with contextlib.suppress(OSError):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _read_claims(fd: int) -> list[Claim]:
    data = os.pread(fd, MAX_LEASE_BYTES, 0)
    out = []
    for line in data.decode(errors="replace").splitlines():
        try:
            doc = json.loads(line)
            out.append(Claim(job_id=str(doc["job_id"]), provider=str(doc["provider"]),
                             addrs=tuple(str(a) for a in doc.get("addrs", ())[:MAX_ADDRS])))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a line torn by a crash
    return out


@dataclasses.dataclass(slots=True)
class Leases:
    """What the lease files say right now."""

    live: set[str] = dataclasses.field(default_factory=set)
    """Job ids claimed by a live process."""
    dead: dict[str, Claim] = dataclasses.field(default_factory=dict)
    """Job id -> claim of a process that is gone."""
    dead_files: list[Path] = dataclasses.field(default_factory=list)


def _scan(home: Path) -> Iterator[tuple[Path, bool, list[Claim]]]:
    """Every lease file (at most MAX_LEASES), whether its owner lives (holds its lock),
    and its claims; files removed or unreadable meanwhile are skipped."""
    try:
        paths = sorted(Home(home).leases.glob("*.lease"))[:MAX_LEASES]
    except OSError:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # removed by its owner meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                alive = False
            except BlockingIOError:
                alive = True
            claims = _read_claims(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
        yield path, alive, claims


def read_leases(home: Path) -> Leases:
    """Sort every lease into live (its lock is held) and dead (its lock can be taken)."""
    out = Leases()
    for path, alive, claims in _scan(home):
        if alive:
            out.live.update(c.job_id for c in claims)
        else:
            out.dead.update({c.job_id: c for c in claims})
            out.dead_files.append(path)
    return out


@contextlib.contextmanager
def sweeping(home: Path) -> Iterator[bool]:
    """One sweep per home at a time: yields False if another process is sweeping."""
    try:
        Home(home).leases.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(Home(home).leases / SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        log.warning("cannot sweep orphaned escrows now: %s", exc)
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def find_orphans(ledger: Ledger, home: Path, *,
                 exclude: set[str] | frozenset[str] = frozenset()) -> list[Orphan]:
    """Locked escrows of this home's ledger that no live process and no hold keeps.
    The ledger is read before the leases: a process claims a job before locking it, so
    any escrow seen locked has its claim on disk by the time the leases are read."""
    locked = [j for j in ledger.jobs() if j.state == "locked" and j.job_id not in exclude]
    if not locked:
        return []
    leases = read_leases(home)
    try:
        held = {h.job_id for h in HoldBook.load(home).all()}
        detached = DetachedBook.load(home)
        kept = detached.kept(time.time())
        was_detached = {d.job_id: d for d in detached.all()}
    except (OSError, ValueError, TypeError, KeyError):
        return []  # an unreadable book: sweep nothing rather than refund a hold
    orphans = []
    for job in locked:
        if job.job_id in leases.live or job.job_id in held or job.job_id in kept:
            continue
        claim = leases.dead.get(job.job_id)
        gone = was_detached.get(job.job_id)
        if gone is not None:  # its provider's keeping time ran out
            orphans.append(Orphan(job=job, addrs=gone.addrs, detached=True,
                                  refund_after_ms=int((gone.until + ORPHAN_GRACE_S) * 1000)))
            continue
        grace = ORPHAN_GRACE_S if claim is not None else UNCLAIMED_GRACE_S
        orphans.append(Orphan(job=job, addrs=claim.addrs if claim else (),
                              refund_after_ms=job.locked_at + int(grace * 1000)))
    return orphans


def live_owner(home: Path, job_id: str) -> str | None:
    """The pid of the live process on this home that holds the job's escrow, if any."""
    for path, alive, claims in _scan(home):
        if alive and any(c.job_id == job_id for c in claims):
            return path.name.split("-", 1)[0]
    return None


def drop_dead_leases(ledger: Ledger, home: Path) -> int:
    """Remove lease files of dead processes none of whose escrows is still locked."""
    leases = read_leases(home)
    locked = {j.job_id for j in ledger.jobs() if j.state == "locked"}
    removed = 0
    for path in leases.dead_files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not any(c.job_id in locked for c in _read_claims(fd)):
                path.unlink()
                removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def orphan_json(o: Orphan) -> dict[str, Any]:
    return {"job_id": o.job.job_id, "provider": o.job.provider, "amount": o.job.amount,
            "refund_after_ms": o.refund_after_ms}
