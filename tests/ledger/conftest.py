"""Fixtures for the ledger tests: fixed identities, a settable clock, open ledgers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import Ledger
from protocol import Identity, sha256_hex

NOW_MS = 1_700_000_000_000
ALICE = Identity(bytes([1]) * 32)  # requester
BOB = Identity(bytes([2]) * 32)  # provider
CAROL = Identity(bytes([3]) * 32)  # another provider
RESULT = sha256_hex(b"a signed result")


def job(n: int | str) -> str:
    return sha256_hex(f"job {n}".encode())


class Clock:
    """Milliseconds that move only when told."""

    def __init__(self, now: int = NOW_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def alice(db_path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(db_path, ALICE, clock=clock) as ledger:
        yield ledger


@pytest.fixture
def bob(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "bob.db", BOB, clock=clock) as ledger:
        yield ledger
