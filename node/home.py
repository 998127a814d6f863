"""A node's home directory, its persistent Ed25519 identity, and a provider's lock on it."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from node.errors import UserError
from protocol.identity import Identity

KEY_FILE = "identity.key"


def default_home() -> Path:
    env = os.environ.get("OFFLOAD_HOME")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("offload"))


def resolve_home(home: str | Path | None) -> Path:
    return Path(home) if home else default_home()


def init_identity(home: Path) -> tuple[Identity, bool]:
    """Load the identity in `home`, creating it (mode 0600) if absent. Returns (id, created)."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / KEY_FILE
    if path.exists():
        return load_identity(home), False
    identity = Identity.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(identity.seed)
    return identity, True


def load_identity(home: Path) -> Identity:
    path = home / KEY_FILE
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no identity in {home}; run `offload --home {home} init`") from None
    if len(seed) != 32:
        raise UserError(f"{path} is not an offload identity key (expected 32 bytes)")
    if path.stat().st_mode & 0o077:
        raise UserError(f"{path} is readable by others; run `chmod 600 {path}`")
    return Identity(seed)


LOCK_FILE = "provider.lock"
LOCK_RETRY_S = 2.0  # a dead daemon's job watchdog may hold the lock for a moment


class HomeLocked(UserError):
    """Another provider holds this home; the message names its pid."""


class HomeLock:
    """An exclusive `flock` on `home/provider.lock`, held for a daemon's life.

    The holder's pid is written in the file; the kernel drops the lock when the holder
    dies, kill -9 included. The descriptor is close-on-exec: no child inherits the lock.
    """

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
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
