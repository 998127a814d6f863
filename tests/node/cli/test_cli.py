"""CLI parsing and the local commands, run as real processes where exit codes matter."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.cli.common import split_script_argv as split_submit_argv


@pytest.mark.parametrize(("argv", "ours", "theirs"), [
    (["submit", "a.py"], ["submit", "a.py"], []),
    (["submit", "a.py", "x", "--steps", "5", "--json"],
     ["submit", "a.py", "--json"], ["x", "--steps", "5"]),
    (["--home", "h", "submit", "--timeout", "9", "a.py", "--out", "d", "-v"],
     ["--home", "h", "submit", "--timeout", "9", "a.py", "--out", "d"], ["-v"]),
    (["submit", "a.py", "--file=data.txt", "--", "--json", "--out"],
     ["submit", "a.py", "--file=data.txt"], ["--json", "--out"]),
    (["offers", "--json"], ["offers", "--json"], []),
])
def test_submit_argv_split(argv: list[str], ours: list[str], theirs: list[str]) -> None:
    assert split_submit_argv(argv) == (ours, theirs)


def offload(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    return subprocess.run([sys.executable, "-m", "node", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_init_then_id_json(tmp_path: Path) -> None:
    home = tmp_path / "h"
    res = offload("id", "--json", home=home)
    assert res.returncode == 2 and "run `offload --home" in res.stderr
    assert offload("init", home=home).returncode == 0
    doc = json.loads(offload("id", "--json", home=home).stdout)
    assert set(doc) == {"peer_id", "public_key", "home"}
    assert doc["peer_id"].startswith("12D3KooW") and len(bytes.fromhex(doc["public_key"])) == 32
    assert doc["home"] == str(home)
    mode = stat.S_IMODE((home / "identity.key").stat().st_mode)
    assert mode == 0o600
    again = json.loads(offload("init", "--json", home=home).stdout)
    assert again["peer_id"] == doc["peer_id"] and again["created"] is False


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "h"
    offload("init", home=home)
    (home / "identity.key").chmod(0o644)
    res = offload("id", home=home)
    assert res.returncode == 2
    assert "chmod 600" in res.stderr and "Traceback" not in res.stderr


def test_verify_of_a_missing_or_garbage_file_exits_1(tmp_path: Path) -> None:
    res = offload("verify", str(tmp_path / "nope.msgpack"), home=tmp_path / "h")
    assert res.returncode == 1 and "INVALID: cannot read" in res.stdout
    junk = tmp_path / "junk.msgpack"
    junk.write_bytes(b"\x00" * 40)
    res = offload("verify", str(junk), "--json", home=tmp_path / "h")
    assert res.returncode == 1
    assert json.loads(res.stdout)["valid"] is False


def test_every_command_has_help_with_an_example(tmp_path: Path) -> None:
    for command in ("init", "id", "provide", "offers", "submit", "verify", "demo",
                    "sessions"):
        res = offload(command, "--help", home=tmp_path / "h")
        assert res.returncode == 0 and "example: offload" in res.stdout


@pytest.mark.parametrize("value", ["0", "-3", "1.5", "lots", "70000"])
def test_a_relay_circuit_limit_out_of_range_exits_2_saying_so(tmp_path: Path,
                                                              value: str) -> None:
    res = offload("relay", "--circuit-mib", value, home=tmp_path / "h")
    assert res.returncode == 2, res.stderr
    assert f"{value!r} is not a whole number of MiB, 1 to 65536" in res.stderr
