"""The seccomp filter: real probes under bubblewrap with a canary each, plus a BPF emulator."""

from __future__ import annotations

import errno
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from node.provider.sandbox import seccomp
from node.provider.sandbox.seccomp import SeccompUnsupported, build_filter, describe

BWRAP = shutil.which("bwrap")
MACHINE = platform.machine()
live = pytest.mark.skipif(
    BWRAP is None or os.geteuid() != 0 or MACHINE not in ("x86_64", "aarch64"),
    reason="needs bubblewrap, root (canaries assume host capabilities) and x86_64/aarch64",
)

NR = {"x86_64": {"clone": 56, "clone3": 435}, "aarch64": {"clone": 220, "clone3": 435}}
PRELUDE = f"""\
import ctypes, errno, os, signal, socket, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L, UL = ctypes.c_long, ctypes.c_ulong
NR = {NR.get(MACHINE, {})!r}
def check(r):
    if r == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
"""


def launch(body: str, *, seccomp: bool) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in bwrap (our filter on a pipe when ``seccomp``); it prints 0 or the errno."""
    code = PRELUDE + "try:\n" + textwrap.indent(body, "    ") + textwrap.dedent("""
        except OSError as e:
            print(e.errno)
        else:
            print(0)
        """)
    argv = [str(BWRAP), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-pid"]
    fds: tuple[int, ...] = ()
    if seccomp:
        r, w = os.pipe()
        os.write(w, build_filter())
        os.close(w)
        fds = (r,)
        argv += ["--seccomp", str(r)]
    try:
        return subprocess.run([*argv, "--", sys.executable, "-c", code], pass_fds=fds,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)
    finally:
        for fd in fds:
            os.close(fd)


def outcome(body: str, *, seccomp: bool) -> str:
    """``ok`` or the errno's name."""
    p = launch(body, seccomp=seccomp)
    assert p.returncode == 0, f"probe died ({p.returncode}): {p.stderr[-2000:]}"
    code = int(p.stdout.split()[-1])
    return errno.errorcode[code] if code else "ok"


CLONE_NEWUSER = """\
pid = check(libc.syscall(L(NR["clone"]), L(0x10000000 | signal.SIGCHLD), L(0), L(0), L(0), L(0)))
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""
# In a child: the probe's parent (bwrap's init) has fewer capabilities than the probe.
TRACEME = """\
pid = os.fork()
if pid == 0:
    os._exit(0 if libc.ptrace(0, 0, None, None) == 0 else ctypes.get_errno())
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
if code:
    raise OSError(code, os.strerror(code))
"""
# name, probe, outcome under the filter, outcome of the same probe without it (the canary)
DENIED = [
    ("socket-inet", "socket.socket(socket.AF_INET).close()", "EAFNOSUPPORT", "ok"),
    ("socket-inet6", "socket.socket(socket.AF_INET6).close()", "EAFNOSUPPORT", "ok"),
    ("socket-netlink", "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()",
     "EAFNOSUPPORT", "ok"),
    ("socket-packet", "socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()",
     "EAFNOSUPPORT", "ok"),
    ("socket-vsock", "socket.socket(socket.AF_VSOCK).close()", "EAFNOSUPPORT", "ok"),
    ("socketpair-inet", "socket.socketpair(socket.AF_INET)", "EAFNOSUPPORT",
     errno.errorcode[errno.EOPNOTSUPP]),
    ("ptrace-traceme", TRACEME, "EPERM", "ok"),
    ("unshare-newuser", "check(libc.unshare(0x10000000))", "EPERM", "ok"),
    ("mount", "check(libc.mount(None, b'/nonexistent/target', b'tmpfs', UL(0), None))",
     "EPERM", "ENOENT"),
    ("clone-newuser", CLONE_NEWUSER, "EPERM", "ok"),
    ("clone3", "check(libc.syscall(L(NR['clone3']), None, L(0)))", "ENOSYS", "EINVAL"),
    ("ioctl-tiocsti", "check(libc.ioctl(0, UL(0x5412), ctypes.byref(ctypes.c_char(b'x'))))",
     "EPERM", "ENOTTY"),
    ("ioctl-tioclinux",
     "check(libc.ioctl(0, UL(0x541C), ctypes.byref(ctypes.c_char(b'\\x0b'))))",
     "EPERM", "ENOTTY"),
    ("personality-no-aslr", "check(libc.personality(UL(0x0040000)))", "EPERM", "ok"),
    ("io_uring_setup", "check(libc.syscall(L(425), L(1), None))", "ENOSYS", "EFAULT"),
]
ALLOWED = {
    "socket-unix": "a, b = socket.socketpair()\na.sendall(b'x')\nassert b.recv(1) == b'x'\n"
                   "socket.socket(socket.AF_UNIX).close()",
    "fork-wait": "pid = os.fork()\nif pid == 0:\n    os._exit(7)\n"
                 "assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7",
    "threads": "out = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(4)]"
               "\nfor t in ts:\n    t.start()\nfor t in ts:\n    t.join()\n"
               "assert sorted(out) == [0, 1, 2, 3]",
    "multiprocessing-pool": "import multiprocessing\nwith multiprocessing.Pool(2) as pool:\n"
                            "    assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]",
    "subprocess-true": "subprocess.run(['true'], check=True)",
    "read-files": "assert open('/etc/passwd').read() and open(sys.executable, 'rb').read(4)",
    "personality-query": "check(libc.personality(UL(0xFFFFFFFF)))",
}


@live
@pytest.mark.parametrize(("probe", "denied"), [(d[1], d[2]) for d in DENIED],
                         ids=[d[0] for d in DENIED])
def test_denied_under_the_filter(probe: str, denied: str) -> None:
    assert outcome(probe, seccomp=True) == denied


@live
@pytest.mark.parametrize(("probe", "denied", "canary"), [d[1:] for d in DENIED],
                         ids=[d[0] for d in DENIED])
def test_canary_same_probe_without_the_filter(probe: str, denied: str, canary: str) -> None:
    assert outcome(probe, seccomp=False) == canary != denied


@live
@pytest.mark.parametrize("probe", list(ALLOWED.values()), ids=list(ALLOWED))
def test_still_allowed_under_the_filter(probe: str) -> None:
    assert outcome(probe, seccomp=True) == "ok"


INT80_GETPID = """\
import mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3")  # mov eax, 20 (i386 getpid); int 0x80; ret
assert ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)))() > 0
"""


@live
@pytest.mark.skipif(MACHINE != "x86_64", reason="the i386 ABI is an x86_64 thing")
def test_foreign_abi_kills_the_process_and_canary_survives() -> None:
    assert launch(INT80_GETPID, seccomp=True).returncode == 128 + signal.SIGSYS
    assert outcome(INT80_GETPID, seccomp=False) == "ok"


# A classic-BPF interpreter for the opcodes the filter may use, over struct seccomp_data.
AUDIT = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7, "i386": 0x40000003, "arm": 0x40000028}
ALLOW, KILL = 0x7FFF0000, 0x80000000


def err(code: int) -> int:
    return 0x00050000 | code


def decode(prog: bytes) -> list[tuple[int, int, int, int]]:
    return list(struct.iter_unpack("<HBBI", prog))


def emulate(prog: bytes, arch: str, nr: int, *args: int) -> int:
    full = [*args, *[0] * (6 - len(args))]
    data = struct.pack("<iIQ6Q", nr - (1 << 32) if nr >= 1 << 31 else nr, AUDIT[arch], 0, *full)
    insns, pc, acc = decode(prog), 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif code in (0x15, 0x45):
            hit = acc == k if code == 0x15 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc}")


AF_INET, AF_UNIX, SIGCHLD, NEWUSER, NEWNET = 2, 1, 17, 0x10000000, 0x40000000
DECISIONS = [
    ("x86_64", 0, (), ALLOW),  # read
    ("x86_64", 257, (), ALLOW),  # openat
    ("x86_64", 41, (AF_INET,), err(errno.EAFNOSUPPORT)),
    ("x86_64", 41, (AF_INET | 1 << 32,), err(errno.EAFNOSUPPORT)),
    ("x86_64", 41, (AF_UNIX,), ALLOW),
    ("x86_64", 53, (10,), err(errno.EAFNOSUPPORT)),
    ("x86_64", 56, (SIGCHLD,), ALLOW),
    ("x86_64", 56, (NEWNET | SIGCHLD,), err(errno.EPERM)),
    ("x86_64", 16, (1, 0x5412), err(errno.EPERM)),
    ("x86_64", 16, (1, 0xC020462A), ALLOW),  # an NVIDIA (_IOWR('F', ...)) ioctl
    ("x86_64", 16, (1, 0x5401), ALLOW),  # TCGETS
    ("x86_64", 135, (0xFFFFFFFF,), ALLOW),
    ("x86_64", 135, (0x0008,), err(errno.EPERM)),  # PER_LINUX32
    ("x86_64", 172, (3,), err(errno.EPERM)),  # iopl
    ("x86_64", 0x40000000 | 39, (), err(errno.ENOSYS)),  # x32 getpid
    ("x86_64", 0xFFFFFFFF, (), err(errno.ENOSYS)),  # nr -1
    ("i386", 20, (), KILL),
    ("aarch64", 56, (), ALLOW),  # openat; 56 is clone on x86_64
    ("aarch64", 198, (AF_INET,), err(errno.EAFNOSUPPORT)),
    ("aarch64", 198, (AF_UNIX,), ALLOW),
    ("aarch64", 199, (16,), err(errno.EAFNOSUPPORT)),
    ("aarch64", 220, (SIGCHLD,), ALLOW),
    ("aarch64", 220, (NEWUSER | SIGCHLD,), err(errno.EPERM)),
    ("aarch64", 435, (), err(errno.ENOSYS)),
    ("aarch64", 40, (), err(errno.EPERM)),  # mount
    ("aarch64", 117, (), err(errno.EPERM)),  # ptrace
    ("aarch64", 97, (), err(errno.EPERM)),  # unshare
    ("aarch64", 29, (1, 0x541C), err(errno.EPERM)),
    ("aarch64", 92, (0,), ALLOW),
    ("arm", 281, (AF_INET,), KILL),  # arm32 socket
]


@pytest.mark.parametrize(("arch", "nr", "args", "want"), DECISIONS)
def test_emulated_decisions(arch: str, nr: int, args: tuple[int, ...], want: int) -> None:
    prog_arch = {"i386": "x86_64", "arm": "aarch64"}.get(arch, arch)
    assert emulate(build_filter(arch=prog_arch), arch, nr, *args) == want


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_a_filter_for_another_arch_kills_calls_from_this_one(arch: str) -> None:
    other = "aarch64" if arch == "x86_64" else "x86_64"
    assert emulate(build_filter(arch=arch), other, 0) == KILL


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_every_jump_lands_inside_and_every_path_returns(arch: str) -> None:
    prog = build_filter(arch=arch)
    insns = decode(prog)
    assert len(prog) % 8 == 0 and 0 < len(insns) < 4096
    assert {code for code, *_ in insns} <= {0x20, 0x15, 0x45, 0x06}
    for pc, (code, jt, jf, k) in enumerate(insns):
        if code in (0x15, 0x45):
            assert pc + 1 + max(jt, jf) < len(insns), f"jump out of the program at {pc}"
        if code == 0x20:
            assert k in (0, 4) or (k >= 16 and (k - 16) % 8 == 0 and k < 64), k
    assert insns[-1][0] == 0x06
    for nr in range(600):
        emulate(prog, arch, nr, 2, 0x5412)


def test_aarch64_program_differs_and_defaults_follow_the_machine() -> None:
    assert build_filter(arch="aarch64") != build_filter(arch="x86_64")
    assert build_filter(arch="arm64") == build_filter(arch="aarch64")
    if MACHINE in ("x86_64", "aarch64"):
        assert build_filter() == build_filter(arch=MACHINE)
    assert build_filter(allow_gpu_ioctls=False) == build_filter(allow_gpu_ioctls=True)


@pytest.mark.parametrize("arch", ["riscv64", "i686", "armv7l", ""])
def test_unknown_arch_is_refused(arch: str) -> None:
    with pytest.raises(SeccompUnsupported,
                       match=rf"no seccomp syscall table for architecture '{arch}'; "
                             r"supported: aarch64, x86_64"):
        build_filter(arch=arch)


def test_describe_names_the_policy() -> None:
    x86, arm = describe(arch="x86_64"), describe(arch="aarch64")
    assert {"ptrace", "mount", "unshare", "setns", "bpf", "iopl"} <= set(x86["syscalls_eperm"])
    assert "iopl" not in arm["syscalls_eperm"]
    assert "clone3" in x86["syscalls_enosys"]
    assert x86["socket_families_allowed"] == ["AF_UNIX"]
    assert {"AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"} <= set(
        x86["socket_families_eafnosupport"])
    assert "CLONE_NEWUSER" in x86["clone_flags_eperm"]
    assert x86["ioctls_eperm"] == ["TIOCSTI", "TIOCLINUX"]


HEADERS = {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
           "aarch64": Path("/usr/include/asm-generic/unistd.h")}


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_syscall_numbers_match_the_kernel_headers(arch: str) -> None:
    if not HEADERS[arch].exists():
        pytest.skip(f"{HEADERS[arch]} not installed (linux-libc-dev)")
    defined = {m[1]: int(m[2]) for m in re.finditer(
        r"#define __NR(?:3264)?_(\w+)\s+(\d+)", HEADERS[arch].read_text())}
    col = 0 if arch == "x86_64" else 1
    for table in (seccomp._EPERM, seccomp._ENOSYS, seccomp._ARGS):
        for name, nrs in table.items():
            assert nrs[col] == defined.get(name), f"{arch} {name}"
