"""Local code that travels with a job (`include`): a module file as itself, a package
folder as a deterministic zip (the same content, the same digest: the provider's input
cache keeps it), put on sys.path in the sandbox by a small launcher that then runs the
job's script as __main__; `local_imports` finds what a module imports from here."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from node.errors import UserError

LAUNCHER_NAME = "_offload_main.py"
ZIP_PREFIX = "_offload_pkg_"
OWN = frozenset({"node", "protocol", "scheduler", "ledger"})
"""offload's own packages: never shipped (the sandbox needs none of them)."""
LAUNCHER = f'''\
"""offload: put the job's shipped packages on sys.path, then run its script."""
import glob
import os
import runpy
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [here, *sorted(glob.glob(os.path.join(here, "{ZIP_PREFIX}*.zip")))]
sys.argv = sys.argv[1:]
runpy.run_path(os.path.join(here, sys.argv[0]), run_name="__main__")
'''
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_dir: Path | None = None


def _staging() -> Path:
    global _dir
    if _dir is None:
        _dir = Path(tempfile.mkdtemp(prefix="offload-include-"))
        atexit.register(shutil.rmtree, _dir, True)
    return _dir


def pack(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The input files for `paths`: a .py file as is, a folder as `_offload_pkg_NAME.zip`
    (sorted entries, fixed times and modes, no __pycache__). UserError names a bad path."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.suffix == ".py":
            out.append(path)
        elif path.is_dir():
            out.append(_zip(path))
        else:
            raise UserError(f"include {path}: give a .py module or a package folder "
                            "(it does not exist or is neither)")
    return out


def _zip(folder: Path) -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in
                   p.relative_to(folder).parts and p.suffix not in (".pyc", ".pyo"))
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    where = _staging() / digest.hexdigest()[:16]
    target = where / f"{ZIP_PREFIX}{folder.name}.zip"
    if target.exists():
        return target
    where.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            info = zipfile.ZipInfo(f"{folder.name}/{p.relative_to(folder).as_posix()}",
                                   date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, p.read_bytes())
    tmp.replace(target)
    return target


def launcher() -> Path:
    """The launcher script (the job's entrypoint when it ships packages)."""
    path = _staging() / LAUNCHER_NAME
    if not path.exists():
        path.write_text(LAUNCHER)
    return path


def installed(module: Any) -> bool:
    """Part of an installed distribution (site-packages) or the standard library."""
    path = getattr(module, "__file__", None)
    if path is None:
        return True
    parts = Path(path).parts
    return "site-packages" in parts or "dist-packages" in parts or path.startswith(
        sys.base_prefix)


def local_imports(module: ModuleType) -> list[Path]:
    """The local modules and packages `module` imports (directly, or through those it
    imports), as paths for `pack`: not installed, not the standard library, not offload's
    own; a submodule ships its whole top-level package."""
    seen: set[str] = {module.__name__}
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        current = todo.pop()
        for top in _referenced(vars(current).values()):
            if top.__name__ in seen:
                continue
            seen.add(top.__name__)
            path = _source(top)
            if path is None:
                continue
            found[top.__name__] = path
            todo.append(top)
            todo.extend(m for name, m in list(sys.modules.items())
                        if name.startswith(top.__name__ + ".") and isinstance(m, ModuleType))
    return [found[name] for name in sorted(found)]


def _referenced(values: Iterable[Any]) -> list[ModuleType]:
    """The top-level modules of what a namespace holds: modules, and the modules where
    its functions and classes were defined."""
    tops: list[ModuleType] = []
    for value in values:
        name = value.__name__ if isinstance(value, ModuleType) else getattr(
            value, "__module__", None) if callable(value) else None
        if not isinstance(name, str) or name in ("__main__", "builtins"):
            continue
        top = sys.modules.get(name.split(".")[0])
        if top is not None and top.__name__ not in OWN:
            tops.append(top)
    return tops


def _source(top: ModuleType) -> Path | None:
    """Where a local top-level module lives: its package folder or its .py file."""
    if installed(top) or top.__name__ in sys.builtin_module_names:
        return None
    file = Path(top.__file__ or "")
    if hasattr(top, "__path__"):
        return file.parent if file.name == "__init__.py" else None
    return file if file.suffix == ".py" else None
