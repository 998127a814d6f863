"""Warm workers: torch already imported, one job each, nothing carried over to the next."""

from __future__ import annotations

import trio

from node.provider.sandbox.pool import WarmPool, warm_pool
from node.provider.sandbox.runner import JobLimits, job_env

PLACES = ("os.path.join(os.environ['TMPDIR'], 'secret'), "
          "os.path.join(os.environ['HOME'], 'secret'), '/dev/shm/secret'")
FIRST = f"""\
import os, sys, torch
torch.offload_marker = 'job one'
os.environ['LEAK'] = '1'
for p in ({PLACES}):
    try:
        open(p, 'w').write('job one')
    except OSError:
        pass  # tier B has no private /dev/shm: the job cannot write there at all
print('torch preloaded:', 'torch' in sys.modules, 'pid', os.getpid())
"""
SECOND = f"""\
import os, sys
import torch
leaks = [os.path.basename(os.path.dirname(p)) or p
         for p in ({PLACES}) if os.path.exists(p)]
leaks += ['module'] if hasattr(torch, 'offload_marker') else []
leaks += ['env'] if 'LEAK' in os.environ else []
print('leaks:', leaks)
"""


async def ready(pool: WarmPool, n: int = 1) -> None:
    with trio.fail_after(90):
        while pool.ready < n:
            await trio.sleep(0.05)


async def run_in(pool: WarmPool, code: str) -> tuple[str, str, bool]:
    worker = pool.take()
    assert worker is not None
    job = worker.job
    try:
        job.input_path("job.py").write_text(code)
        job.expose_input("job.py")
        limits = JobLimits(wall_s=60)
        result = await worker.run("job.py", [], limits, job_env(limits))
    finally:
        worker.done()
    assert result.process.status == "ok", result.process.stderr.decode()
    return result.process.stdout.decode(), str(job.dir), result.warm


async def test_each_worker_serves_one_job_and_leaves_nothing_behind(sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        out1, dir1, warm1 = await run_in(pool, FIRST)
        assert "torch preloaded: True" in out1 and warm1
        await ready(pool)
        assert not await trio.Path(dir1).exists(), "the used worker's sandbox survived"
        out2, dir2, warm2 = await run_in(pool, SECOND)
        assert warm2 and dir2 != dir1
        assert "leaks: []" in out2, out2


async def test_canary_the_leak_check_sees_leaks_within_one_sandbox(sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        out, _, _ = await run_in(pool, FIRST + "\n" + SECOND)
        tier_a = sandbox.tier == "A"  # type: ignore[attr-defined]
        expected = ["tmp", "work", "shm"] if tier_a else [".tmp", "work"]
        assert f"leaks: {[*expected, 'module', 'env']}" in out, out


async def test_exit_codes_tracebacks_and_unflushed_output_survive_the_fast_exit(
        sandbox: object) -> None:
    cases = [("import sys\nprint('partial', end='')\nsys.exit(3)\n", 3, "partial", ""),
             ("raise ValueError('boom')\n", 1, "", "ValueError: boom"),
             ("import sys\nsys.exit('bad input')\n", 1, "", "bad input"),
             ("import sys\nsys.stdout.write('x' * 100000)\n", 0, "x" * 100, "")]
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        for code, exit_code, out, err in cases:
            await ready(pool)
            worker = pool.take()
            assert worker is not None
            try:
                worker.job.input_path("job.py").write_text(code)
                worker.job.expose_input("job.py")
                limits = JobLimits(wall_s=60)
                r = await worker.run("job.py", [], limits, job_env(limits))
            finally:
                worker.done()
            assert r.process.exit_code == exit_code, r.process.stderr
            assert out in r.process.stdout.decode() and err in r.process.stderr.decode()
