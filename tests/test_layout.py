"""Dependencies point one way: node -> scheduler, ledger, protocol; protocol -> stdlib only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"node", "protocol", "scheduler", "ledger"}
ALLOWED = {
    "protocol": {"protocol", "msgpack", "cryptography"},
    "scheduler": {"scheduler", "protocol", "numpy"},
    "ledger": {"ledger", "protocol"},
    "node": OURS | {"trio", "libp2p", "multiaddr", "platformdirs", "pynvml",
                    "prometheus_client", "cloudpickle", "numpy", "rich",
                    "msgpack"},
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package: str) -> None:
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / package).rglob("*.py")
           for m in imports(p) - ALLOWED[package]}
    assert not bad, f"forbidden imports: {sorted(bad)}"


def test_the_check_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import trio\nfrom libp2p import new_host\nimport json\n")
    assert imports(probe) - ALLOWED["protocol"] == {"trio", "libp2p"}


def test_modules_stay_small() -> None:
    big = [f"{p.relative_to(ROOT)}: {n}" for pkg in OURS for p in (ROOT / pkg).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 600]
    assert not big, f"modules over 600 lines: {big}"
