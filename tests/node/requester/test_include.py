"""include.py: modules as themselves, packages as deterministic zips, the launcher that puts
them on sys.path (run for real here), and local_imports finding what a module imports."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.errors import UserError
from node.requester.include import LAUNCHER_NAME, ZIP_PREFIX, launcher, local_imports, pack


def _project(root: Path) -> Path:
    (root / "mypkg" / "sub").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("from mypkg.sub.deep import TWO\n")
    (root / "mypkg" / "sub" / "__init__.py").write_text("")
    (root / "mypkg" / "sub" / "deep.py").write_text("TWO = 2\n")
    (root / "helper.py").write_text("import mypkg\n\ndef double(x):\n    return x * mypkg.TWO\n")
    (root / "main.py").write_text("import sys\nimport helper\nprint(helper.double(int("
                                  "sys.argv[1])), sys.argv[0])\n")
    return root


def test_a_package_zips_the_same_bytes_whatever_its_times_and_caches(tmp_path: Path) -> None:
    root = _project(tmp_path / "a")
    (root / "mypkg" / "__pycache__").mkdir()
    (root / "mypkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    [first] = pack([root / "mypkg"])
    assert first.name == f"{ZIP_PREFIX}mypkg.zip"
    data = first.read_bytes()
    assert b"__pycache__" not in data
    copy = shutil.copytree(root, tmp_path / "b", ignore=shutil.ignore_patterns("__pycache__"))
    stamp = time.time() - 86_400
    for p in Path(copy).rglob("*"):
        os.utime(p, (stamp, stamp))
    [second] = pack([Path(copy) / "mypkg"])
    assert second.read_bytes() == data
    (Path(copy) / "mypkg" / "sub" / "deep.py").write_text("TWO = 3\n")
    [changed] = pack([Path(copy) / "mypkg"])
    assert changed.read_bytes() != data and changed != second


def test_a_module_ships_as_itself_and_bad_paths_are_named(tmp_path: Path) -> None:
    root = _project(tmp_path)
    assert pack([root / "helper.py"]) == [root / "helper.py"]
    (root / "notes.txt").write_text("x")
    for bad in (root / "notes.txt", root / "missing.py"):
        with pytest.raises(UserError, match=f"include {bad}"):
            pack([bad])


def test_the_launcher_runs_the_script_with_the_zips_on_sys_path(tmp_path: Path) -> None:
    root = _project(tmp_path / "src")
    job = tmp_path / "job"  # what a provider's job dir holds: flat files only
    job.mkdir()
    for path in [launcher(), root / "main.py", *pack([root / "helper.py", root / "mypkg"])]:
        shutil.copy(path, job / path.name)
    run = [sys.executable, "-I", LAUNCHER_NAME, "main.py", "21"]
    proc = subprocess.run(run, cwd=job, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["42", str(job / "main.py")]
    (job / f"{ZIP_PREFIX}mypkg.zip").unlink()  # canary: without the zip, no mypkg
    proc = subprocess.run(run, cwd=job, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "No module named 'mypkg'" in proc.stderr


def test_local_imports_finds_modules_and_packages_but_nothing_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _project(tmp_path)
    (root / "app.py").write_text("import json\nimport numpy\nfrom helper import double\n"
                                 "from node.api.remote import remote\n")
    monkeypatch.syspath_prepend(str(root))
    spec = importlib.util.spec_from_file_location("app_under_test", root / "app.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(app)
        # helper through `from helper import double`, mypkg through helper's own import
        assert local_imports(app) == [root / "helper.py", root / "mypkg"]
    finally:
        for name in ("helper", "mypkg", "mypkg.sub", "mypkg.sub.deep"):
            sys.modules.pop(name, None)
