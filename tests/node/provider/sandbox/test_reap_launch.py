"""Nothing of a sandbox outlives its daemon: the launcher's watchdog, on the real sandbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.provider.sandbox.runner import JobLimits, Sandbox, job_env

REPO = Path(__file__).resolve().parents[4]
DAEMON = """\
import json, sys, trio
from pathlib import Path
from node.home import HomeLock
from node.provider.sandbox import runtime, users
from node.provider.sandbox.cgroups import detect_usable
from node.provider.sandbox.runner import JobLimits, Sandbox, job_env

async def main(tier, base, home, marker):
    lock = HomeLock(Path(home)).acquire()
    cgroups = detect_usable(base=base)
    sandbox = Sandbox(users=users.UserPool(users.lookup()), cgroups=cgroups,
                      runtime=runtime.describe(), tier=tier, home_lock=lock.path)
    async with sandbox.job("job-orphan-test", JobLimits(wall_s=600)) as job:
        code = "import os, time\\nif os.fork() == 0:\\n    os.setsid()\\ntime.sleep(600)"
        argv = [str(sandbox.runtime.interpreter), "-c", code, marker]
        await job.start(argv, job_env(job.limits))
        print(json.dumps({"cgroups": [str(d) for d in job.cgroup.dirs], "dir": str(job.dir),
                          "bases": [str(b) for b in cgroups.base_dirs],
                          "jobs_dir": str(sandbox.jobs_dir)}), flush=True)
        await trio.sleep(600)

trio.run(main, *sys.argv[1:])
"""


def survivors(marker: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line carries `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def tasks(dirs: list[str]) -> set[int]:
    out: set[int] = set()
    for d in dirs:
        try:
            out |= {int(p) for p in Path(d, "cgroup.procs").read_text().split()}
        except OSError:
            pass
    return out


def wait_for(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(check())  # type: ignore[operator]


async def test_a_job_outlives_the_idle_thread_that_started_it(sandbox: Sandbox) -> None:
    """trio forks from worker threads that exit after 10 s idle; a parent-death signal tied
    to that thread (bubblewrap's --die-with-parent) used to SIGKILL every job at 10 s."""
    limits = JobLimits(wall_s=60)
    async with sandbox.job(f"job-idle-{os.getpid()}", limits) as job:
        argv = [str(sandbox.runtime.interpreter), "-c",
                "import time; time.sleep(12.5); print('still here')"]
        result = await job.run(argv, job_env(limits))
    assert (result.process.status, result.process.stdout) == ("ok", b"still here\n"), result


@pytest.mark.parametrize("tier", ["A", "B"])
def test_kill_9_of_the_daemon_leaves_nothing(tier: str, tmp_path: Path) -> None:
    from tests.node.conftest import sandbox_missing

    if sandbox_missing():
        pytest.skip(str(sandbox_missing()))
    marker = f"offload-orphan-probe-{os.getpid()}-{tier}"
    base = f"offload-test-orphan-{os.getpid()}"
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON, tier, base, str(tmp_path), marker],
                              stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        assert daemon.stdout is not None
        info = json.loads(daemon.stdout.readline())
        # the probes see the job while its daemon lives: they could see a survivor
        assert wait_for(lambda: len(survivors(marker)) >= 2, 30), survivors(marker)
        assert len(tasks(info["cgroups"])) >= 2
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        assert wait_for(lambda: not survivors(marker), 20), \
            f"job processes outlived their daemon: {survivors(marker)}"
        assert wait_for(lambda: not any(Path(d).exists() for d in info["cgroups"]), 20), \
            f"cgroups left: {[d for d in info['cgroups'] if Path(d).exists()]}"
        assert wait_for(lambda: not Path(info["dir"]).exists(), 20), "job dir left"
        # the home lock was free, so the watchdog removed the empty base folders too
        assert wait_for(lambda: not any(Path(b).exists() for b in info["bases"]), 20), \
            [b for b in info["bases"] if Path(b).exists()]
        assert not Path(info["jobs_dir"]).exists()
    finally:
        daemon.kill()
        daemon.wait()
        for pid in survivors(marker):
            os.kill(pid, signal.SIGKILL)


def test_canary_the_probe_sees_a_process_that_outlived_its_parent() -> None:
    marker = f"offload-orphan-canary-{os.getpid()}"
    code = ("import os, subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
            f"{marker!r}], start_new_session=True)\n")
    subprocess.run([sys.executable, "-c", code], check=True)  # the parent is gone
    try:
        assert wait_for(lambda: len(survivors(marker)) == 1, 10)
        pid = survivors(marker)[0]
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2] != \
            str(os.getpid())
    finally:
        for pid in survivors(marker):
            os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not survivors(marker), 10)
