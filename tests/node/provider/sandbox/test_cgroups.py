"""Job cgroups: the v2 file layout on a fake tree, and v1 (hybrid) limits on this host for real."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.provider.sandbox import cgroups
from node.provider.sandbox.cgroups import CgroupError, CgroupManager, JobCgroup, Limits

FAKE_PID = 1 << 30  # above any pid_max: never a real process

# -- a fake cgroup2 kernel ----------------------------------------------------------------

CONTROLLER_FILES = {
    "memory": {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.peak": "0\n",
               "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"},
    "pids": {"pids.max": "max\n", "pids.events": "max 0\n", "pids.peak": "0\n"},
    "cpu": {"cpu.max": "max 100000\n", "cpu.stat": "usage_usec 0\n"},
}


def kernel_mkdir(path: Path) -> None:
    """mkdir on cgroup2: core files, plus the files of the controllers the parent enables."""
    path.mkdir()
    enabled = (path.parent / "cgroup.subtree_control").read_text().replace("+", "").split()
    files = {"cgroup.controllers": " ".join(enabled) + "\n", "cgroup.subtree_control": "",
             "cgroup.procs": "", "cgroup.kill": "", "cgroup.freeze": "0\n",
             "cgroup.events": "populated 0\nfrozen 0\n"}
    for c in enabled:
        files.update(CONTROLLER_FILES.get(c, {}))
    for name, text in files.items():
        (path / name).write_text(text)


def kernel_rmdir(path: Path) -> None:
    if (path / "cgroup.procs").read_text().split():
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))
    if any(p.is_dir() for p in path.iterdir()):
        raise OSError(errno.EBUSY, "Device or resource busy", str(path))
    for p in path.iterdir():
        p.unlink()
    path.rmdir()


@pytest.fixture
def fake_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setattr(cgroups, "_mkdir", kernel_mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", kernel_rmdir)
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    (root / "cgroup.procs").write_text("1\n")
    kernel_mkdir(root / "user.slice")
    (root / "user.slice" / "cgroup.subtree_control").write_text("cpu memory pids\n")
    kernel_mkdir(root / "user.slice" / "offload.service")
    (root / "user.slice" / "offload.service" / "cgroup.procs").write_text(f"{FAKE_PID}\n")
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/user.slice/offload.service\n")
    return root, self_cgroup


def test_v2_layout_limits_and_usage(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    mgr = CgroupManager.detect(root=root, self_cgroup=self_cgroup)
    assert mgr.version == 2
    job = mgr.create("job-ab12cd")
    own = root / "user.slice" / "offload.service"
    g = own / "offload" / "job-ab12cd"
    assert job.procs_files == (str(g / "cgroup.procs"),)
    # our process left the service group for a leaf, then the controllers were enabled
    assert (own / "offload-daemon" / "cgroup.procs").read_text() == str(FAKE_PID)
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    assert (own / "offload" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"

    job.set_limits(Limits(memory_bytes=256 << 20, pids=64, cpus=1.5, devices=("c 195:0 rw",)))
    written = {n: (g / n).read_text() for n in ("memory.max", "memory.swap.max", "pids.max",
                                                "cpu.max")}
    assert written == {"memory.max": str(256 << 20), "memory.swap.max": "0", "pids.max": "64",
                       "cpu.max": "150000 100000"}
    assert job.limits is not None and job.limits.devices == ("c 195:0 rw",)  # recorded only

    (g / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    (g / "memory.peak").write_text("123456789\n")
    (g / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n")
    (g / "pids.events").write_text("max 3\n")
    (g / "pids.peak").write_text("64\n")
    assert job.usage() == cgroups.Usage(cpu_s=2.5, peak_memory_bytes=123456789,
                                        memory_limit_hit=True, oom_killed=True,
                                        pids_limit_hit=True, peak_pids=64)
    (g / "cgroup.procs").write_text(f"{FAKE_PID + 1}\n{FAKE_PID + 2}\n")
    assert job.pids() == {FAKE_PID + 1, FAKE_PID + 2}

    # the fake kernel never empties the group: kill_all writes cgroup.kill, then gives up
    with pytest.raises(CgroupError, match=r"still holds pids \[1073741825, 1073741826\] after"):
        job.kill_all(timeout=0.1)
    assert (g / "cgroup.kill").read_text() == "1"
    (g / "cgroup.procs").write_text("")
    job.remove()
    assert not g.exists()
    job.remove()  # idempotent


def test_v2_usage_without_optional_files(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    job = CgroupManager.detect(root=root, self_cgroup=self_cgroup).create("job-x")
    g = Path(job.procs_files[0]).parent
    for name in ("memory.peak", "pids.peak", "memory.swap.max"):
        (g / name).unlink()
    job.set_limits(Limits(memory_bytes=1 << 30, pids=10, cpus=0.25))
    assert (g / "cpu.max").read_text() == "25000 100000"
    assert job.usage() == cgroups.Usage(0.0, 0, False, False, False, 0)


def test_v2_already_enabled_controllers_move_nobody(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    own = root / "user.slice" / "offload.service"
    (own / "cgroup.subtree_control").write_text("cpu memory pids\n")
    CgroupManager.detect(root=root, self_cgroup=self_cgroup).create("job-y")
    assert not (own / "offload-daemon").exists()
    assert (own / "cgroup.subtree_control").read_text() == "cpu memory pids\n"


def test_v2_in_our_own_leaf_uses_the_delegated_parent(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    CgroupManager.detect(root=root, self_cgroup=self_cgroup).create("job-a")
    self_cgroup.write_text("0::/user.slice/offload.service/offload-daemon\n")
    job = CgroupManager.detect(root=root, self_cgroup=self_cgroup).create("job-b")
    assert job.procs_files == (
        str(root / "user.slice/offload.service/offload/job-b/cgroup.procs"),)


def test_v2_at_the_root_moves_nobody(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    self_cgroup.write_text("0::/\n")  # the root group is exempt from "no internal processes"
    job = CgroupManager.detect(root=root, self_cgroup=self_cgroup).create("job-r")
    assert job.procs_files == (str(root / "offload/job-r/cgroup.procs"),)
    assert not (root / "offload-daemon").exists()
    assert (root / "offload" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_v2_errors(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    mgr = CgroupManager.detect(root=root, self_cgroup=self_cgroup)
    with pytest.raises(CgroupError, match=re.escape("cgroup name 'x/../y': use 'job-'")):
        mgr.create("x/../y")
    mgr.create("job-dup")
    with pytest.raises(CgroupError, match="File exists; call cleanup_stale"):
        mgr.create("job-dup")
    (root / "user.slice" / "offload.service" / "cgroup.controllers").write_text("memory\n")
    with pytest.raises(CgroupError, match="does not offer pids, cpu: start the daemon with "
                                          "systemd Delegate=yes"):
        CgroupManager.detect(root=root, self_cgroup=self_cgroup).create("job-z")


def test_v2_cleanup_stale(fake_v2: tuple[Path, Path]) -> None:
    root, self_cgroup = fake_v2
    mgr = CgroupManager.detect(root=root, self_cgroup=self_cgroup)
    for name in ("job-1", "job-2"):
        mgr.create(name)
    kernel_mkdir(root / "user.slice/offload.service/offload/not-a-job")
    assert CgroupManager.detect(root=root, self_cgroup=self_cgroup).cleanup_stale() == 2
    left = sorted(p.name for p in (root / "user.slice/offload.service/offload").iterdir()
                  if p.is_dir())
    assert left == ["not-a-job"]


def test_detect_refuses_a_tree_without_cgroups(tmp_path: Path) -> None:
    self_cgroup = tmp_path / "self"
    self_cgroup.write_text("0::/\n")
    with pytest.raises(CgroupError, match=r"no usable cgroup layout under .*: neither cgroup2 "
                                          "nor the v1 controllers memory, pids, cpu, cpuacct"):
        CgroupManager.detect(root=tmp_path, self_cgroup=self_cgroup)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memory_bytes": 1000, "pids": 1, "cpus": 1}, "give at least 1 MiB"),
    ({"memory_bytes": 1 << 30, "pids": 0, "cpus": 1}, "allow at least 1 task"),
    ({"memory_bytes": 1 << 30, "pids": 1, "cpus": float("nan")}, "number of cores"),
    ({"memory_bytes": 1 << 30, "pids": 1, "cpus": 1, "devices": ("c 1:3 rwx",)},
     "bad device rules"),
])
def test_limits_validate(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(CgroupError, match=message):
        Limits(**kwargs)  # type: ignore[arg-type]


# -- v1 / hybrid on this host, for real -----------------------------------------------------

def _real_manager() -> CgroupManager:
    try:
        mgr = CgroupManager.detect(base=f"offload-test-{os.getpid()}")
    except CgroupError as exc:
        pytest.skip(f"no usable cgroups here: {exc}")
    if mgr.version != 1:
        pytest.skip("these tests exercise the v1 (hybrid) layout")
    return mgr


@pytest.fixture
def v1() -> Iterator[CgroupManager]:
    mgr = _real_manager()
    try:
        yield mgr
    finally:
        CgroupManager.detect(base=mgr.base).cleanup_stale()
        for base in mgr.base_dirs:
            if base.is_dir():
                os.rmdir(base)


@pytest.fixture
def job(v1: CgroupManager) -> Iterator[JobCgroup]:
    group = v1.create("job-t1")
    try:
        yield group
    finally:
        group.remove()


def run_in(group: JobCgroup | None, code: str, *, shell_tail: str | None = None,
           timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run `code` in python, attached to `group` (when given) before it starts."""
    attach = ""
    if group is not None:
        attach = f"for f in {' '.join(group.procs_files)}; do echo $$ > $f || exit 99; done; "
    tail = shell_tail if shell_tail is not None else f'exec {sys.executable} -c "$0"'
    return subprocess.run(["sh", "-c", attach + tail, code], capture_output=True, text=True,
                          timeout=timeout)


def test_limits_can_grow_and_shrink(job: JobCgroup) -> None:
    mem = job.v1["memory"]
    for size in (64 << 20, 512 << 20, 32 << 20):  # memsw must stay >= limit at every step
        job.set_limits(Limits(memory_bytes=size, pids=8, cpus=0.25))
        assert int((mem / "memory.limit_in_bytes").read_text()) == size
        if (mem / "memory.memsw.limit_in_bytes").exists():
            assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == size
    assert (job.v1["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "25000"
    assert (job.v1["pids"] / "pids.max").read_text().strip() == "8"


OPEN_KMSG = "open('/dev/null', 'w').write('x'); open('/dev/kmsg', 'rb'); print('opened')"


def test_devices_outside_the_allow_list_are_refused(job: JobCgroup) -> None:
    if "devices" not in job.v1 or not Path("/dev/kmsg").exists():
        pytest.skip("needs the v1 devices controller and /dev/kmsg")
    job.set_limits(Limits(memory_bytes=256 << 20, pids=8, cpus=1, devices=("c 195:0 rw",)))
    assert "c 195:0 rw" in (job.v1["devices"] / "devices.list").read_text().splitlines()
    res = run_in(job, OPEN_KMSG)
    assert res.returncode == 1 and "PermissionError" in res.stderr, res


def test_canary_kmsg_opens_without_the_cgroup() -> None:
    if os.geteuid() != 0 or not Path("/dev/kmsg").exists():
        pytest.skip("needs root and /dev/kmsg")
    assert run_in(None, OPEN_KMSG).stdout.strip() == "opened"


HOG = "s = b'x' * (640 << 20); print(len(s))"


def test_memory_hog_is_oom_killed(job: JobCgroup) -> None:
    job.set_limits(Limits(memory_bytes=64 << 20, pids=32, cpus=2))
    res = run_in(job, HOG)
    assert res.returncode == -9, res
    u = job.usage()
    assert u.oom_killed and u.memory_limit_hit
    assert 0 < u.peak_memory_bytes <= 64 << 20


def test_canary_memory_hog_completes_without_the_cgroup() -> None:
    res = run_in(None, HOG)
    assert (res.returncode, res.stdout.strip()) == (0, str(640 << 20))


BOMB = """
import os, time
n = 0
for _ in range(40):
    try:
        if os.fork() == 0:
            os.close(1), os.close(2)
            time.sleep(2)
            os._exit(0)
    except BlockingIOError:
        break
    n += 1
print(n)
"""


def test_fork_bomb_stops_at_the_pids_limit(job: JobCgroup) -> None:
    job.set_limits(Limits(memory_bytes=256 << 20, pids=10, cpus=2))
    res = run_in(job, BOMB)
    assert res.returncode == 0, res
    assert int(res.stdout) < 10
    u = job.usage()
    assert u.pids_limit_hit and u.peak_pids == 10
    job.kill_all()
    assert job.pids() == set()


def test_canary_fork_bomb_runs_free_without_the_cgroup() -> None:
    assert run_in(None, BOMB.replace("time.sleep(2)", "time.sleep(0.2)")).stdout.strip() == "40"


BURN = """
import os, sys, time
end = time.monotonic() + float(sys.argv[1])
pid = os.fork()
while time.monotonic() < end:
    pass
if pid:
    os.waitpid(pid, 0)
"""


def _burn(group: JobCgroup, cpus: float, wall: float) -> tuple[float, float]:
    group.set_limits(Limits(memory_bytes=256 << 20, pids=32, cpus=cpus))
    before = group.usage().cpu_s
    started = time.monotonic()
    res = run_in(group, BURN, shell_tail=f'exec {sys.executable} -c "$0" {wall}')
    assert res.returncode == 0, res
    return group.usage().cpu_s - before, time.monotonic() - started


def test_cpu_burn_is_throttled(job: JobCgroup) -> None:
    cpu_s, wall = _burn(job, 0.5, 2.0)
    assert 0.2 * wall < cpu_s < 0.8 * wall


def test_canary_cpu_burn_with_two_cores_uses_more(job: JobCgroup) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores")
    cpu_s, wall = _burn(job, 2.0, 1.0)  # the same limits raised on the same group
    assert cpu_s > 0.8 * wall


ORPHAN = "(setsid sleep 1000 </dev/null >/dev/null 2>&1 &)"  # double-forked, own session


def _dead(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_kill_all_reaches_double_forked_orphans(job: JobCgroup) -> None:
    job.set_limits(Limits(memory_bytes=256 << 20, pids=32, cpus=1))
    assert run_in(job, "", shell_tail="; ".join([ORPHAN] * 3)).returncode == 0
    orphans = job.pids()
    assert len(orphans) == 3 and not any(_dead(p) for p in orphans)  # they outlived the shell
    job.kill_all()
    assert job.pids() == set()
    deadline = time.monotonic() + 5
    while not all(_dead(p) for p in orphans) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(_dead(p) for p in orphans)


@pytest.mark.parametrize("way", ["cgroup.kill", "v1 freezer"])
def test_kill_all_stops_a_running_fork_bomb(job: JobCgroup, way: str) -> None:
    job.set_limits(Limits(memory_bytes=256 << 20, pids=64, cpus=1))
    if way == "v1 freezer":  # the same v1 groups seen without the unified kill-only group
        job = JobCgroup(job.name, 1, v1=job.v1, v2=None)
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    proc = subprocess.Popen(["sh", "-c", f"for f in {' '.join(job.procs_files)}; do echo $$ > $f;"
                             f' done; exec {sys.executable} -c "$0"', code])
    try:
        time.sleep(0.5)
        assert len(job.pids()) > 10
        job.kill_all()
        assert job.pids() == set()
    finally:
        proc.kill()
        proc.wait()


def test_remove_deletes_every_group_and_is_idempotent(v1: CgroupManager) -> None:
    group = v1.create("job-t2")
    dirs = [Path(f).parent for f in group.procs_files]
    assert len(dirs) >= 4 and all(d.is_dir() for d in dirs)
    run_in(group, "", shell_tail=ORPHAN)
    assert group.pids()
    group.remove()
    assert not any(d.exists() for d in dirs)
    group.remove()


def test_cleanup_stale_removes_a_left_group(v1: CgroupManager) -> None:
    left = v1.create("job-t3")
    run_in(left, "", shell_tail=ORPHAN)
    (pid,) = left.pids()
    dirs = [Path(f).parent for f in left.procs_files]
    assert CgroupManager.detect(base=v1.base).cleanup_stale() == 1
    assert not any(d.exists() for d in dirs)
    deadline = time.monotonic() + 5
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _dead(pid)


def test_v2_without_delegation_falls_back_to_the_root_group(
        fake_v2: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from node.provider.sandbox.cgroups import detect_usable

    root, self_cgroup = fake_v2
    (root / "user.slice" / "offload.service" / "cgroup.controllers").write_text("memory\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    mgr = detect_usable(root=root, self_cgroup=self_cgroup, base="offload-t")
    job = mgr.create("job-a")
    assert job.v2 is not None and job.v2.parent == root / "offload-t"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: no fallback, a clear error
    with pytest.raises(CgroupError, match="does not offer pids, cpu"):
        detect_usable(root=root, self_cgroup=self_cgroup, base="offload-u")


def test_a_delegated_group_is_used_as_it_is(fake_v2: tuple[Path, Path]) -> None:
    from node.provider.sandbox.cgroups import detect_usable

    root, self_cgroup = fake_v2
    job = detect_usable(root=root, self_cgroup=self_cgroup, base="offload-d").create("job-b")
    assert job.v2 is not None
    assert job.v2.parent == root / "user.slice" / "offload.service" / "offload-d"
