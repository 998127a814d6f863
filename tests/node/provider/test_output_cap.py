"""Output capture says what it cut: every byte past the cap is counted, none kept, and the
signed result carries the count (issue #17)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from node.provider.exchange import clip_output
from node.provider.runner import run_process
from protocol import InvalidMessage, JobResult, open_signed, sign
from protocol.messages import MAX_OUTPUT_TEXT
from tests import factories
from tests.factories import BOB

ENV = {"PATH": "/usr/bin:/bin"}
BIG = 20 * 1024 * 1024


async def test_a_job_printing_20_mb_keeps_the_cap_and_counts_the_rest(tmp_path: Path) -> None:
    code = ("import sys\nline = b'y' * 1023 + b'\\n'\n"
            f"for _ in range({BIG // 1024}): sys.stdout.buffer.write(line)\n"
            "print('tail', file=sys.stderr)\n")
    r = await run_process([sys.executable, "-c", code], cwd=tmp_path, env=ENV, timeout_s=60,
                          output_cap=MAX_OUTPUT_TEXT)
    assert r.status == "ok"  # drained to the end: the job never blocked on a full pipe
    assert len(r.stdout) == MAX_OUTPUT_TEXT and r.stdout_truncated
    assert r.stdout_dropped == BIG - MAX_OUTPUT_TEXT
    assert (r.stderr, r.stderr_truncated, r.stderr_dropped) == (b"tail\n", False, 0)


async def test_nothing_is_counted_as_dropped_below_the_cap(tmp_path: Path) -> None:
    r = await run_process([sys.executable, "-c", "print('x' * 999, end='')"], cwd=tmp_path,
                          env=ENV, timeout_s=20, output_cap=1000)
    assert (len(r.stdout), r.stdout_truncated, r.stdout_dropped) == (999, False, 0)
    r = await run_process([sys.executable, "-c", "print('x' * 1001, end='')"], cwd=tmp_path,
                          env=ENV, timeout_s=20, output_cap=1000)
    assert (len(r.stdout), r.stdout_truncated, r.stdout_dropped) == (1000, True, 1)


@pytest.mark.parametrize(("data", "lost"), [
    (b"a" * MAX_OUTPUT_TEXT, 0),
    (b"a" * (MAX_OUTPUT_TEXT + 5), 5),
    ("\u00e9".encode() * MAX_OUTPUT_TEXT, MAX_OUTPUT_TEXT),  # 2 bytes each: half is cut
    (b"a" * (MAX_OUTPUT_TEXT - 1) + "\u00e9".encode(), 2),  # never half a character
])
def test_clipping_to_the_result_counts_the_utf8_bytes_it_cut(data: bytes, lost: int) -> None:
    text, cut = clip_output(data)
    assert len(text.encode()) <= MAX_OUTPUT_TEXT and cut == lost
    assert len(text.encode()) + cut == len(data)


def test_a_requester_cap_below_the_limit_is_exact_in_utf8_bytes() -> None:
    assert clip_output(b"a" * 2000, 1000) == ("a" * 1000, 1000)
    assert clip_output("\u00e9\u00e9".encode(), 3) == ("\u00e9", 2)  # never half of one
    assert clip_output(b"short", 1000) == ("short", 0)


def test_the_signed_result_carries_the_count_and_refuses_a_count_without_a_cut() -> None:
    result = factories.result(stdout_truncated=True, stdout_dropped=BIG)
    back = open_signed(sign(result, BOB).raw, JobResult).message
    assert (back.stdout_truncated, back.stdout_dropped, back.stderr_dropped) == (True, BIG, 0)
    with pytest.raises(InvalidMessage, match="stdout_dropped is 7 but stdout is not"):
        factories.result(stdout_truncated=False, stdout_dropped=7)
