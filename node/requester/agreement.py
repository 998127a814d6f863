"""What it means for two providers' results of one job to agree, and canary jobs.

A result's fingerprint is its status, exit code, stdout and output files. `exact` needs
them identical (output files by digest). `numeric(rel, abs)` lets the numbers in stdout
and in text outputs differ within a tolerance (float results from different hardware);
everything that is not a number, and every binary output, must still be identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Callable
from pathlib import Path

from node.requester.verify import safe_join
from protocol import JobResult
from scheduler.verification import tolerance

_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)",
                     re.IGNORECASE)
TEXT_MAX = 16 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Fingerprint:
    status: str
    exit_code: int
    texts: tuple[tuple[str, bytes | None, str], ...]
    """(name, text content or None when binary/large, sha256) for stdout and each output."""


def fingerprint(result: JobResult, out_dir: Path) -> Fingerprint:
    texts: list[tuple[str, bytes | None, str]] = []
    stdout = result.stdout.encode()
    texts.append(("<stdout>", stdout, hashlib.sha256(stdout).hexdigest()))
    for out in sorted(result.outputs, key=lambda o: o.name):
        content: bytes | None = None
        if out.size <= TEXT_MAX:
            data = safe_join(out_dir, out.name).read_bytes()
            content = data if _is_text(data) else None
        texts.append((out.name, content, out.sha256))
    return Fingerprint(status=result.status, exit_code=result.exit_code, texts=tuple(texts))


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in data


Comparator = Callable[[Fingerprint, Fingerprint], bool]


def exact(a: Fingerprint, b: Fingerprint) -> bool:
    return (a.status, a.exit_code) == (b.status, b.exit_code) and [
        (n, d) for n, _, d in a.texts] == [(n, d) for n, _, d in b.texts]


def numeric(rel: float, abs_: float = 0.0) -> Comparator:
    """Agreement up to a tolerance on every number; all other bytes must be identical."""
    close = tolerance(rel, abs_)

    def same(a: Fingerprint, b: Fingerprint) -> bool:
        if (a.status, a.exit_code) != (b.status, b.exit_code) or len(a.texts) != len(b.texts):
            return False
        for (na, ca, da), (nb, cb, db) in zip(a.texts, b.texts, strict=True):
            if na != nb:
                return False
            if da == db:
                continue
            if ca is None or cb is None:
                return False
            if _NUMBER.sub(b"#", ca) != _NUMBER.sub(b"#", cb):
                return False
            if not close(_numbers(ca), _numbers(cb)):
                return False
        return True

    return same


def _numbers(data: bytes) -> list[float]:
    return [float(m) for m in _NUMBER.findall(data)]


@dataclasses.dataclass(frozen=True, slots=True)
class Canary:
    """A small job whose answer this node knows; a provider cannot tell it from work."""

    script: str
    expected_stdout: str


def make_canary(rounds: int = 20_000) -> Canary:
    seed = secrets.token_hex(16)
    script = (
        "import hashlib\n"
        f"h = bytes.fromhex({seed!r})\n"
        f"for _ in range({rounds}):\n"
        "    h = hashlib.sha256(h).digest()\n"
        "print(h.hex())\n")
    h = bytes.fromhex(seed)
    for _ in range(rounds):
        h = hashlib.sha256(h).digest()
    return Canary(script=script, expected_stdout=h.hex() + "\n")


def canary_name() -> str:
    return f"task_{secrets.token_hex(4)}.py"
