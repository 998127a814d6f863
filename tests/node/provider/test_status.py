"""The provider's status file: atomic writes, liveness, damaged files, the human summary."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from node.errors import UserError
from node.provider.metrics import ProviderMetrics
from node.provider.status import (
    STATUS_FILE,
    StatusMissing,
    format_status,
    publish_forever,
    read_status,
    write_status,
)

NOW = 1_700_000_000.0


def doc(**over: Any) -> dict[str, Any]:
    base = {"peer_id": "12D3KooWexample", "tier": "A", "addrs": ["/ip4/127.0.0.1/tcp/4001"],
            **ProviderMetrics().snapshot(), "pid": os.getpid(), "updated_at": NOW}
    return base | over


def test_round_trip_is_atomic_and_world_readable(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_status(tmp_path, doc(queue_depth=1))
        write_status(tmp_path, doc(queue_depth=4))
    finally:
        os.umask(old)
    assert os.listdir(tmp_path) == [STATUS_FILE]  # no temporary file left behind
    assert (tmp_path / STATUS_FILE).stat().st_mode & 0o777 == 0o644
    assert read_status(tmp_path, now=NOW + 1) == doc(queue_depth=4) | {"running": True}


def test_dead_pid_is_not_running(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    write_status(tmp_path, doc(pid=proc.pid))
    assert read_status(tmp_path, now=NOW)["running"] is False


@pytest.mark.parametrize(("age", "stale_after", "running"), [
    (29.0, 30.0, True), (31.0, 30.0, False), (5.0, 4.0, False), (3600.0, 7200.0, True)])
def test_stale_status_is_not_running(tmp_path: Path, age: float, stale_after: float,
                                     running: bool) -> None:
    write_status(tmp_path, doc())
    assert read_status(tmp_path, now=NOW + age, stale_after_s=stale_after)["running"] is running


@pytest.mark.parametrize("bad", [{"pid": 0}, {"pid": -1}, {"pid": True}, {"pid": "1"},
                                 {"updated_at": None}, {"updated_at": "now"}])
def test_odd_fields_are_not_running(tmp_path: Path, bad: dict[str, Any]) -> None:
    write_status(tmp_path, doc(**bad))
    assert read_status(tmp_path, now=NOW)["running"] is False


def test_missing_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(StatusMissing, match=re.escape(
            f"no provider has run with home {home}; start one with "
            f"`offload --home {home} provide`")) as info:
        read_status(home, now=NOW)
    assert isinstance(info.value, UserError)


@pytest.mark.parametrize(("content", "why"), [
    (b"{not json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"pid": 1', "Expecting ',' delimiter: line 1 column 10 (char 9)"),
    (b"\x80\x81", "'utf-8' codec can't decode byte 0x80 in position 0: invalid start byte"),
])
def test_corrupt_file(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / STATUS_FILE
    path.write_bytes(content)
    with pytest.raises(StatusMissing, match=re.escape(
            f"unreadable status file {path} ({why}); start the provider again with "
            f"`offload --home {tmp_path} provide` to rewrite it")):
        read_status(tmp_path, now=NOW)


def test_format_status_shows_the_key_numbers() -> None:
    pm = ProviderMetrics()
    pm.jobs_total.labels(outcome="ok").inc(5)
    pm.jobs_total.labels(outcome="timeout").inc(2)
    pm.slots_in_use.set(1)
    pm.slots_total.set(2)
    pm.queue_depth.set(3)
    pm.warm_ready.set(1)
    pm.warm_parked.set(1)
    pm.warm_reuses.set(12)
    pm.bytes_in_total.inc(1_048_576)
    pm.bytes_out_total.inc(100)
    pm.earnings_total.inc(1_234_567)
    text = format_status(doc(**pm.snapshot(), pid=4321) | {"running": True})
    assert text == "\n".join([
        "provider 12D3KooWexample: running (pid 4321)",
        "  sandbox tier: A",
        "  listening:    /ip4/127.0.0.1/tcp/4001",
        "  slots:        1/2 in use, 1 warm worker(s) ready, 1 kept for their requester",
        "  reused:       12 job(s) ran in their requester's last sandbox",
        "  queue:        3 waiting",
        "  jobs:         7 (5 ok, 2 timeout)",
        "  bytes in:     1048576 B (1.0 MiB)",
        "  bytes out:    100 B",
        "  earnings:     1.234567 credits",
        "  updated:      2023-11-14 22:13:20 UTC",
    ])


def test_format_status_of_a_stopped_or_sparse_doc() -> None:
    text = format_status(doc(pid=99, earnings_microcredits=5) | {"running": False})
    assert "12D3KooWexample: stopped (last pid 99)" in text
    assert "jobs:         0 (none)" in text
    assert "earnings:     0.000005 credits" in text
    assert format_status({"running": False}).splitlines()[0] == "provider ?: stopped"


def test_format_status_counts_the_sessions() -> None:
    live = {"open": [{"id": "ab" * 32, "requester": "12D3KooWreq", "age_s": 3.5, "calls": 2,
                      "status": "open"}], "ended": 4}
    lines = format_status(doc(sessions=live) | {"running": True}).splitlines()
    assert "  sessions:     1 open, 4 ended" in lines
    assert lines.index("  sessions:     1 open, 4 ended") == lines.index(
        next(x for x in lines if x.startswith("  jobs:"))) + 1
    garbled = format_status(doc(sessions="?") | {"running": True})
    assert "  sessions:     0 open, 0 ended" in garbled


async def test_publish_forever_rewrites_the_file(tmp_path: Path) -> None:
    ticks: list[float] = []

    def clock() -> float:
        ticks.append(NOW + len(ticks))
        return ticks[-1]

    builds = 0

    def build() -> dict[str, Any]:
        nonlocal builds
        builds += 1
        return {"peer_id": "p", "queue_depth": builds}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: publish_forever(tmp_path, build, interval_s=0.1, clock=clock))
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert builds >= 2
    written = json.loads((tmp_path / STATUS_FILE).read_text())
    assert written == {"peer_id": "p", "queue_depth": builds, "pid": os.getpid(),
                       "updated_at": ticks[-1]}
    assert read_status(tmp_path, now=ticks[-1])["running"] is True


async def test_publish_forever_survives_write_errors(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="node.provider.status")
    with trio.move_on_after(0.25):
        await publish_forever(tmp_path / "gone", dict, interval_s=0.1, clock=lambda: NOW)
    failures = [r for r in caplog.records if r.getMessage().startswith("could not write")]
    assert len(failures) >= 2
