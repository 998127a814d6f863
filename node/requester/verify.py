"""Offline checks of a saved result: the provider's signature and every output digest; or
a saved session result (records.py): its provider's signature and well-formed ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

from node.errors import ResultRejected
from protocol import JobResult, ProtocolError, Signed, open_signed
from protocol.sessions import SessionResult
from protocol.signing import envelope_fields

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
    signed = verify_result_bytes(_read(path))
    for out in signed.message.outputs:
        file = safe_join(path.parent, out.name)
        try:
            data = file.read_bytes()
        except OSError:
            raise ResultRejected(f"output {out.name} is missing beside {path.name}") from None
        if len(data) != out.size or hashlib.sha256(data).hexdigest() != out.sha256:
            raise ResultRejected(f"output {out.name} does not match its signed digest")
    return signed


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ResultRejected(f"cannot read {path}: {exc.strerror}") from exc


def is_session_file(path: Path) -> bool:
    """Whether `path` holds a signed session result (False for anything else, a job's
    result, a file that cannot be read or decoded: the job check names what is wrong)."""
    try:
        doc = envelope_fields(path.read_bytes())
    except (OSError, ProtocolError):
        return False
    return bool(doc["type"] == SessionResult.type_name)


def verify_session_bytes(raw: bytes) -> Signed[SessionResult]:
    """Open a signed SessionResult: the provider's signature over it, and its session id
    and transcript head well-formed sha256 digests (the message's own checks)."""
    try:
        return open_signed(raw, SessionResult)
    except ProtocolError as exc:
        raise ResultRejected(f"session result is not intact: {exc}") from exc


def verify_session_file(path: Path) -> Signed[SessionResult]:
    """A saved signed SessionResult, opened as verify_session_bytes does."""
    return verify_session_bytes(_read(path))
