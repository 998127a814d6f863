"""The `topology` fixture: a fresh set of namespaces per test, removed pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.nat.topology import Topology, sweep_stale, unavailable

_checked: list[str | None] = []


@pytest.fixture
def topology() -> Iterator[Topology]:
    if not _checked:
        _checked.append(unavailable())
        sweep_stale()
    why = _checked[0]
    if why is not None:
        print(f"skipping NAT test: {why}")
        pytest.skip(why)
    with Topology() as t:
        yield t
