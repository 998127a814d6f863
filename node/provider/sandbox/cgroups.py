"""Per-job cgroups: memory, pids and CPU limits, usage, kill-all; cgroup v1 (hybrid) and v2.

Job groups live under our own group of each hierarchy, in `<own>/offload/<name>`:
- v1 / hybrid: one group per v1 hierarchy among memory, pids, cpu, cpuacct (required),
  devices, freezer; plus one in the v2 tree (`unified`) when mounted, only for `cgroup.kill`.
- v2 (often a systemd-delegated subtree): one group. memory, pids and cpu are enabled in
  `cgroup.subtree_control` of our group and of `offload/`. The "no internal processes" rule
  forbids that while our group holds processes, so they are all moved first into the leaf
  `<own>/offload-daemon`; a daemon already in that leaf uses its parent as `<own>`.
Devices: v1 gets an allow-list (`BASIC_DEVICES` + `Limits.devices`). v2 has no devices files
(it needs a BPF_CGROUP_DEVICE program), so there the rules are only recorded in
`JobCgroup.limits` and bubblewrap's minimal /dev is what restricts devices.
Knobs are written without O_CREAT, as on the kernel: a missing one is an error unless optional.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import tempfile
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from node.errors import CgroupError as CgroupError

BASE = "offload"
LEAF = "offload-daemon"
PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "devices", "freezer")
V1_REQUIRED = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
BASIC_DEVICES = (  # null, zero, full, random, urandom, tty, ptmx, pts
    "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm",
)
_NAME = re.compile(r"job-[A-Za-z0-9_.-]{1,64}")
_DEVICE_RULE = re.compile(r"[abc] (\*|\d+):(\*|\d+) [rwm]{1,3}")
_HINT = "run the daemon as root or in a delegated cgroup (systemd Delegate=yes)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What one job may use; `devices` are extra device rules such as "c 195:0 rw"."""

    memory_bytes: int
    pids: int
    cpus: float
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.memory_bytes < 1 << 20:
            raise CgroupError(f"memory_bytes={self.memory_bytes}: give at least 1 MiB")
        if self.pids < 1:
            raise CgroupError(f"pids={self.pids}: allow at least 1 task")
        if not (math.isfinite(self.cpus) and self.cpus >= 0.01):
            raise CgroupError(f"cpus={self.cpus}: give a number of cores >= 0.01")
        bad = [r for r in self.devices if not _DEVICE_RULE.fullmatch(r)]
        if bad:
            raise CgroupError(f"bad device rules {bad}: write them like 'c 195:0 rw'")


@dataclass(frozen=True, slots=True)
class Usage:
    """What the job's groups used since they were created (0 / False where a file is absent)."""

    cpu_s: float
    peak_memory_bytes: int
    memory_limit_hit: bool
    oom_killed: bool
    pids_limit_hit: bool
    peak_pids: int


# -- file helpers (tests replace _mkdir/_rmdir by a fake kernel) ------------------------------

def _mkdir(path: Path) -> None:
    path.mkdir()


def _rmdir(path: Path) -> None:
    os.rmdir(path)


def _write_raw(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write(path: Path, value: str) -> None:
    try:
        _write_raw(path, value)
    except OSError as exc:
        raise CgroupError(f"cannot write {value!r} to {path}: {exc.strerror}; {_HINT}") from exc


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    except OSError as exc:
        raise CgroupError(f"cannot read {path}: {exc.strerror}; {_HINT}") from exc


def _int(path: Path) -> int:
    text = _read(path).strip()
    return int(text) if text.isdigit() else 0


def _keyed(path: Path) -> dict[str, int]:
    """Lines of "key value" (cpu.stat, memory.events, pids.events, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _words(path: Path) -> set[str]:
    """Controller names of cgroup.controllers / cgroup.subtree_control ("+" tolerated)."""
    return {w.lstrip("+") for w in _read(path).split()}


def _pids(path: Path) -> set[int]:
    return {int(w) for w in _read(path).split() if w.isdigit()}


# -- one job ---------------------------------------------------------------------------------

class JobCgroup:
    """One job's groups, created and removed by the daemon (root)."""

    def __init__(self, name: str, version: Literal[1, 2], *, v1: Mapping[str, Path],
                 v2: Path | None) -> None:
        self.name = name
        self.version: Literal[1, 2] = version
        self.v1 = dict(v1)  # controller -> group dir (co-mounted controllers share one)
        self.v2 = v2  # the v2 group: the job group on v2, the kill-only group on hybrid
        self.limits: Limits | None = None
        self.procs_files = tuple(str(d / "cgroup.procs") for d in self.dirs)
        self._peak_fd: int | None = None

    @property
    def dirs(self) -> list[Path]:
        found = list(dict.fromkeys(self.v1.values()))
        return [*found, self.v2] if self.v2 is not None else found

    def set_limits(self, limits: Limits) -> None:
        """Apply limits; may be called again to change them (a warm worker taking a job)."""
        if self.version == 2:
            assert self.v2 is not None
            self._set_v2(self.v2, limits)
        else:
            self._set_v1(limits)
        self.limits = limits

    def _set_v2(self, g: Path, limits: Limits) -> None:
        _write(g / "memory.max", str(limits.memory_bytes))
        if (g / "memory.swap.max").exists():
            _write(g / "memory.swap.max", "0")
        _write(g / "pids.max", str(limits.pids))
        _write(g / "cpu.max", f"{_quota(limits.cpus)} {PERIOD_US}")

    def _set_v1(self, limits: Limits) -> None:
        mem = self.v1["memory"]
        knobs = [mem / "memory.limit_in_bytes"]
        if (mem / "memory.memsw.limit_in_bytes").exists():  # memsw >= limit at every step
            growing = limits.memory_bytes >= _int(knobs[0])
            knobs.insert(0 if growing else 1, mem / "memory.memsw.limit_in_bytes")
        for knob in knobs:
            _write(knob, str(limits.memory_bytes))
        _write(self.v1["pids"] / "pids.max", str(limits.pids))
        _write(self.v1["cpu"] / "cpu.cfs_period_us", str(PERIOD_US))
        _write(self.v1["cpu"] / "cpu.cfs_quota_us", str(_quota(limits.cpus)))
        dev = self.v1.get("devices")
        if dev is not None:
            _write(dev / "devices.deny", "a")
            for rule in dict.fromkeys((*BASIC_DEVICES, *limits.devices)):
                _write(dev / "devices.allow", rule)

    def reset_peak(self) -> None:
        """Start the peak memory over (a warm worker's next job): v1 clears its maximum;
        v2 (Linux 6.12+) keeps a peak of its own for the file that was written, which
        `usage` reads from then on. Best effort: else the peak stays the group's."""
        if self.version == 1:
            with suppress(OSError):
                _write_raw(self.v1["memory"] / "memory.max_usage_in_bytes", "0")
            return
        assert self.v2 is not None
        try:
            fd = os.open(self.v2 / "memory.peak", os.O_RDWR)
        except OSError:
            return
        try:
            os.write(fd, b"reset\n")
        except OSError:
            os.close(fd)
            return
        if self._peak_fd is not None:
            os.close(self._peak_fd)
        self._peak_fd = fd

    def _peak_v2(self) -> int:
        if self._peak_fd is None:
            assert self.v2 is not None
            return _int(self.v2 / "memory.peak")
        text = os.pread(self._peak_fd, 64, 0).decode().strip()
        return int(text) if text.isdigit() else 0

    def usage(self) -> Usage:
        """CPU time, peak memory (since `reset_peak`) and which limits were hit, since the
        group was created."""
        if self.version == 2:
            assert self.v2 is not None
            g = self.v2
            mem, pids = _keyed(g / "memory.events"), _keyed(g / "pids.events")
            return Usage(
                cpu_s=_keyed(g / "cpu.stat").get("usage_usec", 0) / 1e6,
                peak_memory_bytes=self._peak_v2(),
                memory_limit_hit=any(mem.get(k, 0) > 0 for k in ("max", "oom", "oom_kill")),
                oom_killed=mem.get("oom_kill", 0) > 0,
                pids_limit_hit=pids.get("max", 0) > 0, peak_pids=_int(g / "pids.peak"))
        m, p = self.v1["memory"], self.v1["pids"]
        oom = _keyed(m / "memory.oom_control").get("oom_kill", 0) > 0
        fails = _int(m / "memory.failcnt") + _int(m / "memory.memsw.failcnt")
        return Usage(
            cpu_s=_int(self.v1["cpuacct"] / "cpuacct.usage") / 1e9,
            peak_memory_bytes=_int(m / "memory.max_usage_in_bytes"),
            memory_limit_hit=fails > 0 or oom, oom_killed=oom,
            pids_limit_hit=_keyed(p / "pids.events").get("max", 0) > 0,
            peak_pids=_int(p / "pids.peak"))

    def pids(self) -> set[int]:
        """Every pid now in any of the job's groups."""
        found: set[int] = set()
        for d in self.dirs:
            found |= _pids(d / "cgroup.procs")
        return found

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process and wait until the groups are empty.

        `cgroup.kill` where a v2 group has it (pure v2, or the unified group of a hybrid
        host); otherwise, and for hybrid stragglers that joined only v1 groups, rounds of
        freeze / SIGKILL through pidfds / thaw, so neither forks nor pid reuse can race.
        """
        deadline = time.monotonic() + timeout
        kill = self.v2 / "cgroup.kill" if self.v2 is not None else None
        has_kill = kill is not None and kill.exists()
        signals_after = time.monotonic() + (0.5 if has_kill else 0.0)
        while left := self.pids():
            now = time.monotonic()
            if now > deadline:
                raise CgroupError(
                    f"cgroup {self.name} still holds pids {sorted(left)[:20]} after {timeout}s "
                    "of SIGKILL: look for tasks stuck in D state (ps -o pid,stat,wchan)")
            if has_kill and kill is not None:
                _write(kill, "1")
            if not (has_kill and self.version == 2) and now >= signals_after:
                self._signal_round(deadline)
            time.sleep(0.01)

    def kill_except(self, keep: AbstractSet[int], timeout: float = 2.0) -> bool:
        """SIGKILL every process of the job's groups but `keep` (a warm worker's own), in
        frozen rounds so that none forks past it; True once only `keep` is left."""
        deadline = time.monotonic() + timeout
        while self.pids() - keep:
            if time.monotonic() > deadline:
                return False
            self._signal_round(deadline, keep)
            time.sleep(0.002)
        return True

    def _signal_round(self, deadline: float, keep: AbstractSet[int] = frozenset()) -> None:
        frozen = self._freeze(True, deadline)
        fds: dict[int, int] = {}
        try:
            for pid in self.pids() - keep:
                try:
                    fds[pid] = os.pidfd_open(pid)
                except OSError as exc:  # exited already, or a kernel before 5.3
                    if exc.errno == errno.ENOSYS:
                        with suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
            still = self.pids()  # a pidfd opened while its pid was listed is that task
            for pid, fd in fds.items():
                if pid in still:
                    with suppress(OSError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            for fd in fds.values():
                os.close(fd)
            if frozen:
                self._freeze(False, deadline)

    def _freeze(self, on: bool, deadline: float) -> bool:
        """Freeze (or thaw) with the v1 freezer or v2 cgroup.freeze; False when neither exists."""
        if "freezer" in self.v1:
            knob = probe = self.v1["freezer"] / "freezer.state"
            value, frozen = ("FROZEN" if on else "THAWED"), "FROZEN"
        elif self.version == 2 and self.v2 is not None and (self.v2 / "cgroup.freeze").exists():
            knob, probe = self.v2 / "cgroup.freeze", self.v2 / "cgroup.events"
            value, frozen = ("1" if on else "0"), "frozen 1"
        else:
            return False
        _write(knob, value)
        wait_until = min(deadline, time.monotonic() + 0.5)  # dying tasks may never freeze
        while on and frozen not in _read(probe).splitlines() and time.monotonic() < wait_until:
            time.sleep(0.005)
        return True

    def remove(self, timeout: float = 5.0) -> None:
        """Kill everything, then remove every group; removing twice is fine."""
        if self._peak_fd is not None:
            os.close(self._peak_fd)
            self._peak_fd = None
        self.kill_all(timeout)
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while d.exists():
                try:
                    _rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise CgroupError(f"cannot remove {d}: {exc.strerror}; {_HINT}") from exc
                    time.sleep(0.01)


def _quota(cpus: float) -> int:
    return max(1000, round(cpus * PERIOD_US))


# -- the manager -----------------------------------------------------------------------------

def _self_lines(self_cgroup: Path) -> list[tuple[list[str], str]]:
    try:
        text = self_cgroup.read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {self_cgroup}: {exc.strerror}") from exc
    out = []
    for line in text.splitlines():
        _, _, rest = line.partition(":")
        ctrls, sep, path = rest.partition(":")
        if sep:
            out.append((ctrls.split(",") if ctrls else [], path))
    return out


def _writable(d: Path) -> bool:
    return d.is_dir() and os.access(d, os.W_OK)


class CgroupManager:
    """Creates and cleans up job groups in the cgroup layout this host has."""

    def __init__(self, version: Literal[1, 2], *, v1: Mapping[str, Path], v2: Path | None,
                 v2_root: Path | None, base: str = BASE) -> None:
        self.version: Literal[1, 2] = version
        self.base = base
        self._v1 = dict(v1)  # controller -> our own group
        self._v2 = v2  # our own v2 group (the delegated root on v2)
        self._v2_root = v2_root
        self._prepared = False

    @classmethod
    def detect(cls, *, root: Path = Path("/sys/fs/cgroup"),
               self_cgroup: Path = Path("/proc/self/cgroup"), base: str = BASE) -> CgroupManager:
        """The layout of this host: v2 when `root` is cgroup2, else v1 (hybrid)."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", base) or base in (".", ".."):
            raise CgroupError(f"base {base!r}: use a plain directory name")
        lines = _self_lines(self_cgroup)
        v2_path = next((p for c, p in lines if not c), None)
        if (root / "cgroup.controllers").is_file():
            if v2_path is None:
                raise CgroupError(f"{self_cgroup} has no '0::' line although {root} is cgroup2")
            own = root / v2_path.lstrip("/")
            if own.name == LEAF:
                own = own.parent
            if not _writable(own):
                raise CgroupError(f"cgroup {own} is not writable: {_HINT}")
            return cls(2, v1={}, v2=own, v2_root=root, base=base)
        v1: dict[str, Path] = {}
        for ctrls, path in lines:
            for mount in (root / ",".join(ctrls), *(root / c for c in ctrls)):
                if ctrls and mount.is_dir():
                    v1.update({c: mount / path.lstrip("/") for c in ctrls
                               if c in V1_CONTROLLERS})
                    break
        v1 = {c: v1[c] for c in V1_CONTROLLERS if c in v1}
        missing = [c for c in V1_REQUIRED if c not in v1]
        if missing:
            raise CgroupError(f"no usable cgroup layout under {root}: neither cgroup2 nor the "
                              f"v1 controllers {', '.join(missing)}; mount them or use cgroup v2")
        bad = sorted({str(d) for d in v1.values() if not _writable(d)})
        if bad:
            raise CgroupError(f"cgroups {', '.join(bad)} are not writable: {_HINT}")
        unified = root / "unified"
        kill_own = None
        if v2_path is not None and (unified / "cgroup.controllers").is_file():
            kill_own = unified / v2_path.lstrip("/")
            kill_own = kill_own if _writable(kill_own) else None
        return cls(1, v1=v1, v2=kill_own, v2_root=unified, base=base)

    @property
    def base_dirs(self) -> list[Path]:
        """Every `<own>/<base>` folder the job groups live in."""
        bases = [d / self.base for d in dict.fromkeys(self._v1.values())]
        return [*bases, self._v2 / self.base] if self._v2 is not None else bases

    def _job(self, name: str) -> JobCgroup:
        v2 = self._v2 / self.base / name if self._v2 is not None else None
        return JobCgroup(name, self.version, v2=v2,
                         v1={c: d / self.base / name for c, d in self._v1.items()})

    def create(self, name: str) -> JobCgroup:
        """Create the groups of job `name` ("job-..."); it must not exist yet."""
        if not _NAME.fullmatch(name):
            raise CgroupError(f"cgroup name {name!r}: use 'job-' and up to 64 of [A-Za-z0-9_.-]")
        job = self._job(name)
        made: list[Path] = []
        try:
            if self.version == 2:
                self._prepare_v2()
            for base in self.base_dirs:
                if not base.is_dir():
                    _mkdir(base)
            for d in job.dirs:
                _mkdir(d)
                made.append(d)
        except OSError as exc:
            for d in reversed(made):
                with suppress(OSError):
                    _rmdir(d)
            hint = ("call cleanup_stale() at start or pick a unique name"
                    if isinstance(exc, FileExistsError) else _HINT)
            raise CgroupError(f"cannot create cgroup {exc.filename}: {exc.strerror}; "
                              f"{hint}") from exc
        return job

    def _prepare_v2(self) -> None:
        if self._prepared:
            return
        own = self._v2
        assert own is not None
        missing = [c for c in V2_CONTROLLERS if c not in _words(own / "cgroup.controllers")]
        if missing:
            raise CgroupError(f"cgroup {own} does not offer {', '.join(missing)}: start the "
                              "daemon with systemd Delegate=yes or enable them in the "
                              "parent's cgroup.subtree_control")
        self._enable(own)
        if not (own / self.base).is_dir():
            _mkdir(own / self.base)
        self._enable(own / self.base)
        self._prepared = True

    def _enable(self, group: Path) -> None:
        need = [c for c in V2_CONTROLLERS if c not in _words(group / "cgroup.subtree_control")]
        if not need:
            return
        if group != self._v2_root and _pids(group / "cgroup.procs"):
            self._evacuate(group)
        value = " ".join(f"+{c}" for c in need)
        for attempt in range(5):
            try:
                _write_raw(group / "cgroup.subtree_control", value)
                return
            except OSError as exc:  # EBUSY: processes (re)appeared in the group
                if exc.errno != errno.EBUSY or attempt == 4:
                    raise CgroupError(f"cannot enable {value} in {group}: {exc.strerror}; "
                                      f"{_HINT}") from exc
                self._evacuate(group)

    def _evacuate(self, group: Path) -> None:
        """Move every process of `group` into its leaf `offload-daemon`."""
        leaf = group / LEAF
        try:
            if not leaf.is_dir():
                _mkdir(leaf)
            for pid in sorted(_pids(group / "cgroup.procs")):
                with suppress(ProcessLookupError):  # it exited meanwhile
                    _write_raw(leaf / "cgroup.procs", str(pid))
        except OSError as exc:
            raise CgroupError(f"cannot move our processes into {leaf}: {exc.strerror}; "
                              f"{_HINT}") from exc

    def stale_names(self) -> list[str]:
        """The `job-*` groups now under our base dirs."""
        return sorted({e.name for b in self.base_dirs if b.is_dir() for e in b.iterdir()
                       if _NAME.fullmatch(e.name) and e.is_dir()})

    def cleanup_stale(self) -> int:
        """Kill and remove every `job-*` group under our base dirs; returns how many.

        Call at start. On v1 the pids/cpu groups of daemons on one host share `/`, so daemons
        that share a host must each pass their own `base` to detect().
        """
        names = self.stale_names()
        for name in names:
            job = self._job(name)
            job.v1 = {c: d for c, d in job.v1.items() if d.is_dir()}
            job.v2 = job.v2 if job.v2 is not None and job.v2.is_dir() else None
            job.remove()
        return len(names)

    def remove_bases(self) -> None:
        """Remove our base folders once empty (for short-lived managers, e.g. a check)."""
        for base in self.base_dirs:
            try:
                base.rmdir()
            except OSError:
                pass


def detect_usable(*, base: str = BASE, root: Path = Path("/sys/fs/cgroup"),
                  self_cgroup: Path = Path("/proc/self/cgroup")) -> CgroupManager:
    """Our own cgroup if jobs can be limited under it; on a v2 host whose group lacks the
    controllers (no delegation, as seen on a GPU host), the root group, which root may use."""
    manager = CgroupManager.detect(root=root, self_cgroup=self_cgroup, base=base)
    probe = f"job-usable-{os.getpid()}"
    try:
        manager.create(probe).remove()
        return manager
    except CgroupError:
        if manager.version != 2 or os.geteuid() != 0:
            raise
    with tempfile.TemporaryDirectory() as tmp:
        at_root = Path(tmp) / "cgroup"
        at_root.write_text("0::/\n")
        manager = CgroupManager.detect(root=root, self_cgroup=at_root, base=base)
    manager.create(probe).remove()
    return manager
