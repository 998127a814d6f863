"""What a provider keeps of detached jobs, and who may see it: only the job's requester,
only within its time, and never more disk than it has room for."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from node.net.transfer import file_sha256
from node.provider.board import LOG_BYTES, JobBoard
from node.provider.kept import KeptJobs
from protocol import OutputFile, sign
from tests import factories as f


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _kept(tmp_path: Path, clock: Clock, max_bytes: int = 1 << 20) -> KeptJobs:
    return KeptJobs(tmp_path / "kept", keep_s=60, max_bytes=max_bytes, clock=clock)


def test_kept_results_and_outputs_go_to_their_requester_only_within_their_time(
        tmp_path: Path) -> None:
    clock = Clock()
    kept = _kept(tmp_path, clock)
    out = tmp_path / "answer.txt"
    out.write_bytes(b"42\n")
    o = OutputFile(name="answer.txt", sha256=file_sha256(out), size=3)
    result = f.result(outputs=(o,))
    raw = sign(result, f.BOB).raw
    job, me = result.job_id, result.requester
    assert kept.reserve(job, 1000)
    assert kept.keep(job, me, raw, [(o, out)])
    assert kept.result(job, me) == raw  # canary: its requester sees it
    got = kept.outputs(job, me)
    assert got is not None and got[0][1].read_bytes() == b"42\n"
    assert kept.result(job, f.BOB.peer_id) is None  # another peer does not
    assert kept.outputs(job, f.BOB.peer_id) is None
    assert kept.result("../" + job[3:], me) is None
    clock.now += 61
    assert kept.result(job, me) is None and kept.outputs(job, me) is None
    assert kept.prune() == 1 and not (tmp_path / "kept" / job).exists()


def test_a_detached_job_needs_room_for_its_disk_limit(tmp_path: Path) -> None:
    kept = _kept(tmp_path, Clock(), max_bytes=1000)
    assert kept.reserve("a" * 64, 600)
    assert not kept.reserve("b" * 64, 600)  # 1200 > 1000
    kept.release("a" * 64)
    assert kept.reserve("b" * 64, 600)


@pytest.mark.parametrize("reader_is_requester", [True, False])
def test_the_board_answers_only_the_jobs_requester(reader_is_requester: bool) -> None:
    board = JobBoard()
    with board.running("c" * 64, "alice", detached=True) as live:
        live.write("stdout", b"x" * (LOG_BYTES + 10))
        live.write("stdout", b"tail\n")
        asker = "alice" if reader_is_requester else "mallory"
        got = board.get("c" * 64, asker)
        assert (got is live) == reader_is_requester
        assert live.kept <= LOG_BYTES + 10 and live.dropped > 0
        assert live.log[-1] == ("stdout", "tail\n")
    assert board.get("c" * 64, "alice") is None and live.ended.is_set()


async def test_a_follower_sees_what_comes_and_the_end() -> None:
    board = JobBoard()
    with board.running("d" * 64, "alice", detached=False) as live:
        follow = live.follow()
        assert follow is not None
        live.write("stderr", "é".encode()[:1])
        live.write("stderr", "é".encode()[1:] + b"\n")
    seen = [line async for line in follow]
    assert seen == [("stderr", "é\n")]
    with trio.fail_after(1):
        await live.ended.wait()
