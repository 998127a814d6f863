"""Offline verification of saved results and the output-folder boundary."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from node.errors import ResultRejected
from node.requester.verify import safe_join, verify_result_bytes, verify_result_file
from protocol import Identity, JobResult, OutputFile, SandboxProfile, Usage, sign


def make_result(provider: Identity, requester: Identity, outputs: dict[str, bytes]) -> JobResult:
    return JobResult(
        job_id="ab" * 32, provider=provider.peer_id, requester=requester.peer_id, status="ok",
        exit_code=0, stdout="hi\n", stderr="", stdout_truncated=False, stderr_truncated=False,
        outputs=tuple(OutputFile(name=n, sha256=hashlib.sha256(d).hexdigest(), size=len(d))
                      for n, d in outputs.items()),
        limits_hit=(), usage=Usage(wall_s=1.0, cpu_s=0.5, gpu_s=0.0, peak_memory_mb=10),
        sandbox=SandboxProfile(tier="none", wall_limit_s=60, memory_limit_mb=0, cpu_limit=1.0,
                               pids_limit=0, disk_limit_mb=0, network="host",
                               runtime="python3", runtime_digest="", warm=False),
        price_charged=0, finished_at=1)


def test_verify_result_file_checks_signature_and_outputs(tmp_path: Path) -> None:
    prov, req = Identity.generate(), Identity.generate()
    signed = sign(make_result(prov, req, {"a.txt": b"A", "d/b.txt": b"B"}), prov)
    (tmp_path / "result.msgpack").write_bytes(signed.raw)
    (tmp_path / "a.txt").write_bytes(b"A")
    with pytest.raises(ResultRejected, match=r"output d/b.txt is missing beside result.msgpack"):
        verify_result_file(tmp_path / "result.msgpack")
    (tmp_path / "d").mkdir()
    (tmp_path / "d/b.txt").write_bytes(b"B")
    assert verify_result_file(tmp_path / "result.msgpack").message.provider == prov.peer_id
    (tmp_path / "a.txt").write_bytes(b"Z")
    with pytest.raises(ResultRejected, match=r"output a\.txt does not match its signed digest"):
        verify_result_file(tmp_path / "result.msgpack")


def test_verify_result_bytes_binds_job_provider_and_requester() -> None:
    prov, req, other = Identity.generate(), Identity.generate(), Identity.generate()
    raw = sign(make_result(prov, req, {}), prov).raw
    verify_result_bytes(raw, job_id="ab" * 32, provider=prov.peer_id, requester=req.peer_id)
    with pytest.raises(ResultRejected, match="another job"):
        verify_result_bytes(raw, job_id="cd" * 32)
    with pytest.raises(ResultRejected, match="signed by a provider other than"):
        verify_result_bytes(raw, provider=other.peer_id)
    with pytest.raises(ResultRejected, match="addressed to another requester"):
        verify_result_bytes(raw, requester=other.peer_id)


def test_safe_join_refuses_escapes(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.txt") == (tmp_path / "a/b.txt").resolve()
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ResultRejected, match="outside the output folder"):
        safe_join(tmp_path, "link/passwd")
