"""Landlock and seccomp for the tier B sandbox, applied by a job process to itself.

Stdlib only: the exec helper loads this file by path under ``python -I -S``. Both calls are
irreversible and, before Landlock ABI 8, bind only the calling thread: apply them in a
single-threaded process just before it execs the job.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import struct

__all__ = ["LandlockUnsupported", "abi_version", "apply_seccomp", "restrict"]


class LandlockUnsupported(Exception):
    """The kernel or architecture has no Landlock; use tier A (bubblewrap) on this host."""


# Same numbers on x86_64 and aarch64 (and every arch on the unified syscall table).
_NR_CREATE_RULESET, _NR_ADD_RULE, _NR_RESTRICT_SELF = 444, 445, 446
_ARCHES = {"x86_64", "amd64", "aarch64", "arm64"}
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_BPF_MAXINSNS = 4096

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
MAKE_SYM, REFER, TRUNCATE, IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

_FS_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # valid on non-dirs

# landlock_ruleset_attr is {u64 handled_access_fs, u64 handled_access_net, u64 scoped};
# landlock_path_beneath_attr is packed {u64 allowed_access, s32 parent_fd} (12 bytes).
_RULESET_ATTR = struct.Struct("=QQQ")
_PATH_BENEATH_ATTR = struct.Struct("=Qi")


class _SockFprog(ctypes.Structure):
    """struct sock_fprog: u16 len, 6 bytes of padding, pointer to the instructions."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.restype = ctypes.c_int
    return libc


def _syscall(libc: ctypes.CDLL, nr: int, *args: int) -> int:
    result: int = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return result


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what} failed: {os.strerror(err)}")


def abi_version() -> int:
    """The Landlock ABI the running kernel offers, or 0 where it has none."""
    if platform.machine().lower() not in _ARCHES:
        return 0
    libc = _libc()
    version = _syscall(libc, _NR_CREATE_RULESET, 0, 0, _CREATE_RULESET_VERSION)
    return version if version > 0 else 0


def _fs_rights(abi: int) -> int:
    rights = _FS_ABI1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def _ruleset_attr(abi: int, *, fs: int, net: int, scoped: int) -> bytes:
    size = 8 if abi <= 3 else 16 if abi <= 5 else 24
    return _RULESET_ATTR.pack(fs, net, scoped)[:size]


def _add_path(libc: ctypes.CDLL, ruleset: int, path: str, access: int, handled: int) -> None:
    """Allow ``access`` beneath ``path``; a missing path is skipped."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        allowed = access & handled
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= _FILE_RIGHTS
        if not allowed:
            return
        buf = ctypes.create_string_buffer(_PATH_BENEATH_ATTR.pack(allowed, fd),
                                          _PATH_BENEATH_ATTR.size)
        if _syscall(libc, _NR_ADD_RULE, ruleset, _RULE_PATH_BENEATH,
                    ctypes.addressof(buf), 0) < 0:
            raise _fail(f"landlock_add_rule for {path!r} (access {allowed:#x})")
    finally:
        os.close(fd)


def restrict(
    *,
    read_only: list[str],
    read_write: list[str],
    read_exec: list[str] | None = None,
    scope_signals: bool = True,
    scope_abstract_unix: bool = True,
    deny_tcp: bool = True,
) -> int:
    """Confine this thread (and what it execs) to the given paths; returns the ABI used.

    ``read_only`` paths may be read, ``read_exec`` read and executed, ``read_write`` fully
    used; every other path is denied. With ABI >= 4 and ``deny_tcp`` all TCP bind/connect
    is denied; with ABI >= 6 signals and abstract unix sockets stop at the domain's edge.
    Features the kernel lacks are skipped: compare the result with what you need.
    """
    abi = abi_version()
    if abi == 0:
        raise LandlockUnsupported(
            f"Landlock is not available on this kernel/architecture ({platform.machine()}, "
            f"Linux {platform.release()}); enable it (lsm=landlock) or use tier A (bubblewrap)"
        )
    fs = _fs_rights(abi)
    net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 and deny_tcp else 0
    scoped = 0
    if abi >= 6:
        scoped |= SCOPE_SIGNAL if scope_signals else 0
        scoped |= SCOPE_ABSTRACT_UNIX_SOCKET if scope_abstract_unix else 0
    libc = _libc()
    data = _ruleset_attr(abi, fs=fs, net=net, scoped=scoped)
    attr = ctypes.create_string_buffer(data, len(data))
    ruleset = _syscall(libc, _NR_CREATE_RULESET, ctypes.addressof(attr), len(data), 0)
    if ruleset < 0:
        raise _fail(f"landlock_create_ruleset (ABI {abi})")
    try:
        for path in read_only:
            _add_path(libc, ruleset, path, READ_FILE | READ_DIR, fs)
        for path in read_exec or []:
            _add_path(libc, ruleset, path, READ_FILE | READ_DIR | EXECUTE, fs)
        for path in read_write:
            _add_path(libc, ruleset, path, fs, fs)
        _no_new_privs(libc)
        if _syscall(libc, _NR_RESTRICT_SELF, ruleset, 0) < 0:
            raise _fail("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _no_new_privs(libc: ctypes.CDLL) -> None:
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(_PR_SET_NO_NEW_PRIVS), one, zero, zero, zero) != 0:
        raise _fail("prctl(PR_SET_NO_NEW_PRIVS)")


def apply_seccomp(program: bytes) -> None:
    """Install ``program`` (packed 8-byte ``struct sock_filter`` entries) as a seccomp filter."""
    count, rest = divmod(len(program), 8)
    if rest or not 0 < count <= _BPF_MAXINSNS:
        raise ValueError(
            f"seccomp program must be 1..{_BPF_MAXINSNS} 8-byte instructions, "
            f"got {len(program)} bytes"
        )
    libc = _libc()
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.addressof(buf))
    _no_new_privs(libc)
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(_PR_SET_SECCOMP), ctypes.c_ulong(_SECCOMP_MODE_FILTER),
                  ctypes.byref(fprog), zero, zero) != 0:
        raise _fail("prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)")
