"""Offline checks of a saved result: the provider's signature and every output digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from node.errors import ResultRejected
from protocol import JobResult, ProtocolError, Signed, open_signed

RESULT_FILE = "result.msgpack"


def verify_result_bytes(raw: bytes, *, job_id: str | None = None, provider: str | None = None,
                        requester: str | None = None) -> Signed[JobResult]:
    """Open a signed JobResult; ResultRejected names the first thing that is wrong."""
    try:
        signed = open_signed(raw, JobResult)
    except ProtocolError as exc:
        raise ResultRejected(f"result is not intact: {exc}") from exc
    r = signed.message
    if job_id is not None and r.job_id != job_id:
        raise ResultRejected("result is for another job")
    if provider is not None and r.provider != provider:
        raise ResultRejected("result is signed by a provider other than the one that ran it")
    if requester is not None and r.requester != requester:
        raise ResultRejected("result is addressed to another requester")
    return signed


def safe_join(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ResultRejected(f"output name {rel!r} points outside the output folder")
    return path


def verify_result_file(path: Path) -> Signed[JobResult]:
    """Check `path` and the output files saved beside it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ResultRejected(f"cannot read {path}: {exc.strerror}") from exc
    signed = verify_result_bytes(raw)
    for out in signed.message.outputs:
        file = safe_join(path.parent, out.name)
        try:
            data = file.read_bytes()
        except OSError:
            raise ResultRejected(f"output {out.name} is missing beside {path.name}") from None
        if len(data) != out.size or hashlib.sha256(data).hexdigest() != out.sha256:
            raise ResultRejected(f"output {out.name} does not match its signed digest")
    return signed
