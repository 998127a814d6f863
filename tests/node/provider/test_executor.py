"""GPU assignment and the limits a job spec asks for."""

from __future__ import annotations

import pytest

from node.provider.executor import GpuAllocator, limits_for
from node.provider.sandbox.errors import SandboxUnavailable
from node.provider.sandbox.gpu import Gpu
from protocol import Identity, InputFile, JobSpec, Resources

GPUS = [Gpu(index=i, minor=i, uuid=f"GPU-{i}", name="H100", memory_mb=81559,
            compute_capability="9.0", driver="580") for i in range(3)]


def test_each_gpu_goes_to_one_job_at_a_time() -> None:
    alloc = GpuAllocator(GPUS)
    first = alloc.take(2)
    assert [g.index for g in first] == [0, 1] and alloc.free == 1
    with pytest.raises(SandboxUnavailable, match=r"2 GPU\(s\) asked, 1 free"):
        alloc.take(2)
    second = alloc.take(1)
    assert second == [GPUS[2]] and alloc.free == 0
    alloc.give_back(first)
    alloc.give_back(first)  # twice is harmless
    assert alloc.free == 2 and alloc.take(0) == []


def test_limits_follow_the_spec() -> None:
    me = Identity.generate()
    spec = JobSpec(requester=me.peer_id, provider=me.peer_id, runtime="python3",
                   entrypoint="a.py", args=(),
                   inputs=(InputFile(name="a.py", sha256="ab" * 32, size=1),),
                   resources=Resources(cpus=3, memory_mb=512, disk_mb=64, max_seconds=9),
                   max_price=None, verification="none", nonce=b"n" * 16, created_at=1)
    limits = limits_for(spec)
    assert (limits.wall_s, limits.memory_mb, limits.cpus, limits.disk_mb) == (9.0, 512, 3.0, 64)
