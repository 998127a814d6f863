"""Fixtures for tests that run the real tier-A sandbox: root, bubblewrap, job users, runtime."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from node.provider.sandbox.errors import SandboxUnavailable


def sandbox_missing() -> str | None:
    if os.geteuid() != 0:
        return "the tier-A sandbox needs root"
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed"
    try:
        from node.provider.sandbox import runtime, users

        users.lookup()
        runtime.describe()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


@pytest.fixture(params=["A", "B"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[object]:
    """The real sandbox, once per tier: A (bubblewrap) and B (Landlock, no namespaces)."""
    reason = sandbox_missing()
    if reason:
        pytest.skip(reason)
    from node.provider.sandbox import runtime, users
    from node.provider.sandbox.cgroups import detect_usable
    from node.provider.sandbox.runner import Sandbox

    cgroups = detect_usable(base=f"offload-test-{os.getpid()}")
    yield Sandbox(users=users.UserPool(users.lookup()), cgroups=cgroups,
                  runtime=runtime.describe(), tier=request.param)
    cgroups.cleanup_stale()
    cgroups.remove_bases()
