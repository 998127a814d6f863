"""A node's home directory and its persistent Ed25519 identity."""

from __future__ import annotations

import os
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
