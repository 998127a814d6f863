"""A node's home directory, its persistent Ed25519 identity, and a provider's lock on it.

`Home(root)` names every file under a home (the names never change, so old homes keep
working); `atomic_write_json` is the one way a JSON file there is replaced.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.errors import HomeLocked as HomeLocked
from node.errors import UserError
from protocol.identity import Identity

if TYPE_CHECKING:
    from ledger import Ledger

@dataclasses.dataclass(frozen=True, slots=True)
class Home:
    """Every path under one node's home, by what it holds."""

    root: Path

    @property
    def identity(self) -> Path:
        """The Ed25519 seed (0600)."""
        return self.root / "identity.key"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def lock(self) -> Path:
        """A provider's flock on this home (HomeLock)."""
        return self.root / "provider.lock"

    @property
    def peers(self) -> Path:
        """RTT, coordinates and trust per peer (node/net/peers.py)."""
        return self.root / "peers.json"

    @property
    def offers(self) -> Path:
        """Verified ads kept until they expire (node/requester/offers.py)."""
        return self.root / "offers.msgpack"

    @property
    def kept(self) -> Path:
        """A provider's detached jobs, kept for their requesters (node/provider/kept.py)."""
        return self.root / "kept"

    @property
    def detached(self) -> Path:
        """A requester's detached jobs, to fetch later (node/requester/detach.py)."""
        return self.root / "detached.json"

    @property
    def holds(self) -> Path:
        """Results held for a verdict (node/requester/holds.py)."""
        return self.root / "holds.json"

    @property
    def leases(self) -> Path:
        """Escrow leases of live requester processes (node/requester/escrows.py)."""
        return self.root / "leases"

    @property
    def status(self) -> Path:
        """The provider's status document (node/provider/status.py)."""
        return self.root / "status.json"

    @property
    def sessions(self) -> Path:
        """Sessions this requester opened and their signed ends (node/requester/records.py)."""
        return self.root / "sessions"

    @property
    def results(self) -> Path:
        """Signed results a provider keeps for settle (node/provider/results.py)."""
        return self.root / "results"

    @property
    def benchmark(self) -> Path:
        """The provider's measured benchmark, advertised in its ads."""
        return self.root / "benchmark.json"

    @property
    def local_benchmark(self) -> Path:
        """This machine measured for the requester's plan (node/requester/plan.py)."""
        return self.root / "local-benchmark.json"

    @property
    def cache(self) -> Path:
        """The provider's input cache, unless its config names another dir."""
        return self.root / "cache"

    @property
    def jobs(self) -> Path:
        """The provider's per-job work dirs."""
        return self.root / "jobs"


def atomic_write_json(path: Path, doc: Any, *, indent: int | None = None,
                      sort_keys: bool = False, newline: bool = False, mode: int = 0o644,
                      fsync: bool = False, parents: bool = False) -> None:
    """Replace `path` with `doc` as JSON: a reader sees the old file or the new, never half.
    The folder must exist unless `parents` (then it is made)."""
    text = json.dumps(doc, indent=indent, sort_keys=sort_keys) + ("\n" if newline else "")
    atomic_write_bytes(path, text.encode(), mode=mode, fsync=fsync, parents=parents)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, fsync: bool = False,
                       parents: bool = False) -> None:
    """Replace `path` with `data`, as atomic_write_json does."""
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_home() -> Path:
    from node.config import resolve

    env = resolve(None, "OFFLOAD_HOME")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("offload"))


def resolve_home(home: str | Path | None) -> Path:
    return Path(home) if home else default_home()


def init_identity(home: Path) -> tuple[Identity, bool]:
    """Load the identity in `home`, creating it (mode 0600) if absent. Returns (id, created)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = Home(home).identity
    if path.exists():
        return load_identity(home), False
    identity = Identity.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(identity.seed)
    return identity, True


def load_identity(home: Path) -> Identity:
    path = Home(home).identity
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no identity in {home}; run `offload --home {home} init`") from None
    if len(seed) != 32:
        raise UserError(f"{path} is not an offload identity key (expected 32 bytes)")
    if path.stat().st_mode & 0o077:
        raise UserError(f"{path} is readable by others; run `chmod 600 {path}`")
    return Identity(seed)


LOCK_RETRY_S = 2.0  # a dead daemon's job watchdog may hold the lock for a moment


class HomeLock:
    """An exclusive `flock` on `home/provider.lock`, held for a daemon's life.

    The holder's pid is written in the file; the kernel drops the lock when the holder
    dies, kill -9 included. The descriptor is close-on-exec: no child inherits the lock.
    """

    def __init__(self, home: Path) -> None:
        self.path = Home(home).lock
        self._fd: int | None = None

    def acquire(self, *, retry_s: float = LOCK_RETRY_S) -> HomeLock:
        home = self.path.parent
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + retry_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = _holder(fd)
                os.close(fd)
                raise HomeLocked(
                    f"{home} is in use by another provider (pid {holder}); stop it first "
                    f"(kill {holder}), or give this one its own home with --home DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the pid stays in the file; only the flock says who holds it

    def __enter__(self) -> HomeLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def open_ledger(home: Path, identity: Identity) -> Ledger:
    """The home's ledger. LedgerUnavailable names a disk that is full or read-only or a
    file another process holds locked; only a file that is not an SQLite ledger at all
    gets the advice to move it aside."""
    import sqlite3

    from ledger import Ledger, LocalLedgerError
    from node.errors import LedgerFailed

    path = Home(home).ledger
    try:
        return Ledger.open(path, identity)
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            raise UserError(f"{path} is not a ledger ({exc}); move it aside and run the "
                            "command again") from None
        raise LedgerFailed(f"ledger {path} cannot be opened ({exc}); run `offload ledger "
                        "verify`") from None
    except LocalLedgerError as exc:
        raise UserError(str(exc)) from None


def write_ready_file(path: Path, peer_id: str, addrs: Sequence[str], **extra: Any) -> None:
    """What `--ready-file` promises: {"peer_id", "addrs", ...} once a node is up."""
    atomic_write_json(path, {"peer_id": peer_id, "addrs": list(addrs), **extra})
