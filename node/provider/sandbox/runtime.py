"""Job runtimes: world-readable virtual environments the job users can execute, with a manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from node.provider.sandbox.errors import SandboxUnavailable

DEFAULT_RUNTIME_ROOT = Path("/opt/offload/runtimes")
DEFAULT_RUNTIME = "python3"
DEFAULT_PACKAGES = ("torch==2.13.0", "numpy==2.4.6", "cloudpickle==3.1.2")
MANIFEST = "offload-runtime.json"
REPORTED = ("torch", "numpy")


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeInfo:
    name: str
    path: Path
    python: str
    packages: dict[str, str]
    digest: str

    @property
    def interpreter(self) -> Path:
        return self.path / "bin" / "python3"

    def base_prefix(self) -> Path | None:
        """The system Python a venv points at (`home` in pyvenv.cfg); the sandbox needs it too."""
        cfg = self.path / "pyvenv.cfg"
        if not cfg.exists():
            return None
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
        return None


def runtime_root() -> Path:
    """Where runtimes live: $OFFLOAD_RUNTIME_ROOT, read at each call, else /opt/offload/runtimes."""
    return Path(os.environ.get("OFFLOAD_RUNTIME_ROOT") or DEFAULT_RUNTIME_ROOT)


def runtime_dir(name: str = DEFAULT_RUNTIME, root: Path | None = None) -> Path:
    return (root or runtime_root()) / name


def describe(name: str = DEFAULT_RUNTIME, root: Path | None = None) -> RuntimeInfo:
    root = root or runtime_root()
    path = runtime_dir(name, root)
    try:
        doc = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        raise SandboxUnavailable(f"runtime {name!r} is not installed under {root}; run "
                                 "`offload runtime install` as root") from None
    return RuntimeInfo(name=doc["name"], path=path, python=doc["python"],
                       packages=dict(doc["packages"]), digest=doc["digest"])


def from_interpreter(python: Path, name: str = DEFAULT_RUNTIME) -> RuntimeInfo:
    """Describe an existing environment (e.g. a GPU host's own CUDA venv) without installing."""
    prefix = python.parent.parent
    probe = ("import json, platform, importlib.metadata as m\n"
             f"names = {list(REPORTED)!r}\n"
             "pk = {}\n"
             "for n in names:\n"
             "    try: pk[n] = m.version(n)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps({'python': platform.python_version(), 'packages': pk}))\n")
    out = subprocess.run([str(python), "-I", "-c", probe], check=True, capture_output=True,
                         text=True).stdout
    doc = json.loads(out)
    return RuntimeInfo(name=name, path=prefix, python=doc["python"], packages=doc["packages"],
                       digest=_digest(doc["python"], doc["packages"]))


def install(name: str = DEFAULT_RUNTIME, packages: Sequence[str] = DEFAULT_PACKAGES, *,
            python: str = "/usr/bin/python3", root: Path | None = None) -> RuntimeInfo:
    """Build (or reuse) a venv from the system Python, world-readable, and write its manifest."""
    root = root or runtime_root()
    path = runtime_dir(name, root)
    try:
        existing = json.loads((path / MANIFEST).read_text())
        if existing.get("requested") == list(packages) and (path / "bin" / "python3").exists():
            return describe(name, root)
    except (OSError, ValueError):
        pass
    if not Path(python).exists():
        raise SandboxUnavailable(f"{python} is missing; install Debian's python3 and python3-venv")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(root.parent, 0o755)
    if not (path / "bin" / "python3").exists():
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(path)], check=True)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    *packages], check=True)
    info = from_interpreter(path / "bin" / "python3", name)
    (path / MANIFEST).write_text(json.dumps({"name": name, "python": info.python,
                                             "packages": info.packages, "digest": info.digest,
                                             "requested": list(packages)}))
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(path)], check=True)
    return info


def _digest(python: str, packages: dict[str, str]) -> str:
    doc = json.dumps({"python": python, "packages": packages}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()
