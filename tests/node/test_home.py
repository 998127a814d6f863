"""Home names every file under a home (the names old homes use); one atomic JSON write."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from node.home import Home, atomic_write_json


def test_every_path_keeps_the_name_existing_homes_use(tmp_path: Path) -> None:
    home = Home(tmp_path)
    names = {"identity": "identity.key", "ledger": "ledger.db", "lock": "provider.lock",
             "peers": "peers.json", "holds": "holds.json", "leases": "leases", "kept": "kept",
             "detached": "detached.json",
             "status": "status.json", "results": "results", "benchmark": "benchmark.json",
             "local_benchmark": "local-benchmark.json", "cache": "cache", "jobs": "jobs",
             "offers": "offers.msgpack", "sessions": "sessions"}
    assert {k: getattr(home, k) for k in names} == {k: tmp_path / v for k, v in names.items()}
    props = {n for n, v in vars(Home).items() if isinstance(v, property)}
    assert props == set(names)


def test_atomic_write_json_replaces_the_file_with_exact_text(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "status.json"
    with pytest.raises(FileNotFoundError):
        atomic_write_json(path, {})
    atomic_write_json(path, {"b": 1, "a": [1, 2]}, sort_keys=True, indent=1, newline=True,
                      parents=True)
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=1) + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic_write_json(path, [1], mode=0o600)
    assert path.read_text() == "[1]" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    atomic_write_json(path, {"old": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["peers.json"]
