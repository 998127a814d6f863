"""Shared builders for the protocol tests: fixed identities and valid messages to vary.

Test modules here are not a package, so builders are handed out as fixtures. Every
fixture is session-scoped (and deterministic), which keeps them usable from hypothesis
tests without the function-scoped-fixture health check firing.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocol import (
    CapacityAd,
    Device,
    Identity,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Resources,
    Runtime,
    SandboxProfile,
    Usage,
    sha256_hex,
)
from protocol.codec import pack
from protocol.signing import VERSION

NOW_MS = 1_700_000_000_000
DIGEST_A = sha256_hex(b"main.py contents")
DIGEST_B = sha256_hex(b"data.bin contents")


class Build:
    """Valid messages with keyword overrides; three fixed identities."""

    def __init__(self) -> None:
        self.alice = Identity(bytes([1]) * 32)  # requester
        self.bob = Identity(bytes([2]) * 32)  # provider
        self.carol = Identity(bytes([3]) * 32)  # a third party
        self.now_ms = NOW_MS

    def device(self, **kw: Any) -> Device:
        fields: dict[str, Any] = dict(kind="cuda", model="NVIDIA H100", memory_mb=81920,
                                      compute_capability="9.0", count=1, gflops=51000.5)
        fields.update(kw)
        return Device(**fields)

    def ad(self, **kw: Any) -> CapacityAd:
        fields: dict[str, Any] = dict(
            peer_id=self.bob.peer_id,
            addrs=("/ip4/10.0.0.2/tcp/4001",),
            devices=(self.device(),),
            cpus=16,
            memory_mb=131072,
            runtimes=(Runtime(name="python", version="3.11", packages={"torch": "2.13.0"},
                              digest="ab" * 32),),
            price=Price(start=10, per_cpu_second=1, per_gpu_second=100, minimum=50),
            sandbox_tier="A",
            region="eu-central",
            coords=(52.52, 13.405),
            cached=(DIGEST_B,),
            load=0.25,
            seq=7,
            expires=NOW_MS + 120_000,
        )
        fields.update(kw)
        return CapacityAd(**fields)

    def input_file(self, name: str = "main.py", **kw: Any) -> InputFile:
        fields: dict[str, Any] = dict(name=name, sha256=DIGEST_A, size=120)
        fields.update(kw)
        return InputFile(**fields)

    def spec(self, **kw: Any) -> JobSpec:
        fields: dict[str, Any] = dict(
            requester=self.alice.peer_id,
            provider=self.bob.peer_id,
            runtime="python3.11",
            entrypoint="main.py",
            args=("--epochs", "3"),
            inputs=(self.input_file(),
                    self.input_file("data.bin", sha256=DIGEST_B, size=4096)),
            resources=Resources(gpus=1, cpus=4, memory_mb=8192, max_seconds=900),
            max_price=1_000_000,
            verification="none",
            nonce=bytes(range(16)),
            created_at=NOW_MS,
        )
        fields.update(kw)
        return JobSpec(**fields)

    def result(self, **kw: Any) -> JobResult:
        fields: dict[str, Any] = dict(
            job_id=sha256_hex(b"some job"),
            provider=self.bob.peer_id,
            requester=self.alice.peer_id,
            status="ok",
            exit_code=0,
            stdout="epoch 1\nepoch 2\n",
            stderr="",
            stdout_truncated=False,
            stderr_truncated=False,
            outputs=(OutputFile(name="out/model.pt", sha256=DIGEST_B, size=2048),),
            limits_hit=(),
            usage=Usage(wall_s=12.5, cpu_s=40.0, gpu_s=11.0, peak_memory_mb=3000),
            sandbox=SandboxProfile(tier="A", wall_limit_s=900, memory_limit_mb=8192,
                                   cpu_limit=4.0, pids_limit=256, disk_limit_mb=1024,
                                   network="none", runtime="python3.11",
                                   runtime_digest=DIGEST_A, warm=False),
            price_charged=4200,
            finished_at=NOW_MS + 13_000,
        )
        fields.update(kw)
        return JobResult(**fields)


def envelope(body: Any, *, type_name: str, sig: Any, v: Any = VERSION,
             **extra: Any) -> bytes:
    """A signed envelope packed by hand with the canonical codec."""
    return pack({"v": v, "type": type_name, "body": body, "sig": sig, **extra})


@pytest.fixture(scope="session")
def build() -> Build:
    return Build()


@pytest.fixture(scope="session")
def pack_envelope() -> Any:
    return envelope
