"""Seccomp-BPF deny-list for jobs, as raw ``struct sock_filter`` bytes for ``bwrap --seccomp FD``.

Default allow; a denied call returns an errno (never a kill) so the job sees a clean error.
Only a foreign syscall ABI (i386 on x86_64, arm32 on aarch64) kills the process, since its
syscall numbers mean other calls; x86_64's x32 ABI gets ENOSYS.
"""

from __future__ import annotations

import errno
import platform
import struct

from node.errors import SeccompUnsupported as SeccompUnsupported

__all__ = ["SeccompUnsupported", "build_filter", "describe"]


# struct seccomp_data: nr at 0, arch at 4, args[i] (u64) at 16 + 8 * i, low word first.
_NR, _ARCH = 0, 4
_LD_W_ABS, _JEQ_K, _JSET_K, _RET_K = 0x20, 0x15, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_X32_BIT = 0x40000000
MAX_INSNS = 4096

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
_COLUMN = {"x86_64": 0, "aarch64": 1}

# name: (x86_64 nr, aarch64 nr or None where the call does not exist there)
_EPERM: dict[str, tuple[int, int | None]] = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41),
    "move_mount": (429, 429), "open_tree": (428, 428), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "unshare": (272, 97), "setns": (308, 268),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "acct": (163, 89),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266),
    "adjtimex": (159, 171), "quotactl": (179, 60), "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "iopl": (172, None), "ioperm": (173, None),
    "vhangup": (153, 58), "syslog": (103, 116), "uselib": (134, None),
}
# clone3 keeps its flags in memory a filter cannot read; glibc falls back to clone on ENOSYS.
# io_uring could open sockets without the socket syscall; runtimes fall back on ENOSYS.
_ENOSYS: dict[str, tuple[int, int | None]] = {
    "clone3": (435, 435), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
}
_ARGS: dict[str, tuple[int, int | None]] = {
    "socket": (41, 198), "socketpair": (53, 199), "clone": (56, 220), "ioctl": (16, 29),
    "personality": (135, 92),
}

AF_UNIX = 1
NAMED_FAMILIES = {
    "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17, "AF_CAN": 29,
    "AF_BLUETOOTH": 31, "AF_VSOCK": 40, "AF_XDP": 44,
}
CLONE_NS_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
DENIED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C}
PERSONALITY_ALLOWED = (0x0, 0xFFFFFFFF)  # PER_LINUX, and the query

_Insn = tuple[int, int, str | None, str | None]  # code, k, jt label, jf label (None: next)


def _arch(arch: str | None) -> str:
    name = arch if arch is not None else platform.machine()
    name = _ALIASES.get(name, name)
    if name not in _AUDIT_ARCH:
        raise SeccompUnsupported(
            f"no seccomp syscall table for architecture {name!r}; "
            f"supported: {', '.join(sorted(_AUDIT_ARCH))}"
        )
    return name


def _numbers(table: dict[str, tuple[int, int | None]], arch: str) -> dict[str, int]:
    col = _COLUMN[arch]
    return {name: n for name, nrs in table.items() if (n := nrs[col]) is not None}


def _arg(i: int) -> int:
    return 16 + 8 * i


def _errno(code: int) -> int:
    return _RET_ERRNO | (code & 0xFFFF)


def _program(arch: str) -> list[_Insn | str]:
    nr = _numbers(_ARGS, arch)
    prog: list[_Insn | str] = [
        (_LD_W_ABS, _ARCH, None, None),
        (_JEQ_K, _AUDIT_ARCH[arch], None, "kill"),
        (_LD_W_ABS, _NR, None, None),
    ]
    if arch == "x86_64":
        prog.append((_JSET_K, _X32_BIT, "enosys", None))
    prog += [(_JEQ_K, n, "eperm", None) for n in _numbers(_EPERM, arch).values()]
    prog += [(_JEQ_K, n, "enosys", None) for n in _numbers(_ENOSYS, arch).values()]
    prog += [
        (_JEQ_K, nr["socket"], "socket", None),
        (_JEQ_K, nr["socketpair"], "socket", None),
        (_JEQ_K, nr["clone"], "clone", None),
        (_JEQ_K, nr["ioctl"], "ioctl", None),
        (_JEQ_K, nr["personality"], "personality", None),
        (_RET_K, RET_ALLOW, None, None),
        "socket",
        (_LD_W_ABS, _arg(0), None, None),
        (_JEQ_K, AF_UNIX, "allow", None),
        (_RET_K, _errno(errno.EAFNOSUPPORT), None, None),
        "clone",
        (_LD_W_ABS, _arg(0), None, None),
        (_JSET_K, sum(CLONE_NS_FLAGS.values()), "eperm", "allow"),
        "ioctl",
        (_LD_W_ABS, _arg(1), None, None),
        *[(_JEQ_K, req, "eperm", None) for req in DENIED_IOCTLS.values()],
        (_RET_K, RET_ALLOW, None, None),
        "personality",
        (_LD_W_ABS, _arg(0), None, None),
        *[(_JEQ_K, p, "allow", None) for p in PERSONALITY_ALLOWED],
        "eperm",
        (_RET_K, _errno(errno.EPERM), None, None),
        "enosys",
        (_RET_K, _errno(errno.ENOSYS), None, None),
        "kill",
        (_RET_K, RET_KILL_PROCESS, None, None),
        "allow",
        (_RET_K, RET_ALLOW, None, None),
    ]
    return prog


def _assemble(items: list[_Insn | str]) -> bytes:
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for pc, (code, k, jt, jf) in enumerate(insns):
        offsets = [0 if lb is None else labels[lb] - pc - 1 for lb in (jt, jf)]
        if not all(0 <= off <= 255 for off in offsets):
            raise AssertionError(f"jump out of range at instruction {pc}: {offsets}")
        out += struct.pack("<HBBI", code, offsets[0], offsets[1], k)
    if len(insns) >= MAX_INSNS:
        raise AssertionError(f"program has {len(insns)} instructions, limit {MAX_INSNS}")
    return bytes(out)


def build_filter(*, arch: str | None = None, allow_gpu_ioctls: bool = True) -> bytes:
    """The filter for ``arch`` (default: this machine) as packed little-endian sock_filter.

    ``allow_gpu_ioctls`` is kept for forward compatibility: GPU ioctls are always allowed.
    """
    del allow_gpu_ioctls
    return _assemble(_program(_arch(arch)))


def describe(*, arch: str | None = None) -> dict[str, list[str]]:
    """The policy of ``build_filter(arch=arch)`` in words, for ``offload sandbox check``."""
    name = _arch(arch)
    enosys = sorted(_numbers(_ENOSYS, name))
    if name == "x86_64":
        enosys.append("any x32-ABI syscall")
    return {
        "architecture": [name, "other syscall ABIs: process killed"],
        "syscalls_eperm": sorted(_numbers(_EPERM, name)),
        "syscalls_enosys": enosys,
        "socket_families_allowed": ["AF_UNIX"],
        "socket_families_eafnosupport": [*NAMED_FAMILIES, "every other family but AF_UNIX"],
        "clone_flags_eperm": list(CLONE_NS_FLAGS),
        "ioctls_eperm": list(DENIED_IOCTLS),
        "personality_allowed": ["0 (PER_LINUX)", "0xffffffff (query)"],
    }
