"""The bubblewrap command line of a job sandbox (pure: paths in, argv out)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from node.provider.sandbox.gpu import CONTROL_DEVICES, Gpu

BWRAP = "/usr/bin/bwrap"
WORK = "/work"
JOB = "/job"
SECCOMP_FD_PLACEHOLDER = "{seccomp_fd}"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/alternatives",
             "/etc/nsswitch.conf")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSpec:
    work_dir: Path                    # host tmpfs, owned by the job user: /work (rw, cwd)
    inputs_dir: Path                  # host dir of the job's inputs: /job (ro)
    runtime_paths: Sequence[Path]     # the runtime venv and its base Python (ro)
    argv: Sequence[str]
    env: Mapping[str, str]
    tmp_mb: int = 256
    gpus: Sequence[Gpu] = ()
    gpu_libraries: Sequence[str] = ()
    hostname: str = "offload-job"


def bwrap_argv(spec: SandboxSpec, *, bwrap: str = BWRAP,
               present: Callable[[str], bool] = os.path.lexists) -> list[str]:
    """Every namespace, no network, read-only system and runtime, /work the only writable disk.

    The seccomp descriptor is left as SECCOMP_FD_PLACEHOLDER for the launcher to fill in.
    """
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--clearenv", "--hostname", spec.hostname,
            "--cap-drop", "ALL"]
    for d in SYSTEM_DIRS:
        if not present(d):
            continue
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        else:
            args += ["--ro-bind", d, d]
    for f in ETC_FILES:
        if present(f):
            args += ["--ro-bind", f, f]
    for p in _dedupe(spec.runtime_paths):
        args += ["--ro-bind", str(p), str(p)]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(spec.tmp_mb << 20), "--tmpfs", "/tmp",
             "--size", str(spec.tmp_mb << 20), "--tmpfs", "/dev/shm",
             "--bind", str(spec.work_dir), WORK,
             "--ro-bind", str(spec.inputs_dir), JOB]
    for gpu in spec.gpus:
        args += ["--dev-bind", gpu.device_node, gpu.device_node]
    if spec.gpus:
        for dev in CONTROL_DEVICES:
            if present(dev):
                args += ["--dev-bind", dev, dev]
        for lib in spec.gpu_libraries:
            real = os.path.realpath(lib)
            if not _under_system(lib) and not _under_system(real):
                args += ["--ro-bind", lib, lib]
        if present("/proc/driver/nvidia"):
            args += ["--ro-bind", "/proc/driver/nvidia", "/proc/driver/nvidia"]
    for key, value in sorted(spec.env.items()):
        args += ["--setenv", key, value]
    args += ["--chdir", WORK, "--seccomp", SECCOMP_FD_PLACEHOLDER, "--", *spec.argv]
    return args


def _under_system(path: str) -> bool:
    """Reachable through the read-only system dirs (merged-/usr symlinks included)."""
    real = os.path.realpath(path) if os.path.lexists(path) else path
    return any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS for p in (path, real))


def _dedupe(paths: Sequence[Path]) -> list[Path]:
    """Drop paths already covered by another one, or by the read-only system dirs."""
    resolved = sorted({Path(p) for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in resolved:
        covered = any(p == k or k in p.parents for k in kept)
        system = any(str(p) == d or str(p).startswith(d + "/") for d in SYSTEM_DIRS)
        if not covered and not system:
            kept.append(p)
    return kept
