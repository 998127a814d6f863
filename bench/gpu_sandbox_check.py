"""GPU path check, run once on a machine with an NVIDIA GPU (as root):

    python3 bench/gpu_sandbox_check.py OUT.json

pynvml telemetry, then a CUDA matmul inside the tier-A sandbox with one GPU assigned, the
same job with no GPU assigned (it must see none), and the quick escape self-test. Uses the
host's own CUDA Python environment as the job runtime.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import trio

MATMUL = """\
import time, torch
ok = torch.cuda.is_available()
print('cuda available', ok, 'devices', torch.cuda.device_count())
if ok:
    a = torch.randn(4096, 4096, device='cuda', dtype=torch.bfloat16)
    b = torch.randn(4096, 4096, device='cuda', dtype=torch.bfloat16)
    (a @ b).sum().item()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / 20
    print('device', torch.cuda.get_device_name(0))
    print('matmul_tflops', round(2 * 4096**3 / dt / 1e12, 1))
    print('checksum', float(c.float().sum().item()) != 0.0)
import os
print('dev nodes', sorted(d for d in os.listdir('/dev') if d.startswith('nvidia')))
"""


def telemetry() -> list[dict[str, Any]]:
    import pynvml

    pynvml.nvmlInit()
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(h)
            out.append({"index": i, "utilization_pct": util.gpu,
                        "temperature_c": pynvml.nvmlDeviceGetTemperature(h, 0),
                        "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000})
        return out
    finally:
        pynvml.nvmlShutdown()


async def sandboxed(sandbox: Any, name: str, gpus: list[Any]) -> dict[str, Any]:
    from node.provider.sandbox.runner import JobLimits, job_env

    limits = JobLimits(wall_s=180, memory_mb=16384, cpus=4, pids=512)
    t = time.monotonic()
    async with sandbox.job(name, limits, gpus=gpus) as job:
        job.input_path("mm.py").write_text(MATMUL)
        job.expose_input("mm.py")
        r = await job.run([str(sandbox.runtime.interpreter), "-s", "-u", "mm.py"],
                          job_env(limits))
    p = r.process
    return {"status": p.status, "exit_code": p.exit_code,
            "wall_s": round(time.monotonic() - t, 2),
            "stdout": p.stdout.decode(errors="replace"),
            "stderr": p.stderr.decode(errors="replace")[-3000:],
            "peak_memory_mb": p.peak_memory_mb}


async def main(out: Path) -> None:
    doc: dict[str, Any] = {"python": sys.version, "bwrap": shutil.which("bwrap")}

    def save() -> None:
        out.write_text(json.dumps(doc, indent=1, default=str))

    try:
        from node.provider.sandbox import gpu, runtime, users
        from node.provider.sandbox.cgroups import detect_usable
        from node.provider.sandbox.check import check
        from node.provider.sandbox.runner import Sandbox

        gpus = gpu.discover()
        doc["gpus"] = [{"index": g.index, "minor": g.minor, "name": g.name,
                        "memory_mb": g.memory_mb, "cc": g.compute_capability,
                        "driver": g.driver} for g in gpus]
        doc["telemetry"] = telemetry() if gpus else []
        doc["driver_libraries"] = gpu.driver_libraries()
        doc["device_rules"] = gpu.device_rules(gpus[:1])
        save()
        made = users.create(3)
        cg = detect_usable(base="offload-gpucheck")
        doc["cgroup_version"] = cg.version
        rt = runtime.from_interpreter(Path(sys.executable))
        doc["runtime"] = {"path": str(rt.path), "python": rt.python, "packages": rt.packages}
        sandbox = Sandbox(users=users.UserPool(made), cgroups=cg, runtime=rt, gpus=gpus)
        doc["with_gpu"] = await sandboxed(sandbox, "job-gpu-assigned", gpus[:1])
        save()
        doc["without_gpu"] = await sandboxed(sandbox, "job-gpu-none", [])
        save()
        report = await check(sandbox, key_file=None, quick=True)
        doc["self_test"] = {"tier": report.tier, "probes": report.probes,
                            "details": report.details, "startup_ms": report.startup_ms}
        cg.cleanup_stale()
        cg.remove_bases()
    except BaseException:
        doc["error"] = traceback.format_exc()
    save()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
