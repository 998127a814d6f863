"""The `topology` fixture: fresh namespaces per test, removed pass or fail; skipped, with
the reason printed, where namespaces with nftables NAT cannot be built."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.nat.netns import Topology, available, sweep_stale


@pytest.fixture(scope="session")
def netns_unavailable() -> str | None:
    """Why NAT tests cannot run here (None when they can); sweeps dead runs' leftovers."""
    why = available()
    if why is None:
        gone = sweep_stale()
        if gone:
            print(f"removed namespaces left by dead runs: {gone}")
    return why


@pytest.fixture
def topology(netns_unavailable: str | None) -> Iterator[Topology]:
    """A Topology (see netns.py), closed after the test whatever its outcome."""
    if netns_unavailable is not None:
        print(f"skipping NAT test: {netns_unavailable}")
        pytest.skip(netns_unavailable)
    with Topology() as t:
        yield t
