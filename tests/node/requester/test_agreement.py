"""When two providers' results agree: exact digests, or numbers within a tolerance."""

from __future__ import annotations

import hashlib
from pathlib import Path

from node.requester.agreement import Fingerprint, exact, fingerprint, make_canary, numeric
from protocol import Identity, JobResult, OutputFile, SandboxProfile, Usage
from protocol.identity import sha256_hex


def fp(stdout: bytes, *, files: dict[str, bytes | None] | None = None, status: str = "ok",
       code: int = 0) -> Fingerprint:
    texts: list[tuple[str, bytes | None, str]] = [
        ("<stdout>", stdout, hashlib.sha256(stdout).hexdigest())]
    for name, content in (files or {}).items():
        texts.append((name, content, hashlib.sha256(content or name.encode()).hexdigest()))
    return Fingerprint(status=status, exit_code=code, texts=tuple(texts))


def test_exact_needs_identical_bytes() -> None:
    assert exact(fp(b"loss 0.25\n"), fp(b"loss 0.25\n"))
    assert not exact(fp(b"loss 0.25\n"), fp(b"loss 0.2500001\n"))
    assert not exact(fp(b"x\n"), fp(b"x\n", status="failed", code=1))


def test_numeric_lets_numbers_differ_within_the_tolerance_only() -> None:
    same = numeric(1e-3)
    assert same(fp(b"loss 0.25 acc 91.0\n"), fp(b"loss 0.2500001 acc 91.00002\n"))
    assert not same(fp(b"loss 0.25\n"), fp(b"loss 0.26\n"))         # beyond the tolerance
    assert not same(fp(b"loss 0.25\n"), fp(b"lost 0.25\n"))         # the text differs
    assert not same(fp(b"1 2 3\n"), fp(b"1 2\n"))                   # a number is missing
    assert same(fp(b"loss nan\n"), fp(b"loss nan\n"))  # identical bytes agree
    assert not same(fp(b"loss nan\n"), fp(b"loss 0.1\n"))


def test_numeric_compares_text_outputs_and_needs_binary_ones_identical() -> None:
    same = numeric(1e-6)
    a = fp(b"", files={"m.json": b'{"w": 1.0000000}', "w.bin": None})
    b = fp(b"", files={"m.json": b'{"w": 1.0000001}', "w.bin": None})
    assert same(a, b)
    c = Fingerprint(status="ok", exit_code=0, texts=(b.texts[0], b.texts[1],
                                                     ("w.bin", None, "0" * 64)))
    assert not same(a, c)


def test_a_fingerprint_reads_text_outputs_and_skips_binary_content(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("acc 0.9\n")
    (tmp_path / "w.bin").write_bytes(b"\x00\x01")
    prov, req = Identity.generate(), Identity.generate()
    result = JobResult(
        job_id=sha256_hex(b"j"), provider=prov.peer_id, requester=req.peer_id, status="ok",
        exit_code=0, stdout="done\n", stderr="", stdout_truncated=False,
        stderr_truncated=False, limits_hit=(), price_charged=0, finished_at=1,
        outputs=(OutputFile(name="m.txt", sha256=sha256_hex(b"acc 0.9\n"), size=8),
                 OutputFile(name="w.bin", sha256=sha256_hex(b"\x00\x01"), size=2)),
        usage=Usage(wall_s=1.0, cpu_s=1.0, gpu_s=0.0, peak_memory_mb=1),
        sandbox=SandboxProfile(tier="A", wall_limit_s=9, memory_limit_mb=9, cpu_limit=1.0,
                               pids_limit=9, disk_limit_mb=9, network="none",
                               runtime="python3", runtime_digest=sha256_hex(b"r"),
                               warm=False))
    got = fingerprint(result, tmp_path)
    assert [(n, c) for n, c, _ in got.texts] == [
        ("<stdout>", b"done\n"), ("m.txt", b"acc 0.9\n"), ("w.bin", None)]


def test_a_canary_knows_its_answer() -> None:
    import subprocess
    import sys

    c = make_canary(rounds=100)
    ran = subprocess.run([sys.executable, "-c", c.script], capture_output=True, text=True,
                         check=True)
    assert ran.stdout == c.expected_stdout
    assert make_canary(rounds=100).expected_stdout != c.expected_stdout  # fresh seed each
