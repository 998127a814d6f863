"""Deadlines against real processes: a frozen provider, a trickling uploader, a busy one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import trio

from node.net.client import open_client
from node.net.transfer import TRANSFER_GRACE_S
from node.requester.exchange import GRACE_S, JobRequest, run_job
from protocol import Identity, sign, wire
from tests.e2e.conftest import Network
from tests.e2e.test_hostile_peers import spec_for

BIG = 96 * 1024 * 1024  # far more than yamux windows and socket buffers hold
TIMEOUT_S = 20
SLACK_S = 20.0  # process start, DHT lookup, ping, refund, teardown on a loaded machine
TRICKLE_GIVE_UP_S = 120.0
PROGRESS = re.compile(r"^offload: 12D3KooW\w+: ")  # event lines, not errors


def _big_input(root: Path) -> Path:
    big = root / "big.bin"
    with big.open("wb") as f:
        f.truncate(BIG)  # sparse zeros: nothing to read from disk
    return big


def _freeze_during_upload(network: Network, submit: subprocess.Popen[str]
                          ) -> tuple[dict[str, Any], float]:
    """SIGSTOP whichever provider the big input starts arriving at; returns it and when."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if submit.poll() is not None:
            raise AssertionError(f"submit ended before the upload: {submit.communicate()}")
        for n, p in enumerate(network.providers, 1):
            partial = network.root / f"p{n}" / "cache" / "partial"
            if any(f.stat().st_size > 1024 * 1024 for f in partial.glob("*")):
                os.kill(p["proc"].pid, signal.SIGSTOP)
                return p, time.monotonic()
        time.sleep(0.02)
    raise AssertionError("the upload never started")


def _collect(submit: subprocess.Popen[str], frozen: dict[str, Any]
             ) -> tuple[list[tuple[float, str]], str]:
    """stderr lines with the time each arrived, and stdout, once `submit` exits; the frozen
    provider is resumed (SIGCONT) afterwards."""
    watchdog = threading.Timer(3 * (TIMEOUT_S + GRACE_S) + 120, submit.kill)
    watchdog.start()
    lines: list[tuple[float, str]] = []
    try:
        assert submit.stderr is not None and submit.stdout is not None
        for line in submit.stderr:  # progress lines as they happen, until it exits
            lines.append((time.monotonic(), line))
        out = submit.stdout.read()
        submit.wait()
    finally:
        watchdog.cancel()
        os.kill(frozen["proc"].pid, signal.SIGCONT)
    return lines, out


def _gave_up_at(lines: list[tuple[float, str]], frozen: dict[str, Any]) -> float:
    """When the requester said the frozen provider stalled the upload (one event line)."""
    moved = [t for t, line in lines if PROGRESS.match(line) and "took no data of big.bin"
             in line and frozen["peer_id"][:16] in line]
    assert len(moved) == 1, "".join(line for _, line in lines)
    return moved[0]


def test_a_provider_frozen_during_upload_fails_the_job_in_one_line_within_its_bound(
        network: Network) -> None:
    p = network.start_provider()
    script = network.root / "ok.py"
    script.write_text("print('never runs')\n")
    big = _big_input(network.root)
    submit = network.offload_async("submit", str(script), "--file", str(big), "--timeout",
                                   str(TIMEOUT_S), "--bootstrap", p["addr"])
    frozen, frozen_at = _freeze_during_upload(network, submit)
    lines, _ = _collect(submit, frozen)
    ended = time.monotonic()
    err = "".join(line for _, line in lines)
    assert submit.returncode == 1, err
    errors = [ln for _, ln in lines if ln.strip() and not PROGRESS.match(ln)]
    assert len(errors) == 1 and errors[0].startswith("offload: error: "), err  # no traceback
    assert "took no data of big.bin for 30 s" in errors[0], err
    assert _gave_up_at(lines, frozen) - frozen_at < TIMEOUT_S + GRACE_S, err
    assert ended - frozen_at < TIMEOUT_S + GRACE_S + SLACK_S, (ended - frozen_at, err)
    jobs = json.loads(network.offload("jobs", "--json", check=True).stdout)
    assert [j["status"] for j in jobs] in ([], ["refunded"])


def test_with_a_second_provider_the_job_moves_on_from_a_frozen_one(network: Network) -> None:
    a = network.start_provider()
    b = network.start_provider(bootstrap=a["addr"])
    script = network.root / "size.py"
    script.write_text("import os\nprint(os.path.getsize('big.bin'))\n")
    big = _big_input(network.root)
    submit = network.offload_async("submit", str(script), "--file", str(big), "--timeout",
                                   str(TIMEOUT_S), "--bootstrap", a["addr"], "--bootstrap",
                                   b["addr"])
    frozen, frozen_at = _freeze_during_upload(network, submit)
    lines, out = _collect(submit, frozen)
    err = "".join(line for _, line in lines)
    assert submit.returncode == 0, err
    assert out == f"{BIG}\n"
    assert _gave_up_at(lines, frozen) - frozen_at < TIMEOUT_S + GRACE_S, err
    verdict = lines[-1][1]
    assert "verified result" in verdict and "1 provider(s) replaced" in verdict, err
    assert frozen["peer_id"][:16] not in verdict, err


def test_a_busy_provider_is_asked_again_and_the_job_runs_there(network: Network) -> None:
    p = network.start_provider(extra=["--slots", "1", "--queue", "0"])
    sleeper = network.root / "sleeper.py"
    sleeper.write_text("import time\ntime.sleep(8)\nprint('slept')\n")
    script = network.root / "ok.py"
    script.write_text("print('after busy')\n")
    hog = network.offload_async("submit", str(sleeper), "--bootstrap", p["addr"],
                                home="hog")
    deadline = time.monotonic() + 60
    while "running sleeper.py" not in Path(p["log"]).read_text(errors="replace"):
        assert hog.poll() is None and time.monotonic() < deadline, hog.communicate()
        time.sleep(0.1)
    second = network.offload("submit", str(script), "--bootstrap", p["addr"], "--json",
                             timeout=180)
    assert second.returncode == 0, second.stderr  # not "provider refused the job (busy)"
    doc = json.loads(second.stdout)
    assert doc["stdout"] == "after busy\n" and doc["provider"] == p["peer_id"]
    assert doc["retries"] == []  # asked again, not replaced
    assert hog.wait(timeout=60) == 0


async def test_a_trickling_uploader_is_cut_and_frees_the_only_slot(network: Network) -> None:
    p = network.start_provider(extra=["--slots", "1", "--queue", "0"])
    script = network.root / "ok.py"
    script.write_text("print('after the trickle')\n")
    payload = network.root / "trickled.bin"
    payload.write_bytes(os.urandom(64 * 1024))  # 0.5 s at the minimum rate
    me = Identity.generate()
    async with open_client(me, [p["addr"]]) as (host, disc):
        ad = (await disc.require_ads())[0].message
        spec = spec_for(me, ad.peer_id, payload)
        hog = await host.open_stream(ad.peer_id, wire.JOB_PROTOCOL, addrs=ad.addrs)
        await hog.send(wire.SubmitJob(spec=sign(spec, me).raw))
        assert isinstance(await hog.receive_within(30, "quote"), wire.QuoteOffer)
        await hog.send(wire.QuoteAccept(job_id=sign(spec, me).digest))
        accepted = await hog.receive_within(30, "accepted")
        assert isinstance(accepted, wire.Accepted) and accepted.need
        started = trio.current_time()
        cut: wire.Frame | None = None
        offset = 0
        with trio.move_on_after(TRICKLE_GIVE_UP_S):
            while cut is None:  # a byte every 10 s beats the 30 s idle timer
                await hog.send(wire.Chunk(name=payload.name, offset=offset, data=b"\0",
                                          final=False))
                offset += 1
                with trio.move_on_after(10):
                    cut = await hog.receive()
        assert isinstance(cut, wire.ErrorReply), f"still trickling after {offset} bytes"
        assert cut.code == "transfer_failed", cut
        assert "within" in cut.message, cut
        assert trio.current_time() - started < TRANSFER_GRACE_S + 25
        await hog.reset()
        with trio.fail_after(90):  # the one slot is free again: a normal job runs
            outcome = await run_job(host, ad, JobRequest(script=script), network.root / "o")
        assert outcome.result.stdout == "after the trickle\n"
    assert p["proc"].poll() is None


def test_a_map_on_a_one_slot_provider_waits_out_busy_instead_of_dropping_it(
        network: Network) -> None:
    p = network.start_provider(extra=["--slots", "1", "--queue", "0"])
    script = network.root / "twice.py"
    script.write_text("import sys, time\ntime.sleep(2)\nprint(2 * int(sys.argv[1]))\n")
    items = network.root / "items.txt"
    items.write_text("1\n2\n3\n")
    done = network.offload("map", str(script), "--items", str(items), "--out",
                           str(network.root / "m"), "--per-provider", "2", "--bootstrap",
                           p["addr"], "--json", timeout=240)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert [i["stdout"] for i in doc["items"]] == ["2\n", "4\n", "6\n"], doc
    assert doc["failed"] == 0 and doc["workers"] == [p["peer_id"]]
