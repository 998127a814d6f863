"""The reaper on real cgroups, mounts and dirs: what a previous run left goes, nothing else."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.provider.sandbox.cgroups import CgroupManager, JobCgroup, detect_usable
from node.provider.sandbox.reap import mount_points, reap_stale, remove_own


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("real cgroups and mounts need root")


@pytest.fixture
def managers() -> Iterator[tuple[CgroupManager, CgroupManager]]:
    _needs_root()
    ours = detect_usable(base=f"offload-test-reap-{os.getpid()}")
    other = detect_usable(base=f"offload-test-other-{os.getpid()}")
    yield ours, other
    for m in (ours, other):
        m.cleanup_stale()
        m.remove_bases()


def _sleeper(group: JobCgroup) -> subprocess.Popen[bytes]:
    """A real process moved into every hierarchy of `group`, as a job's would be."""
    proc = subprocess.Popen(["sleep", "300"])
    for procs in group.procs_files:
        Path(procs).write_text(str(proc.pid))
    assert proc.pid in group.pids()
    return proc


def _mounted(path: Path) -> bool:
    return str(path) in mount_points(Path("/proc/self/mountinfo").read_text())


def _tmpfs(path: Path) -> None:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "offload-test", str(path)],
                   check=True)
    (path / "data").write_text("left by a killed job")


def test_reap_kills_removes_and_unmounts_only_ours(
        managers: tuple[CgroupManager, CgroupManager], tmp_path: Path) -> None:
    ours, other = managers
    root = tmp_path / "root"
    left = ours.create("job-left-1")
    idle = ours.create("job-warm-left")
    theirs = other.create("job-theirs")
    victim, bystander = _sleeper(left), _sleeper(theirs)
    try:
        jobs = root / "jobs"
        ours_dir = jobs / ours.base / "job-left-1"
        _tmpfs(ours_dir / "work")
        (jobs / ours.base / "job-warm-left" / "in").mkdir(parents=True)
        legacy = jobs / "job-left-1"  # the layout before per-base folders, named by our group
        legacy.mkdir()
        not_ours = [jobs / "job-nobody", jobs / other.base / "job-theirs",
                    jobs / ours.base / "not-a-job"]
        for d in not_ours:
            d.mkdir(parents=True)
        _tmpfs(jobs / other.base / "job-theirs" / "work")

        reaped = reap_stale(ours, root)

        assert (reaped.cgroups, reaped.job_dirs, reaped.mounts) == (2, 3, 1)
        assert victim.wait(timeout=10) == -9
        assert not any(d.exists() for g in (left, idle) for d in g.dirs)
        assert not ours_dir.exists() and not legacy.exists() and not _mounted(ours_dir / "work")
        assert not (jobs / ours.base / "job-warm-left").exists()
        # canary: the same kinds of things of another base are untouched and alive
        assert bystander.poll() is None and bystander.pid in theirs.pids()
        assert all(d.exists() for d in not_ours)
        assert _mounted(jobs / other.base / "job-theirs" / "work")
        assert reap_stale(ours, root).job_dirs == 0  # twice is fine
    finally:
        for p in (victim, bystander):
            p.kill()
            p.wait()
        subprocess.run(["umount", "-l", str(root / "jobs" / other.base / "job-theirs" / "work")],
                       capture_output=True)


def test_remove_own_leaves_no_base_folder(managers: tuple[CgroupManager, CgroupManager],
                                          tmp_path: Path) -> None:
    ours, _ = managers
    group = ours.create("job-at-stop")
    proc = _sleeper(group)
    (tmp_path / "jobs" / ours.base / "job-at-stop").mkdir(parents=True)
    try:
        remove_own(ours, tmp_path)
        assert proc.wait(timeout=10) == -9
        assert not any(b.exists() for b in ours.base_dirs)
        assert not (tmp_path / "jobs" / ours.base).exists()
    finally:
        proc.kill()
        proc.wait()


def test_mount_points_decode_escapes() -> None:
    text = ("36 35 98:0 / /var/lib/offload/jobs/b/job-1/work rw - tmpfs x rw\n"
            "37 35 98:0 / /tmp/with\\040space rw - tmpfs x rw\n")
    assert mount_points(text) == ["/var/lib/offload/jobs/b/job-1/work", "/tmp/with space"]
