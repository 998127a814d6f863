"""`offload ledger ...` and `offload jobs`, run as real processes on a real home."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger
from node.cli.ledger import parse_credits
from node.errors import UserError
from node.home import init_identity
from protocol import Identity, sha256_hex

OFFLOAD = Path(sys.executable).parent / "offload"
PROVIDER = Identity(bytes([2]) * 32).peer_id


def offload(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_")}
    return subprocess.run([str(OFFLOAD), "--home", str(home), *args], capture_output=True,
                          text=True, timeout=60, env=env)


def ok_json(home: Path, *args: str) -> Any:
    res = offload(home, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # exactly one document


def sql(path: Path, statement: str) -> None:
    """Edit the file as `sqlite3 ledger.db "..."` would (the CLI when it is installed)."""
    if shutil.which("sqlite3"):
        subprocess.run(["sqlite3", str(path), statement], check=True, timeout=30)
        return
    db = sqlite3.connect(path)  # pragma: no cover - hosts without the sqlite3 shell
    with db:
        db.execute(statement)
    db.close()


@pytest.mark.parametrize(("text", "micro"), [
    ("25", 25_000_000), ("0.125", 125_000), ("1e-6", 1), (" 3.5 ", 3_500_000),
])
def test_parse_credits(text: str, micro: int) -> None:
    assert parse_credits(text) == micro


@pytest.mark.parametrize("text", ["0", "-1", "0.0000001", "abc", "nan", "inf", ""])
def test_parse_credits_refuses(text: str) -> None:
    with pytest.raises(UserError, match="must be a positive number of credits with at most 6"):
        parse_credits(text)


def test_deposit_balance_history_verify(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert ok_json(home, "ledger", "balance") == {
        "available": "0.000000", "escrow": "0.000000", "paid": "0.000000",
        "earned": "0.000000", "deposited": "0.000000"}
    doc = ok_json(home, "ledger", "deposit", "25.5")
    assert doc == {"deposited": "25.500000", "seq": 1, "available": "25.500000",
                   "ref": doc["ref"]}
    res = offload(home, "ledger", "deposit", "0.25")
    assert res.returncode == 0 and res.stdout.startswith("deposited 0.250000 credits (entry 2)")
    assert ok_json(home, "ledger", "balance")["available"] == "25.750000"
    history = ok_json(home, "ledger", "history")
    assert [(e["seq"], e["kind"], e["amount"]) for e in history] == [
        (1, "deposit", "25.500000"), (2, "deposit", "0.250000")]
    assert len(ok_json(home, "ledger", "history", "--limit", "1")) == 1
    assert ok_json(home, "ledger", "verify") == {"valid": True, "entries": 2, "seq": None,
                                                 "reason": None}
    assert (home / "ledger.db").exists()


@pytest.mark.parametrize("amount", ["-5", "0.0000001", "lots"])
def test_a_bad_amount_is_one_line_and_exit_2(tmp_path: Path, amount: str) -> None:
    res = offload(tmp_path / "h", "ledger", "deposit", "--", amount)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and "must be a positive number of credits" in res.stderr


def test_verify_names_the_entry_edited_with_sqlite3(tmp_path: Path) -> None:
    home = tmp_path / "h"
    for amount in ("10", "20", "30"):
        assert offload(home, "ledger", "deposit", amount).returncode == 0
    assert offload(home, "ledger", "verify").returncode == 0  # the canary
    sql(home / "ledger.db", "update entries set amount = 90000000 where seq = 2")
    res = offload(home, "ledger", "verify")
    assert res.returncode == 1
    assert res.stdout.startswith("INVALID at entry 2: its hash does not match its fields")
    doc = json.loads(offload(home, "ledger", "verify", "--json").stdout)
    assert doc["valid"] is False and doc["seq"] == 2


def test_verify_catches_an_edited_balance(tmp_path: Path) -> None:
    home = tmp_path / "h"
    assert offload(home, "ledger", "deposit", "10").returncode == 0
    sql(home / "ledger.db", "update accounts set balance = 1000000000 where name = 'available'")
    res = offload(home, "ledger", "verify", "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout) == {
        "valid": False, "entries": 1, "seq": None,
        "reason": "account 'available' holds 1000000000 but its entries add up to 10000000 "
                  "micro-credits"}


def test_jobs_and_export(tmp_path: Path) -> None:
    home = tmp_path / "h"
    identity, _ = init_identity(home)
    done, failed, running = (sha256_hex(f"job {n}".encode()) for n in range(3))
    with Ledger.open(home / "ledger.db", identity) as ledger:
        ledger.deposit(10_000_000)
        for j in (done, failed, running):
            ledger.lock(j, PROVIDER, 2_000_000)
        ledger.release(done, 1_250_000, result_digest=sha256_hex(b"result"))
        ledger.refund(failed, "timeout")
    jobs = ok_json(home, "jobs")
    assert [(j["job_id"], j["provider"], j["status"], j["charge"], j["verified"])
            for j in jobs] == [
        (done, PROVIDER, "released", "1.250000", True),
        (failed, PROVIDER, "refunded", "0.000000", False),
        (running, PROVIDER, "locked", "0.000000", False)]
    text = offload(home, "jobs").stdout.splitlines()
    assert text[0].startswith(done[:12]) and text[0].endswith("verified")
    assert "refunded (timeout)" in text[1]
    export = ok_json(home, "ledger", "export")
    assert export["unit"] == "micro-credits"
    assert [e["kind"] for e in export["entries"]] == [
        "deposit", "lock", "lock", "lock", "release", "refund"]
    assert len(export["receipts"]) == 2
    rows = list(csv.DictReader(io.StringIO(offload(home, "ledger", "export").stdout)))
    assert [r["seq"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert rows[4]["amount"] == "1.250000" and rows[4]["prev"] == rows[3]["hash"]


def test_every_parser_shows_an_example(tmp_path: Path) -> None:
    for args in (("ledger",), ("ledger", "balance"), ("ledger", "history"),
                 ("ledger", "deposit"), ("ledger", "verify"), ("ledger", "export"), ("jobs",)):
        res = offload(tmp_path, *args, "--help")
        assert res.returncode == 0 and "example: offload " in res.stdout, args
