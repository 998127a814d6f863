"""NVIDIA GPUs through pynvml, and what a sandbox must expose for an assigned one."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

NVIDIA_MAJOR = 195
CONTROL_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
LIB_PREFIXES = ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so",
                "libnvidia-nvvm.so", "libcudadebugger.so", "libnvidia-gpucomp.so")


@dataclasses.dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    minor: int
    uuid: str
    name: str
    memory_mb: int
    compute_capability: str
    driver: str

    @property
    def device_node(self) -> str:
        return f"/dev/nvidia{self.minor}"


def discover() -> list[Gpu]:
    """GPUs pynvml reports; [] (and one log line) without a driver or a GPU."""
    try:
        import pynvml
    except ImportError:
        log.debug("pynvml is not installed")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        log.debug("no NVIDIA driver (%s)", exc)
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor_cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(Gpu(index=i, minor=int(pynvml.nvmlDeviceGetMinorNumber(h)),
                            uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                            name=_text(pynvml.nvmlDeviceGetName(h)),
                            memory_mb=int(pynvml.nvmlDeviceGetMemoryInfo(h).total) >> 20,
                            compute_capability=f"{major}.{minor_cc}", driver=driver))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def char_major(name: str, proc_devices: Path = Path("/proc/devices")) -> int | None:
    """The character-device major registered under `name` (nvidia-uvm's is dynamic)."""
    try:
        lines = proc_devices.read_text().splitlines()
    except OSError:
        return None
    in_char = False
    for line in lines:
        if line.startswith("Character devices"):
            in_char = True
        elif line.startswith("Block devices"):
            in_char = False
        elif in_char:
            parts = line.split()
            if len(parts) == 2 and parts[1] == name:
                return int(parts[0])
    return None


def driver_libraries(ldconfig_output: str | None = None) -> list[str]:
    """Paths of the driver's user-space libraries, from `ldconfig -p`."""
    if ldconfig_output is None:
        try:
            ldconfig_output = subprocess.run(["ldconfig", "-p"], capture_output=True,
                                             text=True, check=False).stdout
        except OSError:
            return []
    found = []
    for line in ldconfig_output.splitlines():
        name, sep, path = line.strip().partition(" => ")
        if sep and name.split(" ")[0].startswith(LIB_PREFIXES):
            found.append(path.strip())
    return sorted(set(found))


def device_rules(gpus: list[Gpu], proc_devices: Path = Path("/proc/devices")) -> list[str]:
    """devices-cgroup rules for the assigned GPUs and the control devices."""
    rules = [f"c {NVIDIA_MAJOR}:{g.minor} rw" for g in gpus]
    rules += [f"c {NVIDIA_MAJOR}:255 rw", f"c {NVIDIA_MAJOR}:254 rw"]
    uvm = char_major("nvidia-uvm", proc_devices)
    if uvm is not None:
        rules.append(f"c {uvm}:* rw")
    return rules
