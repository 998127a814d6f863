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
    if cfg.get("seccomp_hex"):
        r, w = os.pipe()
        os.write(w, bytes.fromhex(cfg["seccomp_hex"]))
        os.close(w)
        os.set_inheritable(r, True)
        argv = [str(r) if a == cfg["seccomp_placeholder"] else a for a in argv]
    uid, gid = int(cfg["uid"]), int(cfg["gid"])
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
    os.umask(0o077)
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        _fail(f"cannot start {argv[0]}: {exc.strerror}")


if __name__ == "__main__":
    main(sys.argv[1])
