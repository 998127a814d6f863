"""A provider refuses a spec beyond what its machine has, naming what and how much."""

from __future__ import annotations

import os
import re

import pytest

from node.errors import UserError
from node.provider.admission import BeyondCapacity, Capacity
from protocol import Resources

HERE = Capacity(cpus=2, memory_mb=24 * 1024, gpus=0)


@pytest.mark.parametrize(("resources", "message"), [
    (Resources(cpus=99), "cpus: the job asks for 99, this provider has 2"),
    (Resources(memory_mb=100_000 * 1024),
     "memory: the job asks for 102400000 MB, this provider has 24576 MB"),
    (Resources(disk_mb=30_000), "disk: the job asks for 30000 MB, this provider has 24576 MB"),
    (Resources(gpus=1), "GPUs: the job asks for 1, this provider has 0"),
])
def test_a_spec_beyond_the_machine_is_refused_by_name(resources: Resources,
                                                      message: str) -> None:
    with pytest.raises(BeyondCapacity, match=re.escape(message) + "; ask for less"):
        HERE.check(resources)


def test_a_spec_that_fits_passes_at_the_edge() -> None:
    HERE.check(Resources(cpus=2, memory_mb=24 * 1024, disk_mb=24 * 1024, gpus=0))
    assert issubclass(BeyondCapacity, UserError)


def test_the_host_capacity_is_this_machine() -> None:
    host = Capacity.of_host(gpus=3)
    assert host.cpus == os.cpu_count() and host.gpus == 3
    assert host.memory_mb * 2**20 <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with pytest.raises(BeyondCapacity):
        host.check(Resources(cpus=host.cpus + 1))
