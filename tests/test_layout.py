"""The layout holds: dependencies point one way, node/ keeps its roles apart, protocol/ and
scheduler/ do no I/O, no import cycles, every package docstring maps its files.

Imports are read from the AST, relative ones resolved to absolute names, and every import
counts wherever it stands (a lazy import inside a function is still a dependency), except
those under `if TYPE_CHECKING:`, which never run.

Inside node/: only net/ imports libp2p or multiaddr; net/ reaches node only through
net/ and the shared top level (errors, home, config); provider/ and requester/ never
import each other; api/ reaches node through requester/ and that top level; nothing
imports cli/ but node/__main__.py.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
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
                    "msgpack", "torch"},
}
SHARED = {"node", "node.errors", "node.home", "node.config"}
"""node's top level that every role may use."""
NO_IO = {"socket", "ssl", "sqlite3", "subprocess", "shutil", "tempfile", "select", "selectors",
         "asyncio", "multiprocessing", "threading", "urllib", "http", "trio", "fcntl", "mmap"}
NO_IO_CALLS = {
    "open", "os.open", "os.read", "os.write", "os.remove", "os.unlink", "os.rename",
    "os.replace", "os.listdir", "os.scandir", "os.stat", "os.mkdir", "os.makedirs",
    "os.fsync", "os.getenv", "os.urandom", "time.time", "time.time_ns", "time.monotonic",
    "time.monotonic_ns", "time.perf_counter", "time.sleep", "datetime.now", "datetime.utcnow",
    "datetime.today", "date.today", "datetime.datetime.now", "datetime.date.today",
}
NO_IO_METHODS = {"read_text", "write_text", "read_bytes", "write_bytes", "iterdir", "unlink",
                 "mkdir", "touch"}


# -- reading imports ---------------------------------------------------------------------

def module_of(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = ROOT, packages: set[str] = OURS) -> dict[str, Path]:
    return {module_of(p, root): p for pkg in sorted(packages) if (root / pkg).is_dir()
            for p in sorted((root / pkg).rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def imported(path: Path, module: str | None = None,
             known: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Absolute names `path` imports; `from a import b` gives a.b where that is a module in
    `known`, else a. `module` (the file's own dotted name) resolves relative imports."""
    module = module or path.stem
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found - {"__future__", ""}


def imports(path: Path, module: str | None = None) -> set[str]:
    """Top-level packages `path` imports, outside the standard library."""
    return {m.split(".")[0] for m in imported(path, module)} - set(sys.stdlib_module_names)


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {m: imported(p, m, known) for m, p in mods.items()}


def inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# -- the rules, each a function of the import graph ---------------------------------------

def role_violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(g.items()):
        for dep in sorted(deps):
            why = _role_rule(mod, dep)
            if why:
                bad.append(f"{mod} -> {dep}: {why}")
    return bad


def _role_rule(mod: str, dep: str) -> str | None:
    if not inside(mod, "node"):
        return None
    if dep.split(".")[0] in {"libp2p", "multiaddr"} and not inside(mod, "node.net"):
        return "only node/net/ imports libp2p"
    if not inside(dep, "node"):
        return None
    if inside(dep, "node.cli") and not inside(mod, "node.cli") and mod != "node.__main__":
        return "nothing imports node/cli/"
    for a, b in (("node.provider", "node.requester"), ("node.requester", "node.provider")):
        if inside(mod, a) and inside(dep, b):
            return "provider/ and requester/ never import each other"
    if inside(mod, "node.api") and not (inside(dep, "node.api") or inside(dep, "node.requester")
                                        or dep in SHARED):
        return "api/ reaches node only through requester/"
    if inside(mod, "node.net") and not (inside(dep, "node.net") or dep in SHARED):
        return "net/ is below the roles: it imports only net/ and node's shared top level"
    return None


def io_violations(path: Path, module: str) -> list[str]:
    """Imports of I/O modules and calls that touch files, the environment or the clock."""
    bad = [f"{module}: imports {m}" for m in sorted(imported(path, module))
           if m.split(".")[0] in NO_IO]
    time_names = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in {"time", "os", "datetime"}:
            time_names |= {a.asname or a.name for a in node.names
                           if f"{node.module}.{a.name}" in NO_IO_CALLS}
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            method = name.rpartition(".")[2]
            if name in NO_IO_CALLS or name in time_names or (
                    "." in name and method in NO_IO_METHODS):
                bad.append(f"{module}:{node.lineno}: calls {name}()")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "os.environ":
            bad.append(f"{module}:{node.lineno}: reads os.environ")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, set()) & g.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.get(v, set()):
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def unmapped(package_dir: Path) -> list[str]:
    """Files and subpackages of `package_dir` its __init__ docstring does not name."""
    doc = ast.get_docstring(ast.parse((package_dir / "__init__.py").read_text())) or ""
    names = [f"{p.name}" for p in sorted(package_dir.glob("*.py"))
             if p.name not in {"__init__.py", "__main__.py"}]
    names += [f"{p.name}/" for p in sorted(package_dir.iterdir())
              if p.is_dir() and (p / "__init__.py").exists()]
    return [n for n in names if not re.search(r"(?<![\w./])" + re.escape(n) + r"(?!\w)", doc)]


def packages(root: Path = ROOT) -> list[Path]:
    return [p.parent for pkg in sorted(OURS) for p in sorted((root / pkg).rglob("__init__.py"))]


# -- the tests -------------------------------------------------------------------------

@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependencies_point_one_way(package: str) -> None:
    bad = {f"{p.relative_to(ROOT)}: {m}" for m, p in modules().items() if inside(m, package)
           for m in imports(p, m) - ALLOWED[package]}
    assert not bad, f"forbidden imports: {sorted(bad)}"


def test_node_keeps_its_roles_apart() -> None:
    bad = role_violations(graph())
    assert not bad, "role rules broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["protocol", "scheduler"])
def test_pure_packages_do_no_io(package: str) -> None:
    bad = [v for m, p in modules().items() if inside(m, package) for v in io_violations(p, m)]
    assert not bad, "I/O in a pure package:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("package", [str(p.relative_to(ROOT)) for p in packages()])
def test_every_package_docstring_maps_its_files(package: str) -> None:
    missing = unmapped(ROOT / package)
    assert not missing, f"{package}/__init__.py does not name: {missing}"


def test_modules_stay_small() -> None:
    big = [f"{p.relative_to(ROOT)}: {n}" for pkg in OURS for p in (ROOT / pkg).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 600]
    assert not big, f"modules over 600 lines: {big}"


# -- canaries: each check catches what it is there for ------------------------------------

def test_the_check_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import trio\nfrom libp2p import new_host\nimport json\n")
    assert imports(probe) - ALLOWED["protocol"] == {"trio", "libp2p"}


def _tree(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in OURS:
        for d in [root / pkg, *(p for p in (root / pkg).rglob("*") if p.is_dir())]:
            d.mkdir(parents=True, exist_ok=True)
            (d / "__init__.py").touch()
    return graph(root)


def test_relative_imports_resolve_to_absolute_names(tmp_path: Path) -> None:
    g = _tree(tmp_path, {"node/provider/daemon.py": "from . import cache\nfrom ..net import host\n"
                         "from ..requester.holds import HoldBook\nfrom .sandbox import runner\n",
                         "node/provider/cache.py": "", "node/net/host.py": "",
                         "node/requester/holds.py": "", "node/provider/sandbox/runner.py": "",
                         "node/api/__init__.py": "from .requester import Requester\n",
                         "node/api/requester.py": ""})
    assert g["node.provider.daemon"] == {"node.provider.cache", "node.net.host",
                                         "node.requester.holds", "node.provider.sandbox.runner"}
    assert g["node.api"] == {"node.api.requester"}


def test_the_role_rules_can_fail(tmp_path: Path) -> None:
    g = _tree(tmp_path, {
        "node/provider/daemon.py": "def later():\n    from ..requester import holds\n",
        "node/requester/holds.py": "import libp2p\n",
        "node/requester/plan.py": "from node.cli.main import main\n",
        "node/api/requester.py": "from node.net.client import open_client\n"
                                 "from node.requester import holds\nfrom node import errors\n",
        "node/net/transfer.py": "from node.provider.cache import PartialFile\n",
        "node/net/client.py": "import multiaddr\nfrom node.errors import UserError\n",
        "node/__main__.py": "from node.cli.main import main\n",
        "node/cli/main.py": "from node.cli import jobs\n",
        "node/errors.py": "", "node/provider/cache.py": "",
    })
    assert role_violations(g) == [
        "node.api.requester -> node.net.client: api/ reaches node only through requester/",
        "node.net.transfer -> node.provider.cache: net/ is below the roles: it imports only "
        "net/ and node's shared top level",
        "node.provider.daemon -> node.requester.holds: provider/ and requester/ never import "
        "each other",
        "node.requester.holds -> libp2p: only node/net/ imports libp2p",
        "node.requester.plan -> node.cli.main: nothing imports node/cli/",
    ]


def test_the_io_check_can_fail(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\nimport sqlite3\nfrom subprocess import run\nfrom time import monotonic\n"
        "from pathlib import Path\nfrom datetime import datetime\n"
        "def f(p: Path) -> None:\n"
        "    open('x')\n    p.read_text()\n    os.write(1, b'')\n    monotonic()\n"
        "    datetime.now()\n    os.environ['A']\n    Path('a').write_bytes(b'')\n"
        "    len('a'.split())\n")
    assert io_violations(probe, "probe") == [
        "probe: imports sqlite3", "probe: imports subprocess", "probe:8: calls open()",
        "probe:9: calls p.read_text()", "probe:10: calls os.write()",
        "probe:11: calls monotonic()", "probe:12: calls datetime.now()",
        "probe:13: reads os.environ", "probe:14: calls Path('a').write_bytes()"]


def test_the_cycle_check_can_fail(tmp_path: Path) -> None:
    g = _tree(tmp_path, {"node/cli/main.py": "from node.cli import jobs\n",
                         "node/cli/jobs.py": "def later():\n    from . import main\n",
                         "scheduler/a.py": "import scheduler.a\n",
                         "ledger/b.py": "from typing import TYPE_CHECKING\n"
                                        "if TYPE_CHECKING:\n    from ledger import c\n",
                         "ledger/c.py": "from ledger import b\n"})
    assert cycles(g) == [["node.cli.jobs", "node.cli.main"], ["scheduler.a"]]


def test_the_docstring_check_can_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "__init__.py").touch()
    (pkg / "__init__.py").write_text('"""A package.\n\nhost.py  the host\nsub/  a part\n'
                                     'compat_kad.py  the DHT\n"""\n')
    for name in ("host.py", "ghost.py", "kad.py", "compat_kad.py", "__main__.py"):
        (pkg / name).touch()
    assert unmapped(pkg) == ["ghost.py", "kad.py"]
    (pkg / "__init__.py").write_text('"""Nothing."""\n')
    assert unmapped(pkg) == ["compat_kad.py", "ghost.py", "host.py", "kad.py", "sub/"]
