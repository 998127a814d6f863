"""Landlock and seccomp for tier B: real probes in child processes, each with a canary.

Both mechanisms are irreversible, so every probe runs in ``python -I -S -c CODE`` that loads
landlock.py by path, exactly as the exec helper does, then prints ``name result`` lines.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from node.provider.sandbox.seccomp import build_filter

LANDLOCK_PY = Path(__file__).resolve().parents[4] / "node" / "provider" / "sandbox" / "landlock.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("offload_landlock_under_test", LANDLOCK_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


landlock = load()
ABI = landlock.abi_version()
live = pytest.mark.skipif(
    ABI == 0 or os.geteuid() != 0,
    reason="needs Landlock and root (canaries assume root can read /root)",
)
scoping = pytest.mark.skipif(ABI < 6, reason="Landlock scoping needs ABI >= 6")
tcp = pytest.mark.skipif(ABI < 4, reason="Landlock TCP rules need ABI >= 4")

PRELUDE = f"""\
import errno, os, signal, socket, subprocess, sys
import importlib.util
spec = importlib.util.spec_from_file_location("landlock", {str(LANDLOCK_PY)!r})
landlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(landlock)
def probe(name, fn):
    try:
        fn()
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno), flush=True)
    else:
        print(name, "ok", flush=True)
"""


def interpreters() -> list[Any]:
    """The venv python, Debian's /usr/bin/python3 and a 3.12, where present."""
    found: list[Any] = [pytest.param(sys.executable, id="venv")]
    if os.path.exists("/usr/bin/python3"):
        found.append(pytest.param("/usr/bin/python3", id="debian"))
    py312 = sorted(
        glob.glob("/usr/bin/python3.12") + glob.glob("/usr/local/bin/python3.12")
        + glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))
    )
    if py312:
        found.append(pytest.param(py312[0], id="py3.12"))
    return found


def run(body: str, restrict: dict[str, Any] | None, *, python: str = sys.executable,
        tag: str = "", seccomp: bytes | None = None) -> dict[str, str]:
    """Run ``body`` after ``restrict(**restrict)`` (none: the canary); return its probes."""
    code = PRELUDE + f"TAG = {tag!r}\n"
    if seccomp is not None:
        code += f"SECCOMP = bytes.fromhex({seccomp.hex()!r})\n"
    if restrict is not None:
        code += f"print('abi', landlock.restrict(**{restrict!r}), flush=True)\n"
    code += body
    proc = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True,
                          timeout=20)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


# ---------------------------------------------------------------- unit level


def test_abi_version_is_positive_here() -> None:
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("Landlock syscall numbers are only known for x86_64 and aarch64")
    assert landlock.abi_version() >= 1


def test_restrict_without_landlock_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = load()
    monkeypatch.setattr(mod, "abi_version", lambda: 0)
    with pytest.raises(
        mod.LandlockUnsupported,
        match=r"^Landlock is not available on this kernel/architecture .*"
        r"enable it \(lsm=landlock\) or use tier A \(bubblewrap\)$",
    ):
        mod.restrict(read_only=["/"], read_write=[])


def test_unknown_architecture_has_no_abi(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = load()
    monkeypatch.setattr(mod.platform, "machine", lambda: "s390x")
    assert mod.abi_version() == 0


@pytest.mark.parametrize(
    ("abi", "size", "fs"),
    [(1, 8, 0x1FFF), (2, 8, 0x3FFF), (3, 8, 0x7FFF), (4, 16, 0x7FFF), (5, 16, 0xFFFF),
     (6, 24, 0xFFFF), (7, 24, 0xFFFF)],
)
def test_ruleset_attr_size_and_rights_follow_the_abi(abi: int, size: int, fs: int) -> None:
    assert landlock._fs_rights(abi) == fs
    attr = landlock._ruleset_attr(abi, fs=fs, net=3, scoped=3)
    assert len(attr) == size
    assert int.from_bytes(attr[:8], sys.byteorder) == fs


def test_struct_layouts() -> None:
    assert landlock._PATH_BENEATH_ATTR.size == 12  # packed u64 + s32
    assert landlock._RULESET_ATTR.size == 24
    assert landlock._SockFprog.filter.offset == 8  # u16 len, 6 bytes of padding


@pytest.mark.parametrize("program", [b"", b"\0" * 7, b"\0" * 8 * 4097])
def test_apply_seccomp_rejects_malformed_programs(program: bytes) -> None:
    with pytest.raises(ValueError, match=r"^seccomp program must be 1\.\.4096 8-byte"):
        landlock.apply_seccomp(program)


# ---------------------------------------------------------------- filesystem

FS_BODY = """\
ro, rw, other = PATHS
probe("read_ro", lambda: open(os.path.join(ro, "f")).read())
probe("list_ro", lambda: os.listdir(ro))
probe("write_ro", lambda: open(os.path.join(ro, "f"), "a").write("x"))
probe("create_ro", lambda: open(os.path.join(ro, "new-" + TAG), "x").close())
probe("mkdir_ro", lambda: os.mkdir(os.path.join(ro, "dir-" + TAG)))
probe("create_rw", lambda: open(os.path.join(rw, "new-" + TAG), "x").write("x"))
probe("write_rw", lambda: open(os.path.join(rw, "f"), "a").write("x"))
probe("truncate_rw", lambda: os.truncate(os.path.join(rw, "f"), 0))
probe("mkdir_rw", lambda: os.mkdir(os.path.join(rw, "dir-" + TAG)))
probe("rename_rw", lambda: os.rename(os.path.join(rw, "new-" + TAG),
                                     os.path.join(rw, "dir-" + TAG, "moved")))
probe("delete_rw", lambda: os.remove(os.path.join(rw, "dir-" + TAG, "moved")))
probe("rmdir_rw", lambda: os.rmdir(os.path.join(rw, "dir-" + TAG)))
probe("read_ro_file", lambda: open(RO_FILE).read())
probe("write_ro_file", lambda: open(RO_FILE, "a").write("x"))
probe("write_rw_file", lambda: open(RW_FILE, "a").write("x"))
probe("truncate_rw_file", lambda: os.truncate(RW_FILE, 0))
probe("write_devnull", lambda: open("/dev/null", "w").write("x"))
probe("read_other", lambda: open(os.path.join(other, "secret")).read())
probe("create_other", lambda: open(os.path.join(other, "new-" + TAG), "x").close())
probe("list_root", lambda: os.listdir("/root"))
probe("read_etc", lambda: open(ETC_FILE).read())
"""


@live
@pytest.mark.parametrize("python", interpreters())
def test_filesystem_allow_list(python: str, tmp_path: Path,
                               tmp_path_factory: pytest.TempPathFactory) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("ro data")
    (rw / "f").write_text("rw data")
    other = tmp_path_factory.mktemp("outside")
    (other / "secret").write_text("host secret")
    files = tmp_path_factory.mktemp("files")
    ro_file, rw_file = files / "ro_file", files / "rw_file"
    ro_file.write_text("ro file")
    rw_file.write_text("rw file")
    etc = next(p for p in ("/etc/hostname", "/etc/passwd") if os.path.exists(p))
    body = (f"PATHS = {(str(ro), str(rw), str(other))!r}\nRO_FILE = {str(ro_file)!r}\n"
            f"RW_FILE = {str(rw_file)!r}\nETC_FILE = {etc!r}\n" + FS_BODY)

    canary = run(body, None, python=python, tag="canary")
    assert set(canary.values()) == {"ok"}, canary
    before = {p: p.read_text() for p in (ro / "f", ro_file, other / "secret")}

    rules = {"read_only": [str(ro), str(ro_file), str(tmp_path / "missing")],
             "read_write": [str(rw), str(rw_file), "/dev/null"]}
    got = run(body, rules, python=python, tag="sandboxed")
    assert got.pop("abi") == str(ABI)
    denied = {"write_ro", "create_ro", "mkdir_ro", "write_ro_file", "read_other",
              "create_other", "list_root", "read_etc"}
    assert got == {name: "EACCES" if name in denied else "ok" for name in canary}
    # The host side agrees: nothing appeared where writing was denied.
    assert not (ro / "new-sandboxed").exists() and not (ro / "dir-sandboxed").exists()
    assert not (other / "new-sandboxed").exists()
    assert {p: p.read_text() for p in before} == before
    assert not (rw / "new-sandboxed").exists() and (rw / "f").read_text() == ""


# ---------------------------------------------------------------- execution

EXEC_BODY = """\
probe("exec_true", lambda: subprocess.run(["/usr/bin/true"], check=True))
"""
SYSTEM = ["/usr", "/bin", "/lib", "/lib64"]


@live
def test_execute_needs_read_exec() -> None:
    assert run(EXEC_BODY, None) == {"exec_true": "ok"}
    allowed = run(EXEC_BODY, {"read_only": [], "read_write": [], "read_exec": SYSTEM})
    assert allowed == {"abi": str(ABI), "exec_true": "ok"}
    denied = run(EXEC_BODY, {"read_only": SYSTEM, "read_write": []})
    assert denied == {"abi": str(ABI), "exec_true": "EACCES"}


# ---------------------------------------------------------------- network

TCP_BODY = """\
def connect():  # no create_connection: getaddrinfo reads /etc, which Landlock denies here
    with socket.socket() as s:
        s.settimeout(5)
        s.connect(("127.0.0.1", PORT))
def bind():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
probe("tcp_connect", connect)
probe("tcp_bind", bind)
"""


@live
@tcp
def test_deny_tcp_blocks_connect_and_bind() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        body = f"PORT = {listener.getsockname()[1]}\n" + TCP_BODY
        assert run(body, None) == {"tcp_connect": "ok", "tcp_bind": "ok"}
        got = run(body, {"read_only": [], "read_write": []})
        assert got == {"abi": str(ABI), "tcp_connect": "EACCES", "tcp_bind": "EACCES"}
        allowed = run(body, {"read_only": [], "read_write": [], "deny_tcp": False})
        assert allowed == {"abi": str(ABI), "tcp_connect": "ok", "tcp_bind": "ok"}


# ---------------------------------------------------------------- scoping

SCOPE_BODY = """\
def abstract():
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(NAME)
probe("signal_outside", lambda: os.kill(PID, signal.SIGCONT))
probe("signal_self", lambda: os.kill(os.getpid(), 0))
probe("abstract_unix", abstract)
"""


@live
@scoping
def test_scoping_blocks_signals_and_abstract_sockets() -> None:
    name = f"\0offload-landlock-test-{os.getpid()}"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(name)
            server.listen(8)
            body = f"PID = {sleeper.pid}\nNAME = {name!r}\n" + SCOPE_BODY
            ok = {"signal_outside": "ok", "signal_self": "ok", "abstract_unix": "ok"}
            assert run(body, None) == ok
            got = run(body, {"read_only": [], "read_write": []})
            assert got == {"abi": str(ABI), "signal_outside": "EPERM", "signal_self": "ok",
                           "abstract_unix": "EPERM"}
            unscoped = run(body, {"read_only": [], "read_write": [], "scope_signals": False,
                                  "scope_abstract_unix": False})
            assert unscoped == {"abi": str(ABI), **ok}
        assert sleeper.poll() is None  # SIGCONT left it running
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------- seccomp

SECCOMP_BODY = """\
def make(family):
    socket.socket(family, socket.SOCK_STREAM).close()
probe("inet_before", lambda: make(socket.AF_INET))
landlock.apply_seccomp(SECCOMP)
probe("inet_after", lambda: make(socket.AF_INET))
probe("inet6_after", lambda: make(socket.AF_INET6))
probe("unix_after", lambda: make(socket.AF_UNIX))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"),
                    reason="build_filter knows x86_64 and aarch64 only")
def test_apply_seccomp_denies_ip_sockets() -> None:
    canary = run(SECCOMP_BODY.replace("landlock.apply_seccomp(SECCOMP)", "pass"), None)
    assert set(canary.values()) == {"ok"}, canary
    got = run(SECCOMP_BODY, None, seccomp=build_filter())
    assert got == {"inet_before": "ok", "inet_after": "EAFNOSUPPORT",
                   "inet6_after": "EAFNOSUPPORT", "unix_after": "ok"}


@live
def test_landlock_then_seccomp_as_the_helper_does(tmp_path: Path) -> None:
    body = SECCOMP_BODY + 'probe("read_tmp", lambda: os.listdir(ROOT))\n'
    body = f"ROOT = {str(tmp_path)!r}\n" + body
    got = run(body, {"read_only": [], "read_write": []}, seccomp=build_filter())
    assert got == {"abi": str(ABI), "inet_before": "ok", "inet_after": "EAFNOSUPPORT",
                   "inet6_after": "EAFNOSUPPORT", "unix_after": "ok", "read_tmp": "EACCES"}


OLD_ABI_BODY = """\
if RESTRICT:
    landlock.abi_version = lambda: ABI
    print("abi", landlock.restrict(read_only=[RO], read_write=["/nonexistent/rw"]))
probe("read", lambda: open(os.path.join(RO, "f")).read())
probe("write", lambda: open(os.path.join(RO, "f"), "a").write("x"))
probe("list_root", lambda: os.listdir("/root"))
"""


@live
@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5, 6])
def test_older_abis_build_rulesets_the_kernel_accepts(abi: int, tmp_path: Path) -> None:
    """Rulesets sized for an older ABI (8 or 16 bytes) still confine on this kernel."""
    if abi > ABI:
        pytest.skip(f"kernel offers ABI {ABI}")
    (tmp_path / "f").write_text("data")
    body = f"RO = {str(tmp_path)!r}\nABI = {abi}\n" + OLD_ABI_BODY
    canary = run("RESTRICT = False\n" + body, None)
    assert canary == {"read": "ok", "write": "ok", "list_root": "ok"}
    got = run("RESTRICT = True\n" + body, None)
    assert got == {"abi": str(abi), "read": "ok", "write": "EACCES", "list_root": "EACCES"}
