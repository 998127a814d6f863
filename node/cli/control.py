"""Job control from any process on the home: `offload result`, `logs`, `cancel` (over
node/requester/detach.py) and `offload show` (a saved result, no network)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from node.cli.common import emit, report_swept, session_from
from node.errors import UnknownJob, UserError
from node.home import init_identity, open_ledger, resolve_home
from node.requester.session import Session
from node.requester.verify import RESULT_FILE, verify_result_file
from protocol import JobResult
from scheduler.pricing import credits

EXAMPLES = {
    "result": "offload result 3f9c2a1b7d4e --out results",
    "logs": "offload logs 3f9c2a1b7d4e --follow",
    "cancel": "offload cancel 3f9c2a1b7d4e --json",
    "show": "offload show offload-out/3f9c2a1b7d4e/result.msgpack",
}
CONFIG_HELP = "requester.toml (else OFFLOAD_REQUESTER_CONFIG), for its bootstrap peers"


def register(sub: Any, cmd: Any) -> None:
    def common(c: argparse.ArgumentParser) -> None:
        c.add_argument("job", metavar="JOB", help="the job id, or its first 6+ characters")
        c.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
        c.add_argument("--bootstrap", action="append", default=None, metavar="MADDR")
        c.add_argument("--json", action="store_true")

    c = cmd("result", "fetch, verify and pay the result of a detached job (submit --detach)")
    common(c)
    c.add_argument("--out", type=Path, metavar="DIR",
                   help="save result.msgpack and outputs here (default offload-out/<job>)")
    c.add_argument("--wait", action="store_true",
                   help="wait for a job that still runs (else exit 3 saying so)")
    c = cmd("logs", "show a job's output: live from its provider, or from its saved result")
    common(c)
    c.add_argument("--follow", action="store_true",
                   help="keep showing output as it comes until the job ends")
    c = cmd("cancel", "stop a job on its provider; a detached one is settled here (its "
                      "charge for what it used paid, the rest of its escrow refunded)")
    common(c)
    c = cmd("show", "print a saved result: status, limits hit, stdout/stderr, outputs, "
                    "charge (no network)")
    c.add_argument("target", metavar="RESULT_FILE|JOB",
                   help="a result.msgpack, its folder, or a job id of this home")
    c.add_argument("--json", action="store_true")


def _session(args: argparse.Namespace) -> Session:
    return session_from(args, config=args.config)


def _record(core: Session, prefix: str) -> Any:
    from node.requester.detach import find_job

    ledger = core.payments.ledger
    assert ledger is not None
    return find_job(ledger.records(), prefix)


def cmd_result(args: argparse.Namespace) -> int:
    from node.cli.progress import Reporter
    from node.requester.detach import fetch_result

    core = _session(args)

    async def go() -> Any:
        with Reporter(follow=False, quiet=args.json) as show:
            core.emit = show
            async with core:
                report_swept(core.swept)
                record = _record(core, args.job)
                out = args.out or Path("offload-out") / record.job_id[:12]
                return await fetch_result(core, record, out, wait=args.wait, emit=show)

    got = trio.run(go)
    r = got.signed.message
    doc = {**_result_doc(r), "out_dir": str(got.out_dir), "verified": True,
           "refunded": credits(got.refunded)}
    emit(args, doc, _result_text(r, got.out_dir) + f"; paid {credits(got.charged)}, "
         f"refunded {credits(got.refunded)} credits")
    return 0 if r.status == "ok" else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from node.requester.detach import follow_logs

    core = _session(args)
    lines: list[dict[str, str]] = []
    shown = [False]

    def write(stream: str, text: str) -> None:
        shown[0] = True
        if args.json:
            lines.append({"stream": stream, "text": text})
            return
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(text)
        out.flush()

    async def go() -> Any:
        async with core:
            record = _record(core, args.job)
            saved = _saved(record)
            if saved is not None:
                return record, saved, False
            return record, await follow_logs(core, record, follow=args.follow,
                                             write=write), True

    record, signed, live = trio.run(go)
    r: JobResult | None = signed.message if signed is not None else None
    if r is not None and not (live and args.follow and shown[0]):
        write("stdout", r.stdout)
        write("stderr", r.stderr)
    state = r.status if r is not None else "running"
    if args.json:
        emit(args, {"job_id": record.job_id, "status": state, "output": lines}, "")
    elif r is None:
        print(f"offload: job {record.job_id[:12]} is still running"
              + ("" if args.follow else "; --follow keeps showing its output"),
              file=sys.stderr)
    return 0


def _saved(record: Any) -> Any:
    """The signed result saved with a job's files, if it was fetched."""
    path = Path(record.out_dir) / RESULT_FILE if record.out_dir else None
    if path is None or not path.is_file():
        return None
    return verify_result_file(path)


def cmd_cancel(args: argparse.Namespace) -> int:
    from node.requester.detach import cancel

    core = _session(args)

    async def go() -> Any:
        async with core:
            record = _record(core, args.job)
            if record.status not in ("running", "detached"):
                raise UserError(f"job {record.job_id[:12]} has ended ({record.status}); "
                                "nothing to cancel")
            return record, await cancel(core, record)

    record, signed = trio.run(go)
    if signed is None:
        emit(args, {"job_id": record.job_id, "status": "cancelled", "charge": credits(0)},
             f"job {record.job_id[:12]} cancelled; its provider kept no result, nothing "
             "was charged")
        return 0
    r = signed.message
    refunded = max(0, record.max_charge - r.price_charged)
    emit(args, {**_result_doc(r), "refunded": credits(refunded)},
         f"job {r.job_id[:12]} stopped on {r.provider[:16]}: {r.status} after "
         f"{r.usage.wall_s:.1f} s; charged {credits(r.price_charged)}, refunded "
         f"{credits(refunded)} credits")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = _result_path(args)
    signed = verify_result_file(path)
    r = signed.message
    doc = {**_result_doc(r), "file": str(path), "verified": True}
    if args.json:
        emit(args, doc, "")
        return 0
    print(_result_text(r, path.parent))
    for name, text, cut, dropped in (("stdout", r.stdout, r.stdout_truncated,
                                      r.stdout_dropped),
                                     ("stderr", r.stderr, r.stderr_truncated,
                                      r.stderr_dropped)):
        if text:
            print(f"--- {name}" + (f" (cut; {dropped:,} bytes dropped)" if cut else ""))
            print(text, end="" if text.endswith("\n") else "\n")
    for o in r.outputs:
        print(f"output {o.name}  {o.size:,} bytes  sha256 {o.sha256[:16]}  (intact)")
    return 0


def _result_path(args: argparse.Namespace) -> Path:
    target = Path(args.target)
    if target.is_dir():
        target = target / RESULT_FILE
    if target.is_file():
        return target
    home = resolve_home(args.home)
    identity, _ = init_identity(home)
    with open_ledger(home, identity) as ledger:
        from node.requester.detach import find_job

        try:
            record = find_job(ledger.records(), args.target)
        except UnknownJob:
            raise UserError(f"{args.target} is neither a result file, a folder holding "
                            "one, nor a job of this home") from None
    if not record.out_dir or not (Path(record.out_dir) / RESULT_FILE).is_file():
        hint = (f"run `offload result {record.job_id[:12]}` to fetch it"
                if record.status == "detached" else f"it is {record.status}")
        raise UserError(f"job {record.job_id[:12]} has no saved result here; {hint}")
    return Path(record.out_dir) / RESULT_FILE


def _result_doc(r: JobResult) -> dict[str, Any]:
    return {"job_id": r.job_id, "provider": r.provider, "status": r.status,
            "exit_code": r.exit_code, "limits_hit": list(r.limits_hit),
            "stdout": r.stdout, "stderr": r.stderr,
            "stdout_truncated": r.stdout_truncated, "stderr_truncated": r.stderr_truncated,
            "stdout_dropped": r.stdout_dropped, "stderr_dropped": r.stderr_dropped,
            "outputs": {o.name: o.sha256 for o in r.outputs},
            "charged": credits(r.price_charged), "wall_s": r.usage.wall_s,
            "cpu_s": r.usage.cpu_s}


def _result_text(r: JobResult, where: Path) -> str:
    hit = f", hit {', '.join(r.limits_hit)}" if r.limits_hit else ""
    return (f"verified result of job {r.job_id[:12]} from {r.provider[:16]}: {r.status} "
            f"(exit {r.exit_code}{hit}) in {r.usage.wall_s:.1f} s, charged "
            f"{credits(r.price_charged)} credits; {len(r.outputs)} output(s) in {where}")


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "result": cmd_result, "logs": cmd_logs, "cancel": cmd_cancel, "show": cmd_show,
}
