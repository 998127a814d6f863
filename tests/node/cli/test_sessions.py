"""`offload sessions` and `offload verify` of a saved session result, as real processes,
over records a settled session leaves under the home (node/requester/records.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from node.requester import records
from protocol import Usage, sign
from protocol.sessions import SessionResult, SessionStatus, Transcript
from tests.factories import ALICE, BOB
from tests.node.cli.test_cli import offload


def session_id(n: int) -> str:
    return hashlib.sha256(b"session %d" % n).hexdigest()


def settle(home: Path, n: int, *, opened_at: float, calls: int = 3,
           status: SessionStatus = "closed", charge: int = 2500) -> Path:
    sid = session_id(n)
    t = Transcript(sid)
    for i in range(calls):
        t.add(i + 1, "add", b"args", b"", b"value", False)
    result = SessionResult(
        job_id=sid, provider=BOB.peer_id, requester=ALICE.peer_id, status=status,
        calls=calls, transcript=t.head,
        usage=Usage(wall_s=1.5, cpu_s=0.5, gpu_s=0.0, peak_memory_mb=40),
        price_charged=charge, reason="", at=int(opened_at * 1000) + 2000)
    records.record_open(home, sid, BOB.peer_id, opened_at)
    records.record_end(home, sid, BOB.peer_id, opened_at, sign(result, BOB),
                       now=opened_at + 2)
    return Path(records.load(home, limit=1)[0].file or "")


def test_sessions_lists_the_records_newest_first_and_verify_checks_a_saved_result(
        tmp_path: Path) -> None:
    home = tmp_path / "h"
    older = settle(home, 1, opened_at=1_700_000_000.0, calls=2, status="idle")
    newer = settle(home, 2, opened_at=1_700_000_100.0, calls=5, charge=1_250_000)
    records.record_open(home, session_id(3), BOB.peer_id, 1_600_000_000.0)  # ours: open
    res = offload("sessions", "--json", home=home)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [d["session_id"] for d in doc] == [session_id(2), session_id(1), session_id(3)]
    assert doc[0] == {"session_id": session_id(2), "provider": BOB.peer_id,
                      "opened_at": 1_700_000_100.0, "calls": 5, "charge": "1.250000",
                      "status": "closed", "file": str(newer)}
    assert doc[1]["status"] == "idle" and doc[1]["file"] == str(older)
    # the process that opened it (this one) lives and has not settled it: still open
    assert doc[2]["status"] == "open" and doc[2]["file"] is None
    limited = json.loads(offload("sessions", "--json", "--limit", "1", home=home).stdout)
    assert [d["session_id"] for d in limited] == [session_id(2)]
    text = offload("sessions", home=home).stdout
    assert session_id(2)[:12] in text and "closed" in text

    res = offload("verify", str(newer), home=home)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (f"valid: session {session_id(2)[:12]} signed by "
                                  f"{BOB.peer_id}, 5 call(s), status closed")
    doc = json.loads(offload("verify", str(newer), "--json", home=home).stdout)
    assert doc["valid"] is True and doc["session_id"] == session_id(2)
    raw = bytearray(newer.read_bytes())
    for at in (len(raw) - 5, len(raw) // 2):  # in the signature; in the body
        bad = tmp_path / f"bad-{at}.msgpack"
        flipped = bytearray(raw)
        flipped[at] ^= 0x01
        bad.write_bytes(bytes(flipped))
        res = offload("verify", str(bad), home=home)
        assert res.returncode == 1 and res.stdout.startswith("INVALID: "), res.stdout


def test_a_session_whose_process_died_unsettled_shows_as_lost(tmp_path: Path) -> None:
    home = tmp_path / "h"
    records.record_open(home, session_id(1), BOB.peer_id, 1_700_000_000.0)
    meta = home / "sessions" / f"{session_id(1)}.json"
    doc = json.loads(meta.read_text())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    meta.write_text(json.dumps(doc | {"pid": pid}))
    (home / "sessions" / "junk.json").write_text("{")
    found = records.load(home)
    assert [(r.session_id, r.status) for r in found] == [(session_id(1), "lost")]


def test_no_sessions_yet(tmp_path: Path) -> None:
    res = offload("sessions", home=tmp_path / "h")
    assert res.returncode == 0 and res.stdout.strip() == "no sessions yet"
    assert offload("sessions", "--limit", "0", home=tmp_path / "h").returncode == 2
