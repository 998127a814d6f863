"""The plain progress lines: which way a job and its outputs went, bytes, percent, rate, N/M."""

from __future__ import annotations

import io

from node.cli.progress import Reporter, describe
from node.requester import events

P, J = "12D3KooWProviderXYZ", "ab" * 32


def route(route: str, what: str, waited_s: float = 0.0) -> str | None:
    return describe(events.Route(job_id=J, provider=P, route=route, waited_s=waited_s,
                                 what=what))


def test_routes_are_told_when_they_are_not_plainly_direct() -> None:
    assert route("direct", "job") is None
    assert route("relayed", "job", 10.2) == ("12D3KooWProvider: reached through a relay (no "
                                             "direct connection within 10 s)")
    assert route("direct", "outputs", 1.5) == ("12D3KooWProvider: outputs of job abababababab"
                                               " on a direct connection")
    assert route("relayed", "outputs", 10.0) == (
        "12D3KooWProvider: outputs of job abababababab through the relay (no direct "
        "connection within 10 s)")


def test_transfers_say_bytes_percent_and_rate() -> None:
    ev = events.Transferred(job_id=J, provider=P, direction="up", name="big.bin",
                            done=12 * 2**20, size=200 * 2**20, elapsed_s=2.0)
    assert describe(ev) == ("12D3KooWProvider: uploading big.bin: 12.0 MiB of 200.0 MiB (6%) "
                            "at 6.0 MiB/s")
    end = events.Transferred(job_id=J, provider=P, direction="down", name="o.bin",
                             done=3000, size=3000, offset=1000, elapsed_s=0.5)
    assert describe(end) == "12D3KooWProvider: downloaded o.bin: 2.9 KiB in 0.5 s at 3.9 KiB/s"


def test_maps_and_runs_say_how_far_they_are() -> None:
    assert describe(events.MapProgress(done=3, failed=0, total=10)) == "map: 3/10 items done"
    assert describe(events.MapProgress(done=7, failed=2, total=10)) == (
        "map: 7/10 items done, 2 failed")
    assert describe(events.Running(job_id=J, provider=P, elapsed_s=12.4)) == (
        "12D3KooWProvider: running job abababababab (12 s)")


def test_plain_lines_go_to_stderr_a_transfer_now_and_then() -> None:
    out, err = io.StringIO(), io.StringIO()
    with Reporter(out=out, err=err) as show:
        for k in range(1, 101):
            show(events.Transferred(job_id=J, provider=P, direction="up", name="x",
                                    done=k * 2**20, size=100 * 2**20, elapsed_s=k / 100))
    lines = err.getvalue().splitlines()
    assert out.getvalue() == ""
    assert lines[0].startswith("offload: 12D3KooWProvider: uploading x: 1.0 MiB of 100.0 MiB")
    assert lines[-1].startswith("offload: 12D3KooWProvider: uploaded x: 100.0 MiB in 1.0 s")
    assert len(lines) == 2  # the first, then nothing for PLAIN_EVERY_S, then the end


def test_json_mode_writes_no_progress_to_a_pipe() -> None:
    out, err = io.StringIO(), io.StringIO()
    with Reporter(quiet=True, out=out, err=err) as show:
        show(events.Quoted(job_id=J, provider=P, max_charge=10))
        show(events.MapProgress(done=1, failed=0, total=2))
    assert out.getvalue() == err.getvalue() == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_draws_a_map_as_items_done_of_all() -> None:
    out, err = io.StringIO(), _Terminal()
    with Reporter(out=out, err=err) as show:
        show(events.MapProgress(done=0, failed=0, total=3))
        show(events.Quoted(job_id=J, provider=P, max_charge=0))
        show(events.Verified(job_id=J, provider=P, status="failed"))
        show(events.MapProgress(done=2, failed=1, total=3))
        assert show._bar is not None
        show._bar.refresh()
        shown = {t.description for t in show._bar.tasks}
    assert shown == {"map: 2/3 items done, 1 failed"}  # the item's own line is gone
    assert "map: 2/3 items done, 1 failed" in err.getvalue()
    assert "verified (failed)" in err.getvalue() and out.getvalue() == ""
