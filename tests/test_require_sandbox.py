"""With OFFLOAD_REQUIRE_SANDBOX=1 a skipped test fails the run (CI must prove tier A)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """\
import pytest

def test_needs_the_sandbox():
    pytest.skip("bubblewrap is not installed")
"""


def run(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tests").mkdir(exist_ok=True)
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / "tests" / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "OFFLOAD_REQUIRE_SANDBOX": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_skip_fails_when_the_sandbox_is_required(tmp_path: Path) -> None:
    res = run(tmp_path, "1")
    assert res.returncode == 1, res.stdout
    assert "1 failed" in res.stdout and "skipped while OFFLOAD_REQUIRE_SANDBOX=1" in res.stdout


def test_canary_the_same_skip_passes_when_not_required(tmp_path: Path) -> None:
    res = run(tmp_path, "0")
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout
