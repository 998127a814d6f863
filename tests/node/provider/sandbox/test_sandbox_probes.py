"""Every escape probe is blocked in the sandbox, and escapes without it (the canary)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.provider.sandbox.check import TIER_B_EXEMPT, run_plain, run_sandboxed, verdict
from node.provider.sandbox.probes import PROBES, Probe, ProbeContext
from protocol import Identity
from tests.node.conftest import sandbox_missing


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ProbeContext]:
    key = tmp_path / "identity.key"
    key.write_bytes(Identity.generate().seed)
    key.chmod(0o600)
    context = ProbeContext(key_file=key, runtime_dir=_runtime_dir(),
                           daemon_pid=os.getpid())
    try:
        yield context
    finally:
        context.close()


def _runtime_dir() -> Path:
    from node.provider.sandbox.runtime import runtime_root

    return runtime_root() / "python3"


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
async def test_probe_is_blocked_inside_the_sandbox(sandbox: object, ctx: ProbeContext,
                                                   probe: Probe) -> None:
    run = await run_sandboxed(sandbox, probe, ctx)  # type: ignore[arg-type]
    result, detail = verdict(probe, ctx, run)
    if sandbox.tier == "B" and probe.name in TIER_B_EXEMPT:  # type: ignore[attr-defined]
        assert result == "escaped", "tier B has no network namespace: the probe must see it"
        return
    assert result == "blocked", f"{probe.name}: {detail}\n{run.stdout}"


@pytest.mark.parametrize("probe", PROBES, ids=lambda p: p.name)
def test_canary_the_same_probe_escapes_without_the_sandbox(ctx: ProbeContext, probe: Probe,
                                                           tmp_path: Path) -> None:
    if sandbox_missing():
        pytest.skip(str(sandbox_missing()))
    run = run_plain(probe, ctx, cwd=tmp_path)
    result, detail = verdict(probe, ctx, run)
    assert result == "escaped", f"{probe.name} cannot catch an escape: {detail}\n{run.stdout}"


def test_a_probe_that_crashes_counts_as_an_escape(ctx: ProbeContext, tmp_path: Path) -> None:
    broken = Probe("broken", "raise RuntimeError('no evidence')\n", lambda c, r: False)
    run = run_plain(broken, ctx, cwd=tmp_path)
    assert verdict(broken, ctx, run)[0] == "escaped"
