"""Settings: flag > environment > file > default, and nothing read or registered at import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from node.config import env_list, resolve, resolve_list

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import atexit, importlib, os, pkgutil, sys
    reads, hooks = [], []
    get = os._Environ.__getitem__
    def spy(self, key):
        reads.append(key)
        return get(self, key)
    os._Environ.__getitem__ = spy
    register = atexit.register
    def hook(fn, *a, **k):
        hooks.append(f"{fn.__module__}.{fn.__qualname__}")
        return register(fn, *a, **k)
    atexit.register = hook
    for name in sys.argv[1:]:
        importlib.import_module(name)
    ours = ("node", "scheduler", "ledger", "protocol")
    print(sorted({k for k in reads if k.startswith("OFFLOAD_")}))
    print(sorted(h for h in hooks if h.startswith(ours)))
""")


def _imports(*modules: str, env: dict[str, str] | None = None) -> list[str]:
    res = subprocess.run([sys.executable, "-c", PROBE, *modules], cwd=ROOT, text=True,
                         capture_output=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def test_flag_beats_environment_beats_file_beats_default() -> None:
    env = {"OFFLOAD_X": "from-env"}
    assert resolve("flag", "OFFLOAD_X", "file", "default", env=env) == "flag"
    assert resolve(None, "OFFLOAD_X", "file", "default", env=env) == "from-env"
    assert resolve(None, "OFFLOAD_X", "file", "default", env={}) == "file"
    assert resolve(None, "OFFLOAD_X", None, "default", env={}) == "default"
    assert resolve(None, "OFFLOAD_X", None, None, env={}) is None
    assert resolve(Path("/p"), "OFFLOAD_X", "file", env=env) == "/p"


def test_empty_values_count_as_unset() -> None:
    assert resolve("", "OFFLOAD_X", "", "default", env={"OFFLOAD_X": ""}) == "default"
    assert resolve_list([], "OFFLOAD_B", (), ("d",), env={"OFFLOAD_B": ""}) == ["d"]


def test_environment_lists_split_on_commas_and_spaces() -> None:
    env = {"OFFLOAD_BOOTSTRAP": "/a, /b  /c,"}
    assert env_list("OFFLOAD_BOOTSTRAP", env=env) == ["/a", "/b", "/c"]
    assert env_list("OFFLOAD_BOOTSTRAP", env={}) == []
    assert resolve_list(None, "OFFLOAD_BOOTSTRAP", ("/f",), env=env) == ["/a", "/b", "/c"]
    assert resolve_list(["/x"], "OFFLOAD_BOOTSTRAP", ("/f",), env=env) == ["/x"]
    assert resolve_list(None, "OFFLOAD_BOOTSTRAP", ("/f",), env={}) == ["/f"]


def test_environment_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_X", "now")
    assert resolve(None, "OFFLOAD_X", None, "default") == "now"
    monkeypatch.delenv("OFFLOAD_X")
    assert resolve(None, "OFFLOAD_X", None, "default") == "default"


def test_sandbox_and_runtime_roots_are_read_when_asked(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    from node.provider.sandbox.runner import sandbox_root
    from node.provider.sandbox.runtime import runtime_dir, runtime_root

    monkeypatch.delenv("OFFLOAD_SANDBOX_ROOT", raising=False)
    monkeypatch.delenv("OFFLOAD_RUNTIME_ROOT", raising=False)
    assert sandbox_root() == Path("/var/lib/offload")
    assert runtime_root() == Path("/opt/offload/runtimes")
    monkeypatch.setenv("OFFLOAD_SANDBOX_ROOT", str(tmp_path / "s"))
    monkeypatch.setenv("OFFLOAD_RUNTIME_ROOT", str(tmp_path / "r"))
    assert sandbox_root() == tmp_path / "s"
    assert runtime_dir("python3") == tmp_path / "r" / "python3"


def test_importing_reads_no_environment_and_registers_nothing() -> None:
    modules = ["node.provider.sandbox.runner", "node.provider.sandbox.runtime",
               "node.api.sync", "node.home", "node.config", "node"]
    assert _imports(*modules) == ["[]", "[]"]


def test_the_probe_sees_a_read_and_a_registration() -> None:
    """Canary: the probe itself notices both kinds of side effect."""
    probe = ["node.api.sync"]
    code = ("import node.api.sync as s, os; os.environ.get('OFFLOAD_CANARY'); "
            "s.portal().start(); s.close()")
    res = subprocess.run([sys.executable, "-c", PROBE.replace(
        "for name in sys.argv[1:]:\n    importlib.import_module(name)", code), *probe],
        cwd=ROOT, text=True, capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["['OFFLOAD_CANARY']", "['node.api.sync.close']"]
