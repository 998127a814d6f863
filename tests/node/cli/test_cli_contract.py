"""The CLI contract as a user meets it: checks before the network, --json errors, --config
everywhere, --version, help lines, `status` suggestions; real `offload` processes."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.cli.commands import build_parser
from node.provider.status import write_status

REPO = Path(__file__).resolve().parents[3]
UNREACHABLE = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
REQUESTER_VERBS = ("offers", "submit", "plan", "map")


def offload(*args: str, home: Path, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    return subprocess.run([sys.executable, "-m", "node", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60, env=clean | (env or {}),
                          cwd=REPO)


def json_error(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    doc = json.loads(res.stdout)  # exactly one document: json.loads refuses trailing text
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    return dict(doc["error"])


def verb_args(verb: str, tmp_path: Path) -> list[str]:
    items = tmp_path / "items.txt"
    items.write_text("1\n")
    return {"offers": ["offers"], "submit": ["submit", "examples/square.py"],
            "plan": ["plan", "examples/square.py", "--gflop", "1"],
            "map": ["map", "examples/square.py", "--items", str(items)]}[verb]


def test_version(tmp_path: Path) -> None:
    res = offload("--version", home=tmp_path / "h")
    assert res.returncode == 0 and res.stdout.strip() == "offload 0.1.0"


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [p]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _parsers(child)
    return found


def test_every_option_of_every_verb_has_a_help_line() -> None:
    missing = [f"{p.prog} {a.option_strings or a.metavar}" for p in _parsers(build_parser())
               for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert missing == []


@pytest.mark.parametrize("verb", ["submit", "plan", "map"])
def test_script_verbs_show_script_and_its_args_in_the_usage(tmp_path: Path,
                                                            verb: str) -> None:
    res = offload(verb, "--help", home=tmp_path / "h")
    assert res.returncode == 0 and "SCRIPT [ARGS]..." in res.stdout
    for flag in ("--cpus N", "--memory GB", "--gpus N", "--json", "--bootstrap MADDR"):
        line = next(ln for ln in res.stdout.splitlines()
                    if ln.startswith(f"  {flag} ") or ln == f"  {flag}")
        assert len(line.strip()) > len(flag) + 5, line  # a description follows the flag


@pytest.mark.parametrize(("args", "message"), [
    (["submit", "nope.py"], "script nope.py: no such file; check the path"),
    (["plan", "nope.py"], "script nope.py: no such file; check the path"),
    (["submit", "examples", "--json"], "script examples: not a regular file"),
    (["submit", "examples/square.py", "--file", "missing.csv"],
     "--file missing.csv: no such file"),
    (["submit", "examples/square.py", "--cpus", "0"], "--cpus must be a whole number from 1"),
    (["submit", "examples/square.py", "--gpus", "-1"], "--gpus must be a whole number from 0"),
    (["submit", "examples/square.py", "--memory", "0"], "--memory is in GiB"),
    (["submit", "examples/square.py", "--memory", "1e12"], "--memory is in GiB"),
    (["submit", "examples/square.py", "--disk", "-1"], "--disk is in GiB"),
    (["submit", "examples/square.py", "--timeout", "0"], "--timeout must be from 1"),
    (["submit", "examples/square.py", "--max-price", "-2"], "--max-price is in credits"),
])
def test_bad_scripts_files_and_options_are_refused_before_any_network(
        tmp_path: Path, args: list[str], message: str) -> None:
    # an unreachable bootstrap peer: any network work would say so (or take seconds)
    started = time.monotonic()
    res = offload(*args, "--bootstrap", UNREACHABLE, home=tmp_path / "h")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "bootstrap" not in res.stderr and time.monotonic() - started < 30
    # and with no network configured at all, the same answer (not "no bootstrap peer")
    res = offload(*args, home=tmp_path / "h")
    assert res.returncode == 2 and message in res.stderr, res.stderr


@pytest.mark.parametrize(("args", "code", "exit_code"), [
    (["submit", "nope.py"], "user_error", 2),
    (["submit"], "usage_error", 2),
    (["submit", "examples/square.py", "--cpus", "many"], "usage_error", 2),
    (["status"], "status_missing", 2),
    (["offers", "--limit", "0"], "user_error", 2),
])
def test_an_error_with_json_is_one_document_on_stdout_and_the_same_exit(
        tmp_path: Path, args: list[str], code: str, exit_code: int) -> None:
    plain = offload(*args, home=tmp_path / "h")
    res = offload(*args, "--json", home=tmp_path / "h")
    assert plain.returncode == res.returncode == exit_code
    assert plain.stdout == ""
    err = json_error(res)
    assert err["code"] == code
    assert f"offload: error: {err['message']}" in res.stderr


@pytest.mark.parametrize("verb", REQUESTER_VERBS)
@pytest.mark.parametrize("how", ["flag", "env"])
def test_every_requester_verb_reads_its_config_and_refuses_a_malformed_one(
        tmp_path: Path, verb: str, how: str) -> None:
    bad = tmp_path / "requester.toml"
    bad.write_text("[network\nbootstrap = 3\n")
    args = verb_args(verb, tmp_path)
    if how == "flag":
        res = offload(*args, "--config", str(bad), "--json", home=tmp_path / "h")
    else:
        res = offload(*args, "--json", home=tmp_path / "h",
                      env={"OFFLOAD_REQUESTER_CONFIG": str(bad)})
    assert res.returncode == 2, res.stderr
    err = json_error(res)
    assert err["code"] == "config_error" and str(bad) in err["message"]
    assert "invalid TOML" in err["message"]


@pytest.mark.parametrize("verb", REQUESTER_VERBS)
def test_a_config_is_used_not_just_parsed(tmp_path: Path, verb: str) -> None:
    """The file's bootstrap is the one dialled: its (unparsable) address is what fails."""
    good = tmp_path / "requester.toml"
    good.write_text('[network]\nbootstrap = ["/ip4/127.0.0.1/tcp/9"]\n')
    res = offload(*verb_args(verb, tmp_path), "--config", str(good), home=tmp_path / "h")
    assert res.returncode == 2 and "/ip4/127.0.0.1/tcp/9" in res.stderr, res.stderr


def test_status_suggests_a_command_that_parses(tmp_path: Path) -> None:
    home = tmp_path / "no provider here"
    res = offload("status", home=home)
    assert res.returncode == 2
    suggested = res.stderr.split("`")[1]
    argv = shlex.split(suggested)
    assert argv[:3] == ["offload", "--home", str(home)] and argv[3] == "provide"
    ns = build_parser().parse_args(argv[1:])
    assert ns.command == "provide" and ns.home == str(home)


@pytest.mark.parametrize(("age", "draining", "text", "json_draining"), [
    (0.0, True, "draining (pid", True),
    (0.0, False, "running (pid", False),
    (3600.0, True, "stopped", False),
])
def test_status_text_and_json_agree_on_draining(tmp_path: Path, age: float, draining: bool,
                                                text: str, json_draining: bool) -> None:
    home = tmp_path / "h"
    home.mkdir()
    write_status(home, {"peer_id": "12D3KooWexample", "tier": "A", "pid": os.getpid(),
                        "updated_at": time.time() - age, "draining": draining,
                        "earnings_microcredits": 1001})
    plain = offload("status", home=home)
    doc = json.loads(offload("status", "--json", home=home).stdout)
    assert text in plain.stdout.splitlines()[0]
    assert doc["draining"] is json_draining and doc["running"] is (age == 0.0)
    assert doc["earnings"] == "0.001001" and "0.001001 credits" in plain.stdout


def test_every_option_of_a_script_verb_is_known_to_the_argv_split() -> None:
    """Options after SCRIPT are ours only if split_script_argv knows them: a new one it
    did not know went to the script (the canary: a made-up word does)."""
    import argparse

    from node.cli.commands import build_parser
    from node.cli.common import FLAGS, OPTIONS_WITH_VALUE, SCRIPT_VERBS, split_script_argv

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb in SCRIPT_VERBS:
        for action in sub.choices[verb]._actions:
            for flag in action.option_strings:
                known = OPTIONS_WITH_VALUE if action.nargs != 0 else FLAGS
                assert flag in known, f"{verb} {flag}"
    assert split_script_argv(["submit", "job.py", "--made-up"])[1] == ["--made-up"]
