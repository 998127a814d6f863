"""Tier-A job sandboxes: job user + bubblewrap + seccomp + cgroups + rlimits + wall timeout.

A `SandboxJob` owns one job's host resources: a leased job user, a size-capped tmpfs work
dir, a read-only inputs dir (both under `<root>/jobs/<cgroup base>/`, so a daemon's next
start finds its own) and a cgroup. It runs exactly one process tree, then everything is
killed and removed; if the daemon dies first, the launcher's watchdog does it (launch.py).
Warm workers are SandboxJobs started before their job is known.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import trio

from node.provider.runner import ProcessResult, collect_output, outcome, stopped
from node.provider.sandbox import landlock, launch
from node.provider.sandbox.bwrap import (
    BWRAP,
    ETC_FILES,
    JOB,
    SECCOMP_FD_PLACEHOLDER,
    SYSTEM_DIRS,
    WORK,
    SandboxSpec,
    bwrap_argv,
)
from node.provider.sandbox.cgroups import CgroupError, CgroupManager, JobCgroup, Limits
from node.provider.sandbox.errors import LaunchFailed, SandboxUnavailable
from node.provider.sandbox.gpu import CONTROL_DEVICES, Gpu, device_rules, driver_libraries
from node.provider.sandbox.runtime import RuntimeInfo
from node.provider.sandbox.seccomp import build_filter
from node.provider.sandbox.users import JobUser, UserPool
from protocol.messages import MAX_OUTPUT_TEXT

log = logging.getLogger(__name__)
DEFAULT_SANDBOX_ROOT = Path("/var/lib/offload")
LAUNCHER = Path(launch.__file__).resolve()
LANDLOCK = Path(landlock.__file__).resolve()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class JobLimits:
    wall_s: float
    memory_mb: int = 2048
    cpus: float = 1.0
    pids: int = 256
    disk_mb: int = 1024
    tmp_mb: int = 256
    nofile: int = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class SandboxResult:
    process: ProcessResult
    limits_hit: tuple[str, ...]
    warm: bool


def job_env(limits: JobLimits, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": WORK, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "USER": "job", "LOGNAME": "job", "PYTHONUNBUFFERED": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": str(max(1, int(limits.cpus))),
           "MPLCONFIGDIR": "/tmp"}
    env.update(extra or {})
    return env


def sandbox_root() -> Path:
    """Where job dirs live: $OFFLOAD_SANDBOX_ROOT, read at each call, else /var/lib/offload."""
    return Path(os.environ.get("OFFLOAD_SANDBOX_ROOT") or DEFAULT_SANDBOX_ROOT)


class Sandbox:
    """Factory of SandboxJobs on this host; one per provider daemon."""

    def __init__(self, *, users: UserPool, cgroups: CgroupManager, runtime: RuntimeInfo,
                 root: Path | None = None, gpus: Sequence[Gpu] = (),
                 bwrap: str | None = None, tier: Literal["A", "B"] = "A",
                 home_lock: Path | None = None) -> None:
        self.tier = tier
        self.home_lock = home_lock  # the daemon's lock file, for the watchdogs (launch.py)
        self.bwrap = bwrap or shutil.which("bwrap") or BWRAP
        self.users = users
        self.cgroups = cgroups
        self.runtime = runtime
        self.root = root = root or sandbox_root()
        self.jobs_dir = root / "jobs" / cgroups.base
        self.gpus = list(gpus)
        self.gpu_libraries = driver_libraries() if self.gpus else []
        self.seccomp_hex = build_filter().hex()
        for d in (root, root / "jobs"):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o711)

    def runtime_paths(self) -> list[Path]:
        paths = [self.runtime.path]
        base = self.runtime.base_prefix()
        if base is not None:
            paths.append(base)
        return paths

    @asynccontextmanager
    async def job(self, name: str, limits: JobLimits, *,
                  gpus: Sequence[Gpu] = ()) -> AsyncIterator[SandboxJob]:
        user = self.users.lease()
        if user is None:
            raise SandboxUnavailable("no free job user; every slot is busy")
        job = SandboxJob(self, name, user, limits, gpus=gpus)
        try:
            job.prepare()
            yield job
        finally:
            started = time.monotonic()
            with trio.CancelScope(shield=True):
                await job.reap()
                await trio.to_thread.run_sync(job.destroy)
            self.users.release(user)
            log.debug("sandbox %s removed in %.3f s", name, time.monotonic() - started)


class SandboxJob:
    def __init__(self, sandbox: Sandbox, name: str, user: JobUser, limits: JobLimits, *,
                 gpus: Sequence[Gpu]) -> None:
        self.sandbox = sandbox
        self.name = name
        self.user = user
        self.limits = limits
        self.gpus = list(gpus)
        self.dir = sandbox.jobs_dir / name
        self.inputs_dir = self.dir / "in"
        self.work_dir = self.dir / "work"
        self.cgroup: JobCgroup | None = None
        tier_a = sandbox.tier == "A"
        self.inputs_view = JOB if tier_a else str(self.inputs_dir)
        self.work_view = WORK if tier_a else str(self.work_dir)
        self._mounted = False
        self._process: trio.Process | None = None
        self._status_r: int | None = None

    # host side ---------------------------------------------------------------------------
    def prepare(self) -> None:
        jobs = self.sandbox.jobs_dir
        for attempt in range(3):  # the last job's end removes `jobs` once empty
            try:
                self.dir.mkdir(mode=0o711)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
                jobs.mkdir(mode=0o711, exist_ok=True)
                os.chmod(jobs, 0o711)
        os.chmod(self.dir, 0o711)
        self.inputs_dir.mkdir(mode=0o755)
        os.chmod(self.inputs_dir, 0o755)
        self.work_dir.mkdir(mode=0o700)
        opts = (f"size={self.limits.disk_mb}m,mode=0700,uid={self.user.uid},"
                f"gid={self.user.gid},nosuid,nodev")
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "offload-job",
                              str(self.work_dir)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SandboxUnavailable(f"cannot mount the job's tmpfs: {res.stderr.strip()}")
        self._mounted = True
        self._make_tmp()
        self.cgroup = self.sandbox.cgroups.create(self.name)
        self.cgroup.set_limits(self.cgroup_limits(self.limits))

    def _make_tmp(self) -> None:
        if self.sandbox.tier == "B":  # no private /tmp without namespaces: TMPDIR lives here
            tmp = self.work_dir / ".tmp"
            tmp.mkdir(mode=0o700)
            os.chown(tmp, self.user.uid, self.user.gid)

    def private_dirs(self) -> list[str]:
        """The sandbox's own scratch dirs outside /work, as the job sees them."""
        return ["/tmp", "/dev/shm"] if self.sandbox.tier == "A" else []

    def apply_limits(self, limits: JobLimits) -> None:
        """Re-limit a sandbox that is already running (a warm worker taking its job)."""
        assert self.cgroup is not None
        resize = limits.disk_mb != self.limits.disk_mb
        self.limits = limits
        self.cgroup.set_limits(self.cgroup_limits(limits))
        if not resize:
            return
        res = subprocess.run(["mount", "-o", f"remount,size={limits.disk_mb}m",
                              str(self.work_dir)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SandboxUnavailable(f"cannot resize the job's tmpfs: {res.stderr.strip()}")

    def cgroup_limits(self, limits: JobLimits) -> Limits:
        rules = tuple(device_rules(self.gpus)) if self.gpus else ()
        return Limits(memory_bytes=limits.memory_mb << 20, pids=limits.pids,
                      cpus=limits.cpus, devices=rules)

    def expose_input(self, name: str) -> None:
        """An input written to input_path(name): read-only under /job, linked from the cwd."""
        dest = self.inputs_dir / name
        os.chmod(dest, 0o644)
        link = self.work_dir / name
        if not link.is_symlink():
            os.symlink(f"{self.inputs_view}/{name}", link)
            os.lchown(link, self.user.uid, self.user.gid)

    def input_path(self, name: str) -> Path:
        return self.inputs_dir / name

    def make_out_dir(self) -> Path:
        out = self.work_dir / "out"
        if not out.exists():
            out.mkdir()
            os.chown(out, self.user.uid, self.user.gid)
        return out

    async def reap(self) -> None:
        """Kill and wait for our own child (the launcher, then bwrap), cancelled or not."""
        proc = self._process
        if proc is None or proc.returncode is not None:
            return
        if self.cgroup is not None:
            await trio.to_thread.run_sync(self._kill_quietly)
        proc.kill()
        with trio.move_on_after(2):
            await proc.wait()

    def _kill_quietly(self) -> None:
        try:
            if self.cgroup is not None:
                self.cgroup.kill_all(timeout=2.0)
        except CgroupError as exc:
            log.warning("sandbox %s: %s", self.name, exc)

    def reset(self) -> None:
        """Empty the work and inputs dirs for the next job of the same requester."""
        for d in (self.work_dir, self.inputs_dir):
            with os.scandir(d) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path)
                    else:
                        os.unlink(e.path)
        self._make_tmp()

    def destroy(self) -> None:
        """Remove everything; a cgroup the kernel will not release yet is left for the next
        start's cleanup rather than failing the daemon."""
        if self.cgroup is not None:
            try:
                self.cgroup.remove()
            except CgroupError as exc:
                log.warning("sandbox %s left a cgroup behind: %s", self.name, exc)
            finally:
                self.cgroup = None
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.work_dir)], capture_output=True)
            self._mounted = False
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], capture_output=True)
        with suppress(OSError):
            self.sandbox.jobs_dir.rmdir()  # only once no other job of ours has a dir there

    # launching ---------------------------------------------------------------------------
    def view_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The job's environment with paths as the job sees them (tier B sees host paths)."""
        out = dict(env)
        if self.sandbox.tier == "B":
            out.update(HOME=str(self.work_dir), TMPDIR=str(self.work_dir / ".tmp"),
                       MPLCONFIGDIR=str(self.work_dir / ".tmp"))
        return out

    def landlock_rules(self) -> dict[str, list[str]]:
        read_exec = [d for d in SYSTEM_DIRS if os.path.lexists(d)]
        read_exec += [str(p) for p in self.sandbox.runtime_paths()]
        read_only = [f for f in ETC_FILES if os.path.lexists(f)]
        read_only += [str(self.inputs_dir), "/proc", "/sys/devices/system/cpu",
                      "/dev/urandom", "/dev/random"]
        read_write = [str(self.work_dir), "/dev/null", "/dev/zero", "/dev/full"]
        for gpu in self.gpus:
            read_write.append(gpu.device_node)
        if self.gpus:
            read_write += [d for d in CONTROL_DEVICES if os.path.lexists(d)]
            read_only += ["/proc/driver/nvidia", *self.sandbox.gpu_libraries]
        return {"read_exec": read_exec, "read_only": read_only, "read_write": read_write}

    def launcher_argv(self, argv: Sequence[str], env: Mapping[str, str],
                      status_fd: int) -> list[str]:
        if self.sandbox.tier == "B":
            return self._landlock_launcher(argv, env, status_fd)
        spec = SandboxSpec(work_dir=self.work_dir, inputs_dir=self.inputs_dir,
                           runtime_paths=self.sandbox.runtime_paths(), argv=argv, env=env,
                           tmp_mb=self.limits.tmp_mb, gpus=self.gpus,
                           gpu_libraries=self.sandbox.gpu_libraries)
        bw = bwrap_argv(spec, bwrap=self.sandbox.bwrap)
        bw = [*bw[:1], "--json-status-fd", str(status_fd), *bw[1:]]
        assert self.cgroup is not None
        config = {"procs_files": list(self.cgroup.procs_files), "rlimits": self.rlimits(),
                  "argv": bw, "seccomp_hex": self.sandbox.seccomp_hex,
                  "seccomp_placeholder": SECCOMP_FD_PLACEHOLDER,
                  "uid": self.user.uid, "gid": self.user.gid, **self.watchdog_config()}
        return [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(config)]

    def watchdog_config(self) -> dict[str, Any]:
        """What the launcher's watchdog removes if the daemon dies before the job ends."""
        assert self.cgroup is not None
        lock = self.sandbox.home_lock
        return {"daemon_pid": os.getpid(), "cgroup_dirs": [str(d) for d in self.cgroup.dirs],
                "job_dir": str(self.dir), "work_dir": str(self.work_dir),
                "home_lock": str(lock) if lock is not None else None,
                "base_dirs": [str(d) for d in self.sandbox.cgroups.base_dirs],
                "jobs_dir": str(self.sandbox.jobs_dir)}

    def _landlock_launcher(self, argv: Sequence[str], env: Mapping[str, str],
                           status_fd: int) -> list[str]:
        assert self.cgroup is not None
        config = {"mode": "landlock", "procs_files": list(self.cgroup.procs_files),
                  "rlimits": self.rlimits(), "argv": list(argv), "env": self.view_env(env),
                  "cwd": str(self.work_dir), "landlock": self.landlock_rules(),
                  "landlock_py": str(LANDLOCK), "seccomp_hex": self.sandbox.seccomp_hex,
                  "uid": self.user.uid, "gid": self.user.gid, "status_fd": status_fd,
                  **self.watchdog_config()}
        return [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(config)]

    def rlimits(self) -> dict[str, tuple[int, int]]:
        mem = self.limits.memory_mb << 20
        rlimits: dict[str, tuple[int, int]] = {
            "RLIMIT_CORE": (0, 0),
            "RLIMIT_NOFILE": (self.limits.nofile, self.limits.nofile),
            "RLIMIT_FSIZE": (self.limits.disk_mb << 20, self.limits.disk_mb << 20),
            "RLIMIT_NPROC": (self.limits.pids + 16, self.limits.pids + 16),
        }
        if not self.gpus:  # CUDA reserves huge address space: GPU jobs rely on the cgroup
            rlimits["RLIMIT_AS"] = (mem * 4 + (2 << 30), mem * 4 + (2 << 30))
        return rlimits

    async def start(self, argv: Sequence[str], env: Mapping[str, str], *,
                    stdin: int = subprocess.DEVNULL) -> trio.Process:
        r, w = os.pipe()
        self._status_r = r
        try:
            self._process = await trio.lowlevel.open_process(
                self.launcher_argv(argv, env, w), stdin=stdin, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(w,), start_new_session=True)
        finally:
            os.close(w)
        return self._process

    async def wait(self, *, timeout_s: float, warm: bool = False,
                   output_cap: int = MAX_OUTPUT_TEXT,
                   cpu_baseline_s: float = 0.0) -> SandboxResult:
        """Drain output, enforce the wall limit, kill everything left, read usage."""
        proc = self._process
        assert proc is not None
        started = time.monotonic()
        out, err, timed_out = await collect_output(proc, timeout_s=timeout_s,
                                                   output_cap=output_cap)
        wall = time.monotonic() - started
        assert self.cgroup is not None
        await trio.to_thread.run_sync(self.cgroup.kill_all)
        with trio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            for s in (proc.stdout, proc.stderr, proc.stdin):
                if s is not None:
                    await s.aclose()
        started_child, exit_code = self._read_status()
        if not started_child:
            raise LaunchFailed("the sandbox did not start: "
                               + err.data.decode("utf-8", "replace").strip()[-500:])
        code = exit_code if exit_code is not None else (proc.returncode or 0)
        return self.result(out, err, timed_out=timed_out, wall=wall, code=code, warm=warm,
                           cpu_baseline_s=cpu_baseline_s)

    def result(self, out: Any, err: Any, *, timed_out: bool, wall: float, code: int,
               warm: bool, cpu_baseline_s: float) -> SandboxResult:
        """The job's result from its captured output, its exit code and the cgroup's usage."""
        assert self.cgroup is not None
        usage = self.cgroup.usage()
        hit = []
        if timed_out:
            hit.append("wall")
        if usage.oom_killed:  # failcnt also counts reclaimed cache: only an OOM kill counts
            hit.append("memory")
        if usage.pids_limit_hit:
            hit.append("pids")
        if self._disk_full():
            hit.append("disk")
        if wall > 1.0 and usage.cpu_s - cpu_baseline_s >= 0.9 * self.limits.cpus * wall:
            hit.append("cpu")
        killed = (usage.oom_killed or code in (128 + 9, 128 + 15)  # bwrap: 128 + signal
                  or stopped())
        result = ProcessResult(
            status=outcome(timed_out=timed_out, code=code, killed=killed), exit_code=code,
            stdout=bytes(out.data), stderr=bytes(err.data),
            stdout_truncated=out.truncated, stderr_truncated=err.truncated, wall_s=wall,
            cpu_s=max(0.0, usage.cpu_s - cpu_baseline_s),
            peak_memory_mb=usage.peak_memory_bytes >> 20, stdout_dropped=out.dropped,
            stderr_dropped=err.dropped)
        return SandboxResult(process=result, limits_hit=tuple(hit), warm=warm)

    def _read_status(self) -> tuple[bool, int | None]:
        """bwrap's --json-status-fd: a child-pid line once started, exit-code at the end."""
        r, self._status_r = self._status_r, None
        if r is None:
            return False, None
        data = b""
        os.set_blocking(r, False)
        try:
            while chunk := os.read(r, 65536):
                data += chunk
        except BlockingIOError:
            pass
        finally:
            os.close(r)
        started, code = False, None
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                doc: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            started = started or "child-pid" in doc
            if "exit-code" in doc:
                code = int(doc["exit-code"])
        return started, code

    def _disk_full(self) -> bool:
        try:
            st = os.statvfs(self.work_dir)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024

    async def run(self, argv: Sequence[str], env: Mapping[str, str]) -> SandboxResult:
        await self.start(argv, env)
        return await self.wait(timeout_s=self.limits.wall_s)
