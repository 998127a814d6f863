"""Exec helper, run as a separate root process: a watchdog that outlives nothing, and its
child, which joins the job's cgroups, sets rlimits, drops to the job user and execs
bubblewrap (tier A, with a fresh seccomp descriptor) or the Landlocked job (tier B).

The watchdog stays root and single-threaded, outside the job's cgroups, and waits for
either its child or the daemon to end. Its child dies with it (PR_SET_PDEATHSIG, set after
the privilege drop, which would clear it), and bubblewrap's --die-with-parent ties the
sandbox to that child: a parent-death signal follows the *thread* that forked, and the
daemon forks from trio's worker threads, which exit after 10 s idle. When the daemon dies
(kill -9 included) the watchdog kills everything in the job's cgroups, removes them and the
job dir, and, if it can take the daemon's home lock (no new daemon runs there), the empty
base folders too; then it exits. Otherwise it exits with its child's status.

Stdlib only and no package imports: it runs as `python -I -S launch.py CONFIG_JSON`, so a
threaded daemon never needs preexec_fn. Exit status 125 means the sandbox failed to start.
"""

from __future__ import annotations

import ctypes  # before the drop: the job user may not read this Python's library
import errno
import fcntl
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from contextlib import suppress

FAILED = 125
PR_SET_PDEATHSIG = 1
KILL_TIMEOUT_S = 10.0


def _fail(message: str) -> None:
    sys.stderr.write(f"offload-launch: {message}\n")
    sys.stderr.flush()
    os._exit(FAILED)


def main(config_json: str) -> None:
    cfg = json.loads(config_json)
    daemon = int(cfg.get("daemon_pid") or os.getppid())
    if os.getppid() != daemon:
        _fail("the daemon that started this job is gone")
    try:
        child = os.fork()
    except OSError as exc:
        _fail(f"cannot fork: {exc.strerror}")
        return
    if child == 0:
        _start_job(cfg, watchdog=os.getppid())
    else:
        _watch(cfg, child, daemon)


def _start_job(cfg: dict[str, object], *, watchdog: int) -> None:
    pid = str(os.getpid())
    procs_files = cfg["procs_files"]
    assert isinstance(procs_files, list)
    for procs in procs_files:
        try:
            with open(procs, "w") as f:
                f.write(pid)
        except OSError as exc:
            _fail(f"cannot join cgroup {procs}: {exc.strerror}")
    rlimits = cfg["rlimits"]
    assert isinstance(rlimits, dict)
    for name, (soft, hard) in rlimits.items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError, AttributeError) as exc:
            _fail(f"cannot set {name}: {exc}")
    argv = [str(a) for a in cfg["argv"]]  # type: ignore[attr-defined]
    if cfg.get("mode") == "landlock":
        _exec_landlocked(cfg, argv, watchdog)
    if cfg.get("seccomp_hex"):
        r, w = os.pipe()
        os.write(w, bytes.fromhex(str(cfg["seccomp_hex"])))
        os.close(w)
        os.set_inheritable(r, True)
        argv = [str(r) if a == cfg["seccomp_placeholder"] else a for a in argv]
    _drop(int(str(cfg["uid"])), int(str(cfg["gid"])), watchdog)
    os.umask(0o077)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        _fail(f"cannot start {argv[0]}: {exc.strerror}")


def _exec_landlocked(cfg: dict[str, object], argv: list[str], watchdog: int) -> None:
    """Tier B: job user, then Landlock and seccomp on this very process, then exec the job."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("offload_landlock", str(cfg["landlock_py"]))
    if spec is None or spec.loader is None:
        _fail("cannot load the Landlock module")
        return
    landlock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(landlock)
    _drop(int(str(cfg["uid"])), int(str(cfg["gid"])), watchdog)
    rules = cfg["landlock"]
    assert isinstance(rules, dict)
    try:
        landlock.restrict(read_only=rules["read_only"], read_write=rules["read_write"],
                          read_exec=rules["read_exec"])
        landlock.apply_seccomp(bytes.fromhex(str(cfg["seccomp_hex"])))
        os.chdir(str(cfg["cwd"]))
    except (OSError, ValueError, landlock.LandlockUnsupported) as exc:
        _fail(f"cannot confine the job: {exc}")
    os.umask(0o077)
    env = cfg["env"]
    assert isinstance(env, dict)
    status_fd = int(str(cfg.get("status_fd", -1)))
    if status_fd >= 0:
        os.write(status_fd, (json.dumps({"child-pid": os.getpid()}) + "\n").encode())
        os.close(status_fd)
    try:
        os.execve(argv[0], argv, {str(k): str(v) for k, v in env.items()})
    except OSError as exc:
        _fail(f"cannot start {argv[0]}: {exc.strerror}")


def _drop(uid: int, gid: int, watchdog: int) -> None:
    if uid == 0 or gid == 0:
        _fail("refusing to run a job as root")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        _fail(f"cannot drop privileges to uid {uid}: {exc.strerror}")
    if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
        _fail("privileges were not fully dropped")
    _die_with_parent(watchdog)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the watchdog dies; after the drop, since a credential change clears it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _fail(f"cannot set the parent-death signal: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # it died before the signal was armed
        _fail("the watchdog is gone")


# -- the watchdog ----------------------------------------------------------------------------

def _watch(cfg: dict[str, object], child: int, daemon: int) -> None:
    """Wait for the child (exit with its status) or the daemon's death (clean up, exit)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 65536)  # the job's pipes and status fd belong to the child alone
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    poller = select.poll()
    for pid in (daemon, child):
        with suppress(OSError):  # no pidfds before Linux 5.3: the 1 s poll still sees it
            poller.register(os.pidfd_open(pid), select.POLLIN)
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done == child:
            _exit_as(status)
        if os.getppid() != daemon:
            _orphaned(cfg, child)
            os._exit(FAILED)
        poller.poll(1000)


def _exit_as(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    with suppress(OSError, ValueError):
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    os._exit(128 - code)


def _orphaned(cfg: dict[str, object], child: int) -> None:
    with suppress(OSError):
        os.kill(child, signal.SIGKILL)
    dirs = [str(d) for d in cfg.get("cgroup_dirs") or []]  # type: ignore[attr-defined]
    kill_cgroups(dirs, KILL_TIMEOUT_S)
    with suppress(ChildProcessError):
        os.waitpid(child, 0)
    for d in dirs:
        _rmdir(d, KILL_TIMEOUT_S)
    work, job_dir = cfg.get("work_dir"), cfg.get("job_dir")
    if work:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)
    if job_dir:
        subprocess.run(["rm", "-rf", "--one-file-system", str(job_dir)], capture_output=True)
    lock = cfg.get("home_lock")
    if lock and _try_lock(str(lock)):  # no daemon on that home: nobody creates groups there
        for base in [*(cfg.get("base_dirs") or []), cfg.get("jobs_dir")]:  # type: ignore[misc]
            if base:
                with suppress(OSError):
                    os.rmdir(str(base))  # only an empty one goes


def kill_cgroups(dirs: list[str], timeout: float) -> bool:
    """SIGKILL every task in `dirs` (cgroup.kill where there is one) until they are empty.

    Tasks are signalled through pidfds opened while listed, so a reused pid is never hit.
    """
    deadline = time.monotonic() + timeout
    while True:
        pids = _tasks(dirs)
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        for d in dirs:
            _write_knob(os.path.join(d, "cgroup.kill"), "1")  # v2 and hybrid's unified group
        fds: dict[int, int] = {}
        for pid in pids:
            try:
                fds[pid] = os.pidfd_open(pid)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    with suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        still = _tasks(dirs)
        for pid, fd in fds.items():
            if pid in still:
                with suppress(OSError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)
        time.sleep(0.02)


def _write_knob(path: str, value: str) -> None:
    """Write a cgroup file that exists; never create one (no O_CREAT)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.write(fd, value.encode())
    except OSError:
        pass
    finally:
        os.close(fd)


def _tasks(dirs: list[str]) -> set[int]:
    found: set[int] = set()
    for d in dirs:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                found |= {int(w) for w in f.read().split() if w.isdigit()}
        except OSError:
            pass
    return found


def _rmdir(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return
            time.sleep(0.02)


def _try_lock(path: str, tries: int = 20) -> bool:
    """The home lock, if free within ~1 s; released when this process exits."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    for _ in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.05)
    os.close(fd)
    return False


if __name__ == "__main__":
    main(sys.argv[1])
