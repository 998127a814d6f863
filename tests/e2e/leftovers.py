"""Probes for what a provider's sandboxes leave on the host: processes, cgroups, job dirs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Network

SANDBOX_JOBS = Path(os.environ.get("OFFLOAD_SANDBOX_ROOT", "/var/lib/offload")) / "jobs"


def provide(net: Network, home: str, *extra: str, tag: str) -> dict[str, Any]:
    """A provider on a given home (start_provider makes a fresh one unless told)."""
    info = net.start_provider(home=home, tag=tag, extra=list(extra))
    info["base"] = f"offload-{info['peer_id'][-12:]}"
    return info


def base_dirs(base: str) -> list[Path]:
    from node.provider.sandbox.cgroups import CgroupManager

    return CgroupManager.detect(base=base).base_dirs


def job_groups(base: str) -> list[Path]:
    return sorted(g for b in base_dirs(base) if b.is_dir() for g in b.iterdir()
                  if g.is_dir() and g.name.startswith("job-"))


def cgroup_tasks(base: str) -> set[int]:
    """Every pid in any cgroup under `base`, in every hierarchy."""
    found: set[int] = set()
    for b in base_dirs(base):
        for procs in b.rglob("cgroup.procs") if b.is_dir() else []:
            try:
                found |= {int(p) for p in procs.read_text().split()}
            except OSError:
                pass
    return found


def job_dirs(base: str) -> list[Path]:
    folder = SANDBOX_JOBS / base
    return sorted(folder.iterdir()) if folder.is_dir() else []


def carrying(marker: str, *, job_users: bool = True) -> list[tuple[int, str]]:
    """Live processes (pid, first argv word) with `marker` in their command line, run by a
    job user (the job, and the bubblewrap processes whose argv names the job's script), or
    with `job_users=False`, by root (the launcher and its watchdog carry it in their config)."""
    from node.provider.sandbox.users import lookup

    uids = {u.uid for u in lookup()}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:"))
                  .split()[1])
        wanted = uid in uids if job_users else (uid == 0 and b"launch.py" in b" ".join(argv))
        if wanted and state != "Z" and any(marker.encode() in a for a in argv):
            found.append((int(entry), argv[0].decode(errors="replace")))
    return found


def wait_for(check: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())
