"""The sandbox command line, and what a GPU job gets bound into it (no GPU needed)."""

from __future__ import annotations

from pathlib import Path

from node.provider.sandbox.bwrap import SECCOMP_FD_PLACEHOLDER, SandboxSpec, bwrap_argv
from node.provider.sandbox.cgroups import Limits
from node.provider.sandbox.gpu import Gpu, char_major, device_rules, driver_libraries

GPU3 = Gpu(index=1, minor=3, uuid="GPU-x", name="H200", memory_mb=143771,
           compute_capability="9.0", driver="580.1")


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = dict(
        work_dir=Path("/var/lib/offload/jobs/j/work"),
        inputs_dir=Path("/var/lib/offload/jobs/j/in"),
        runtime_paths=[Path("/opt/offload/runtimes/python3"), Path("/usr"),
                       Path("/opt/offload/runtimes/python3/lib")],
        argv=["/opt/offload/runtimes/python3/bin/python3", "job.py", "--x"],
        env={"HOME": "/work", "PATH": "/usr/bin"})
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_every_namespace_no_network_and_a_seccomp_slot() -> None:
    argv = bwrap_argv(spec(), present=lambda p: True)
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                 "--new-session", "--clearenv"):
        assert flag in argv
    assert "--share-net" not in argv
    assert argv[argv.index("--seccomp") + 1] == SECCOMP_FD_PLACEHOLDER
    assert argv[-4:] == ["--", "/opt/offload/runtimes/python3/bin/python3", "job.py", "--x"]
    assert argv[argv.index("--chdir") + 1] == "/work"


def test_only_work_is_writable_and_the_runtime_is_read_only() -> None:
    argv = bwrap_argv(spec(), present=lambda p: True)
    assert pairs(argv, "--bind") == [("/var/lib/offload/jobs/j/work", "/work")]
    ro = pairs(argv, "--ro-bind")
    assert ("/var/lib/offload/jobs/j/in", "/job") in ro
    assert ("/opt/offload/runtimes/python3", "/opt/offload/runtimes/python3") in ro
    # covered paths are not bound twice, and /usr comes from the system dirs
    assert [p for p in ro if p[0].startswith("/opt/")] == [
        ("/opt/offload/runtimes/python3", "/opt/offload/runtimes/python3")]
    assert "--dev-bind" not in argv  # no GPU, no device nodes


def test_environment_is_exactly_what_was_given() -> None:
    argv = bwrap_argv(spec(), present=lambda p: True)
    assert pairs(argv, "--setenv") == [("HOME", "/work"), ("PATH", "/usr/bin")]


def test_gpu_job_gets_only_its_device_plus_control_nodes_and_driver_libraries() -> None:
    argv = bwrap_argv(spec(gpus=[GPU3], gpu_libraries=["/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                                                      "/opt/nvidia/lib64/libnvidia-ml.so.1"]),
                      present=lambda p: True)
    devs = pairs(argv, "--dev-bind")
    assert ("/dev/nvidia3", "/dev/nvidia3") in devs
    assert all(d[0] != "/dev/nvidia0" for d in devs)
    assert {d[0] for d in devs} == {"/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm",
                                    "/dev/nvidia-uvm-tools"}
    ro = pairs(argv, "--ro-bind")
    assert ("/opt/nvidia/lib64/libnvidia-ml.so.1", "/opt/nvidia/lib64/libnvidia-ml.so.1") in ro
    assert ("/proc/driver/nvidia", "/proc/driver/nvidia") in ro
    assert argv.index("--proc") < argv.index("/proc/driver/nvidia")


def test_missing_control_nodes_are_not_bound() -> None:
    argv = bwrap_argv(spec(gpus=[GPU3]), present=lambda p: p != "/dev/nvidia-uvm-tools")
    assert "/dev/nvidia-uvm-tools" not in argv


def test_device_cgroup_rules_allow_only_the_assigned_minor(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.write_text("Character devices:\n  1 mem\n195 nvidia-frontend\n"
                       "510 nvidia-uvm\n\nBlock devices:\n  8 sd\n")
    assert char_major("nvidia-uvm", devices) == 510
    assert char_major("sd", devices) is None
    rules = device_rules([GPU3], devices)
    assert rules == ["c 195:3 rw", "c 195:255 rw", "c 195:254 rw", "c 510:* rw"]
    Limits(memory_bytes=1 << 30, pids=64, cpus=1.0, devices=tuple(rules))  # accepted as rules


def test_driver_libraries_come_from_ldconfig() -> None:
    out = ("\t1234 libs found in cache `/etc/ld.so.cache'\n"
           "\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n"
           "\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libnvidia-ml.so.1\n"
           "\tlibc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6\n")
    assert driver_libraries(out) == ["/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                                     "/usr/local/nvidia/lib64/libnvidia-ml.so.1"]
