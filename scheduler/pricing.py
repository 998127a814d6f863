"""Linear pricing: a start fee plus rates per CPU-second, GPU-second, GB-second of reserved
memory and GB transferred, with a minimum charge. All amounts are integer micro-credits."""

from __future__ import annotations

import math

from protocol import Price, Resources
from protocol.limits import MICRO as MICRO  # micro-credits per credit, defined once

GB = 1_000_000_000
COEFFICIENTS = ("start", "per_cpu_second", "per_gpu_second", "per_gb_second",
                "per_gb_transfer", "minimum")


def total(price: Price, *, cpu_s: float, gpu_s: float, gb_s: float, gb: float) -> int:
    variable = (price.per_cpu_second * cpu_s + price.per_gpu_second * gpu_s
                + price.per_gb_second * gb_s + price.per_gb_transfer * gb)
    return max(price.minimum, price.start + math.ceil(variable))


def max_charge(price: Price, resources: Resources, *, input_bytes: int) -> int:
    """The most a job can cost: every resource used to its limit for its whole timeout,
    its inputs, and outputs as large as its work dir."""
    seconds = resources.max_seconds
    return total(price, cpu_s=resources.cpus * seconds, gpu_s=resources.gpus * seconds,
                 gb_s=resources.memory_mb / 1024 * seconds,
                 gb=(input_bytes + resources.disk_mb * 2**20) / GB)


def charge(price: Price, resources: Resources, *, cpu_s: float, wall_s: float,
           bytes_in: int, bytes_out: int, quoted: int) -> int:
    """What a finished job costs from measured usage; never above what was quoted."""
    wall = min(wall_s, float(resources.max_seconds))
    cpu = min(cpu_s, resources.cpus * wall)
    amount = total(price, cpu_s=cpu, gpu_s=resources.gpus * wall,
                   gb_s=resources.memory_mb / 1024 * wall, gb=(bytes_in + bytes_out) / GB)
    return min(amount, quoted)


def over_caps(price: Price, caps: Price) -> list[str]:
    """The coefficients of `price` above the requester's per-coefficient caps."""
    return [name for name in COEFFICIENTS if getattr(price, name) > getattr(caps, name)]


def credits(micro: int) -> str:
    return f"{micro / MICRO:.6f}"
