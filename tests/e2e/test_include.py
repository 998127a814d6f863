"""Issue #17, point 7: local code travels. A @remote function in a script that imports a
sibling module and a small local package fails on a provider without `include` (the
canary) and works with it or with include_imports (which says what it shipped); `offload
submit --include` alike; a job needing a package the provider's runtime lacks is refused
naming it, before any job runs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Network, _env

SCRIPT = textwrap.dedent("""\
    import json
    import sys

    import helper
    from node.api.remote import remote
    from node.errors import NeedsUnmet


    def work(x):
        return helper.double(x)


    out = {}
    try:
        out["plain"] = remote(timeout=60, echo=False)(work).remote(1)
    except Exception as exc:
        out["plain"] = f"{type(exc).__name__}: {exc}"
    out["include"] = remote(timeout=60, include=["helper.py", "mypkg"])(work).remote(21)
    auto = remote(timeout=60, include_imports=True, packages=["numpy>=2"])(work)
    out["auto"] = list(auto.map([1, 2, 3]))
    out["auto_shipped"] = [p.name for p in auto.shipped]
    try:
        remote(timeout=60, include_imports=True, packages=["no_such_package_xyz"])(work
                                                                                   ).remote(1)
        out["missing"] = "ran"
    except NeedsUnmet as exc:
        out["missing"] = str(exc)
    print(json.dumps(out), file=sys.stderr)
""")
MAIN = "import sys\nimport helper\nprint(helper.double(int(sys.argv[1])))\n"


def _project(root: Path) -> Path:
    (root / "mypkg" / "sub").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("from mypkg.sub.deep import TWO\n")
    (root / "mypkg" / "sub" / "__init__.py").write_text("")
    (root / "mypkg" / "sub" / "deep.py").write_text("TWO = 2\n")
    (root / "helper.py").write_text("import mypkg\n\n\ndef double(x):\n"
                                    "    return x * mypkg.TWO\n")
    (root / "app.py").write_text(SCRIPT)
    (root / "main.py").write_text(MAIN)
    return root


def _jobs_run(p: dict[str, object]) -> int:
    """Receipts the provider keeps: one per job it ran."""
    log = Path(str(p["log"]))
    try:
        db = sqlite3.connect(f"file:{log.with_name(log.stem) / 'ledger.db'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM receipts").fetchone()[0])
        finally:
            db.close()
    except sqlite3.OperationalError:  # no ledger yet
        return 0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("include"))
    try:
        network.start_provider()
        yield network
    finally:
        network.close()


def test_remote_functions_ship_local_modules_and_packages(net: Network) -> None:
    src = _project(net.root / "src")
    env = _env() | {"OFFLOAD_HOME": str(net.root / "api"),
                    "OFFLOAD_BOOTSTRAP": net.providers[0]["addr"], "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "app.py"], cwd=src, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stderr.strip().splitlines()[-1])
    assert out["plain"].startswith("RemoteModuleNotFoundError: ModuleNotFoundError: No module "
                                   "named 'helper'"), out["plain"]  # the canary: no include
    assert "include=[...]" in out["plain"]
    assert out["include"] == 42
    assert out["auto"] == [2, 4, 6]
    assert out["auto_shipped"] == ["helper.py", "mypkg"]
    assert "offload: work ships its local imports: helper.py, mypkg/" in proc.stderr
    assert out["missing"].startswith("no provider meets the job's needs: no provider's "
                                     "python3 runtime has package no_such_package_xyz")
    assert _jobs_run(net.providers[0]) == 1 + 1 + 3  # the refused one never ran


def test_submit_include_and_needs_package(net: Network) -> None:
    src = _project(net.root / "cli")
    boot = ["--bootstrap", net.providers[0]["addr"], "--timeout", "60", "--json"]
    bare = net.offload("submit", str(src / "main.py"), "4", *boot, home="cli")
    assert bare.returncode == 1 and "No module named 'helper'" in json.loads(
        bare.stdout)["stderr"]  # the canary
    shipped = net.offload("submit", str(src / "main.py"), "4", "--include",
                          str(src / "helper.py"), "--include", str(src / "mypkg"), *boot,
                          "--needs-package", "torch", home="cli")
    assert shipped.returncode == 0, shipped.stderr
    assert json.loads(shipped.stdout)["stdout"] == "8\n"
    before = _jobs_run(net.providers[0])
    refused = net.offload("submit", str(src / "main.py"), "4", "--needs-package",
                          "no_such_package_xyz", *boot, home="cli")
    assert refused.returncode != 0
    assert "no_such_package_xyz" in refused.stdout + refused.stderr
    assert _jobs_run(net.providers[0]) == before
    bad = net.offload("submit", str(src / "main.py"), "--include", str(src / "MAIN.txt"),
                      *boot, home="cli")
    assert bad.returncode != 0 and "--include" in bad.stdout + bad.stderr
