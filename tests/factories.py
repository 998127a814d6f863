"""One place that builds test messages: CapacityAds, JobSpecs, JobResults, Receipts.

Fixed identities sign them (ALICE requests, BOB provides, CAROL is a third party), so a
signature is the same in every run. Every builder takes keyword overrides of any field.

ad()        a full ad (a GPU, a priced runtime, tier A, region, coordinates, a cached input)
plain_ad()  the least an ad can be: one CPU device, free, tier "none", expiring NOW + 1 s
dial_ad()   a plain ad naming a real provider's peer id and addresses (e2e tests)
spec(), result(), receipt()  valid messages from ALICE to BOB about one job
signed(msg) the message signed by the party the protocol expects to sign it
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from protocol import (
    CapacityAd,
    Device,
    Identity,
    InputFile,
    JobResult,
    JobSpec,
    OutputFile,
    Price,
    Receipt,
    Resources,
    Runtime,
    SandboxProfile,
    Signed,
    Usage,
    sha256_hex,
    sign,
)
from protocol.messages import Signable

NOW_MS = 1_700_000_000_000
NOW = 1_000_000
"""The clock of plain_ad (scheduler tests count from here)."""
ALICE = Identity(bytes([1]) * 32)  # requester
BOB = Identity(bytes([2]) * 32)  # provider
CAROL = Identity(bytes([3]) * 32)  # a third party
DIGEST_A = sha256_hex(b"main.py contents")
DIGEST_B = sha256_hex(b"data.bin contents")
JOB_ID = sha256_hex(b"some job")

M = TypeVar("M")
S = TypeVar("S", bound=Signable)


def device(**kw: Any) -> Device:
    fields: dict[str, Any] = dict(kind="cuda", model="NVIDIA H100", memory_mb=81920,
                                  compute_capability="9.0", count=1, gflops=51000.5)
    return Device(**fields | kw)


def cpu_device(**kw: Any) -> Device:
    fields: dict[str, Any] = dict(kind="cpu", model="c", memory_mb=8192, compute_capability="",
                                  count=1, gflops=0.0)
    return Device(**fields | kw)


def python3(**kw: Any) -> Runtime:
    fields: dict[str, Any] = dict(name="python3", version="3.11", packages={}, digest="")
    return Runtime(**fields | kw)


def ad(**kw: Any) -> CapacityAd:
    fields: dict[str, Any] = dict(
        peer_id=BOB.peer_id, addrs=("/ip4/10.0.0.2/tcp/4001",), devices=(device(),), cpus=16,
        memory_mb=131072,
        runtimes=(Runtime(name="python", version="3.11", packages={"torch": "2.13.0"},
                          digest="ab" * 32),),
        price=Price(start=10, per_cpu_second=1, per_gpu_second=100, minimum=50),
        sandbox_tier="A", region="eu-central", coords=(52.52, 13.405), cached=(DIGEST_B,),
        load=0.25, seq=7, expires=NOW_MS + 120_000)
    return CapacityAd(**fields | kw)


def plain_ad(**kw: Any) -> CapacityAd:
    """A fresh peer id each call unless `peer_id` is given."""
    fields: dict[str, Any] = dict(
        peer_id=kw.pop("peer_id", None) or Identity.generate().peer_id, addrs=(), cpus=4,
        memory_mb=8192, devices=(cpu_device(),), runtimes=(python3(),), price=Price(),
        sandbox_tier="none", region="", coords=(), cached=(), load=0.0, seq=1,
        expires=NOW + 1000)
    return CapacityAd(**fields | kw)


def dial_ad(peer_id: str, addrs: tuple[str, ...] | list[str], *, expires: int) -> CapacityAd:
    """The least ad a requester needs to send a job to a real provider it knows."""
    return plain_ad(peer_id=peer_id, addrs=tuple(addrs), cpus=1, memory_mb=1,
                    devices=(cpu_device(model="", memory_mb=1),), runtimes=(python3(version=""),),
                    seq=0, expires=expires)


def input_file(name: str = "main.py", **kw: Any) -> InputFile:
    fields: dict[str, Any] = dict(name=name, sha256=DIGEST_A, size=120)
    return InputFile(**fields | kw)


def spec(**kw: Any) -> JobSpec:
    fields: dict[str, Any] = dict(
        requester=ALICE.peer_id, provider=BOB.peer_id, runtime="python3.11",
        entrypoint="main.py", args=("--epochs", "3"),
        inputs=(input_file(), input_file("data.bin", sha256=DIGEST_B, size=4096)),
        resources=Resources(gpus=1, cpus=4, memory_mb=8192, max_seconds=900),
        max_price=1_000_000, verification="none", nonce=bytes(range(16)), created_at=NOW_MS)
    return JobSpec(**fields | kw)


def sandbox(**kw: Any) -> SandboxProfile:
    fields: dict[str, Any] = dict(
        tier="A", wall_limit_s=900, memory_limit_mb=8192, cpu_limit=4.0, pids_limit=256,
        disk_limit_mb=1024, network="none", runtime="python3.11", runtime_digest=DIGEST_A,
        warm=False)
    return SandboxProfile(**fields | kw)


def result(**kw: Any) -> JobResult:
    fields: dict[str, Any] = dict(
        job_id=JOB_ID, provider=BOB.peer_id, requester=ALICE.peer_id, status="ok",
        exit_code=0, stdout="epoch 1\nepoch 2\n", stderr="", stdout_truncated=False,
        stderr_truncated=False,
        outputs=(OutputFile(name="out/model.pt", sha256=DIGEST_B, size=2048),),
        limits_hit=(), usage=Usage(wall_s=12.5, cpu_s=40.0, gpu_s=11.0, peak_memory_mb=3000),
        sandbox=sandbox(), price_charged=4200, finished_at=NOW_MS + 13_000)
    return JobResult(**fields | kw)


def receipt(**kw: Any) -> Receipt:
    fields: dict[str, Any] = dict(
        job_id=JOB_ID, requester=ALICE.peer_id, provider=BOB.peer_id, outcome="accepted",
        reason="", charge=4200, result_digest=DIGEST_B, issued_at=NOW_MS)
    return Receipt(**fields | kw)


SIGNERS: dict[type[Any], Identity] = {CapacityAd: BOB, JobResult: BOB, JobSpec: ALICE,
                                      Receipt: ALICE}


def signed(message: S, by: Identity | None = None) -> Signed[S]:
    """`message` signed by `by`, else by its usual signer (BOB for ads and results)."""
    return sign(message, by or SIGNERS[type(message)])


def replace(message: M, **changes: Any) -> M:
    return dataclasses.replace(message, **changes)  # type: ignore[type-var]
