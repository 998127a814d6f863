"""Exec helper, run as a separate root process: join cgroups, set rlimits, drop to the job
user, exec bubblewrap with a fresh seccomp descriptor.

Stdlib only and no package imports: it runs as `python -I -S launch.py CONFIG_JSON`, so a
threaded daemon never needs preexec_fn. Exit status 125 means the sandbox failed to start.
"""

from __future__ import annotations

import json
import os
import resource
import sys

FAILED = 125


def _fail(message: str) -> None:
    sys.stderr.write(f"offload-launch: {message}\n")
    sys.stderr.flush()
    os._exit(FAILED)


def main(config_json: str) -> None:
    cfg = json.loads(config_json)
    pid = str(os.getpid())
    for procs in cfg["procs_files"]:
        try:
            with open(procs, "w") as f:
                f.write(pid)
        except OSError as exc:
            _fail(f"cannot join cgroup {procs}: {exc.strerror}")
    for name, (soft, hard) in cfg["rlimits"].items():
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (OSError, ValueError, AttributeError) as exc:
            _fail(f"cannot set {name}: {exc}")
    argv = list(cfg["argv"])
    if cfg.get("mode") == "landlock":
        _exec_landlocked(cfg, argv)
    if cfg.get("seccomp_hex"):
        r, w = os.pipe()
        os.write(w, bytes.fromhex(cfg["seccomp_hex"]))
        os.close(w)
        os.set_inheritable(r, True)
        argv = [str(r) if a == cfg["seccomp_placeholder"] else a for a in argv]
    _drop(int(cfg["uid"]), int(cfg["gid"]))
    os.umask(0o077)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        _fail(f"cannot start {argv[0]}: {exc.strerror}")


def _exec_landlocked(cfg: dict[str, object], argv: list[str]) -> None:
    """Tier B: job user, then Landlock and seccomp on this very process, then exec the job."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("offload_landlock", str(cfg["landlock_py"]))
    if spec is None or spec.loader is None:
        _fail("cannot load the Landlock module")
        return
    landlock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(landlock)
    _drop(int(str(cfg["uid"])), int(str(cfg["gid"])))
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


def _drop(uid: int, gid: int) -> None:
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


if __name__ == "__main__":
    main(sys.argv[1])
