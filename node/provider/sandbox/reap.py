"""What a previous run of this daemon left on its sandbox root, found and removed at start.

Everything of a daemon lives under its own cgroup base (`offload-<peer id tail>`): its job
groups under `<own group>/<base>/` in each hierarchy and its job dirs under
`<root>/jobs/<base>/`. The reaper touches nothing else (job dirs of the layout before
per-base folders, `<root>/jobs/job-*`, only where one of our groups names them), and must
run while holding the home lock (node/home.py), so no live daemon owns what it removes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
from pathlib import Path

from node.provider.sandbox.cgroups import CgroupManager

log = logging.getLogger(__name__)
_JOB = re.compile(r"job-[A-Za-z0-9_.-]{1,64}")


@dataclasses.dataclass(frozen=True, slots=True)
class Reaped:
    cgroups: int      # job groups killed and removed
    job_dirs: int     # job dirs removed
    mounts: int       # job tmpfs mounts unmounted

    def __bool__(self) -> bool:
        return bool(self.cgroups or self.job_dirs or self.mounts)


def reap_stale(cgroups: CgroupManager, root: Path) -> Reaped:
    """Kill every process in our job groups, remove the groups, unmount and remove our job
    dirs. Raises CgroupError if a group cannot be emptied (a task stuck in D state)."""
    names = cgroups.stale_names()
    removed = cgroups.cleanup_stale()
    dirs = _entries(root / "jobs" / cgroups.base)
    dirs += [root / "jobs" / n for n in names if (root / "jobs" / n).is_dir()]
    mounts = 0
    for d in dirs:
        mounts += unmount_under(d)
        remove_tree(d)
    reaped = Reaped(cgroups=removed, job_dirs=len(dirs), mounts=mounts)
    if reaped:
        log.warning("reaped what a previous run left: %d job cgroup(s), %d job dir(s), "
                    "%d mount(s)", reaped.cgroups, reaped.job_dirs, reaped.mounts)
    return reaped


def remove_own(cgroups: CgroupManager, root: Path) -> None:
    """At a clean stop: whatever a job's end could not remove, then our empty base folders."""
    reap_stale(cgroups, root)
    cgroups.remove_bases()
    try:
        (root / "jobs" / cgroups.base).rmdir()
    except OSError:
        pass


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(e for e in folder.iterdir() if _JOB.fullmatch(e.name))
    except FileNotFoundError:
        return []


def mount_points(mountinfo: str) -> list[str]:
    """Mount points in /proc/self/mountinfo text (field 5, octal escapes decoded)."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            out.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return out


def unmount_under(folder: Path) -> int:
    """Lazily unmount every mount at or below `folder`, deepest first; returns how many."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return 0
    top = os.path.realpath(folder)
    found = [m for m in mount_points(text) if m == top or m.startswith(top + "/")]
    for m in sorted(set(found), key=len, reverse=True):
        res = subprocess.run(["umount", "-l", m], capture_output=True, text=True)
        if res.returncode != 0:
            log.warning("cannot unmount %s: %s", m, res.stderr.strip())
    return len(set(found))


def remove_tree(folder: Path) -> None:
    """rm -rf that never crosses into another filesystem (a mount left in a job dir)."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], capture_output=True)
