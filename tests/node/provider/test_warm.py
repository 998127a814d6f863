"""Warm workers: torch already imported; a worker destroyed after its job, or parked for
the same requester with nothing of the last job left; requesters never share one."""

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


PROBE = """\
import os, sys
def sandbox_id():
    return str(os.stat('.').st_dev)  # each sandbox's /work is a tmpfs of its own
def mine(p):  # in this sandbox's cgroup (tier B shares the host's pid namespace)
    try:
        return open(f'/proc/{p}/cgroup').read() == open('/proc/self/cgroup').read()
    except OSError:
        return False
others = sorted(int(p) for p in os.listdir('/proc') if p.isdigit()
                and int(p) not in (1, os.getpid(), os.getppid()) and mine(p))
tmp = os.environ['TMPDIR']
def ls(d):
    try:
        return os.listdir(d)
    except OSError:  # tier B: no private /dev/shm, and the job may not list the host's
        return []
files = sorted(f for d in ('.', tmp, '/dev/shm') for f in ls(d)
               if not f.startswith('.offload-') and f not in ('out', 'job.py', '.tmp'))
print('id', sandbox_id(), 'others', others, 'files', files, 'env', 'LEAK' in os.environ)
"""
DIRTY = PROBE + """\
import subprocess
subprocess.Popen(['sleep', '300'], start_new_session=True)
for d in ('.', tmp, '/dev/shm'):
    try:
        open(os.path.join(d, 'left-' + os.path.basename(d.rstrip('/') or 'x')), 'w').write('1')
    except OSError:
        pass
os.environ['LEAK'] = '1'
print('spawned')
"""


async def job_of(pool: WarmPool, owner: str, code: str, *, wall_s: float = 60,
                 args: tuple[str, ...] = ()) -> tuple[object, object]:
    worker = pool.take(owner)
    assert worker is not None, "no worker for " + owner
    try:
        worker.job.input_path("job.py").write_text(code)
        worker.job.expose_input("job.py")
        worker.job.make_out_dir()
        limits = JobLimits(wall_s=wall_s)
        result = await worker.run("job.py", list(args), limits, job_env(limits))
    finally:
        await pool.finish(worker, owner)
    return worker, result


def probe(result: object) -> dict[str, str]:
    out = result.process.stdout.decode()  # type: ignore[attr-defined]
    line = next(x for x in out.splitlines() if x.startswith("id "))
    words = line.split(" ", 7)
    return {"id": words[1], "others": words[3], "rest": line.split(" files ", 1)[1]}


async def test_a_requesters_next_job_reuses_its_emptied_sandbox(sandbox: object) -> None:
    async with warm_pool(sandbox, 2) as pool:  # type: ignore[arg-type]
        await ready(pool, 2)
        w1, first = await job_of(pool, "alice", DIRTY)
        assert "spawned" in first.process.stdout.decode(), first  # type: ignore[attr-defined]
        assert pool.parked == 1 and w1.reusable  # type: ignore[attr-defined]
        w2, second = await job_of(pool, "alice", PROBE)
        assert w2 is w1, "the requester's parked worker was not reused"
        one, two = probe(first), probe(second)
        assert one["id"] == two["id"], "not the same sandbox: the probe would see nothing"
        assert two["others"] == "[]", f"the last job's process survived: {two}"
        assert two["rest"] == "[] env False", f"the last job's files or env survived: {two}"
        w3, third = await job_of(pool, "bob", PROBE)
        assert w3 is not w1 and probe(third)["id"] != one["id"]
        assert pool.reused == 1


async def test_canary_the_probe_sees_a_jobs_own_leftovers(sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        _, result = await job_of(pool, "alice", DIRTY + "\n" + PROBE.replace("print('id'",
                                                                            "print('id2'"))
        out = result.process.stdout.decode()  # type: ignore[attr-defined]
        line = next(x for x in out.splitlines() if x.startswith("id2 "))
        assert "others []" not in line and "left-" in line and "env True" in line, line


async def test_output_exit_codes_and_cpu_stay_each_jobs_own_across_reuse(
        sandbox: object) -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"
    cases = [(burn + "print('first')\n", 0, "first\n", ""),
             ("import sys\nprint('partial', end='')\nsys.exit(3)\n", 3, "partial", ""),
             ("raise ValueError('boom')\n", 1, "", "ValueError: boom"),
             ("print('last')\n", 0, "last\n", "")]
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        workers = []
        for code, exit_code, out, err in cases:
            worker, r = await job_of(pool, "alice", code)
            workers.append(worker)
            assert r.process.exit_code == exit_code, r  # type: ignore[attr-defined]
            assert r.process.stdout.decode() == out  # type: ignore[attr-defined]
            assert err in r.process.stderr.decode()  # type: ignore[attr-defined]
        assert all(w is workers[0] for w in workers)
        _, first = await job_of(pool, "alice", burn)
        _, after = await job_of(pool, "alice", "pass\n")
        assert first.process.cpu_s >= 0.5  # type: ignore[attr-defined]
        assert after.process.cpu_s < 0.3, "the last job's CPU was charged again"  # type: ignore[attr-defined]


async def test_a_worker_that_timed_out_or_lost_its_supervisor_is_not_reused(
        sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        w1, slow = await job_of(pool, "alice", "import time\ntime.sleep(30)\n", wall_s=1)
        assert slow.process.status == "timeout"  # type: ignore[attr-defined]
        assert not w1.reusable and pool.parked == 0  # type: ignore[attr-defined]
        await ready(pool)
        w2, rogue = await job_of(pool, "alice", "import os, signal\n"
                                 "os.kill(os.getppid(), signal.SIGKILL)\nprint('done')\n")
        assert w2 is not w1 and not w2.reusable and pool.parked == 0  # type: ignore[attr-defined]
        assert rogue.process.status == "killed"  # type: ignore[attr-defined]
        await ready(pool)
        w3, ok = await job_of(pool, "alice", "print('fine')\n")
        assert w3 is not w2 and ok.process.stdout == b"fine\n"  # type: ignore[attr-defined]


async def test_a_job_that_finds_no_worker_boots_a_lean_one_that_is_parked_too(
        sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        alices, _ = await job_of(pool, "alice", PROBE)
        assert pool.take("bob") is None, "bob was given alice's worker"
        assert not alices.alive  # evicted: bob's job needs the job user
        lean = await pool.boot()
        assert lean is not None
        try:
            lean.job.input_path("job.py").write_text(
                "import sys\nprint('torch preloaded:', 'torch' in sys.modules)\n")
            lean.job.expose_input("job.py")
            limits = JobLimits(wall_s=60)
            r = await lean.run("job.py", [], limits, job_env(limits))
        finally:
            await pool.finish(lean, "bob")
        assert r.process.stdout == b"torch preloaded: False\n", r
        again, _ = await job_of(pool, "bob", PROBE)
        assert again is lean


async def test_a_job_cancelled_while_it_runs_never_parks_its_worker(sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        worker = pool.take("alice")
        assert worker is not None
        try:
            worker.job.input_path("job.py").write_text("import time\ntime.sleep(60)\n")
            worker.job.expose_input("job.py")
            limits = JobLimits(wall_s=60)
            with trio.move_on_after(1.5) as scope:  # the requester went away
                await worker.run("job.py", [], limits, job_env(limits))
            assert scope.cancelled_caught
        finally:
            await pool.finish(worker, "alice")
        assert pool.parked == 0 and not worker.alive
        await ready(pool)
        w2, r = await job_of(pool, "alice", "print('next')\n", wall_s=20)
        assert w2 is not worker and r.process.stdout == b"next\n"  # type: ignore[attr-defined]


async def test_a_jobs_peak_memory_is_its_own_not_the_last_jobs(sandbox: object) -> None:
    big = "x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1\n"
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        await ready(pool)
        _, first = await job_of(pool, "alice", big)
        _, second = await job_of(pool, "alice", "pass\n")
        peak1 = first.process.peak_memory_mb  # type: ignore[attr-defined]
        peak2 = second.process.peak_memory_mb  # type: ignore[attr-defined]
        assert peak1 >= 400, peak1  # canary: the probe sees a job's 400 MiB
        assert peak2 < peak1 - 300, (peak1, peak2)


async def test_a_parked_worker_unused_for_its_idle_time_is_destroyed(sandbox: object) -> None:
    async with warm_pool(sandbox, 1) as pool:  # type: ignore[arg-type]
        pool.idle_s = 1.0
        await ready(pool)
        for _ in range(3):  # parked three times: one expiry task, timed from the last
            worker, _ = await job_of(pool, "alice", "pass\n")
        assert pool.parked == 1 and worker.alive  # type: ignore[attr-defined]
        await trio.sleep(0.5)
        assert pool.parked == 1, "destroyed before its idle time"
        with trio.fail_after(10):
            while pool.parked:
                await trio.sleep(0.05)
        assert not worker.alive  # type: ignore[attr-defined]
