"""The requester verbs of the `offload` command: offers, submit, plan, map.

Each builds the one job description from its flags, runs it through the requester core
(node.requester.session) and only formats what comes back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from node.cli.common import emit, job_from, report_swept, session_from
from node.errors import UserError
from node.requester.session import Job, Session
from protocol import CapacityAd
from scheduler.pricing import credits

log = logging.getLogger(__name__)


def credit_text(amount: float) -> str | None:
    """An estimate in credits as the ledger writes amounts (None when unbounded)."""
    return f"{amount:.6f}" if amount == amount and abs(amount) != float("inf") else None

FRESH_HELP = ("search the DHT now instead of answering from the offer cache under the home "
              "(verified ads kept until they expire)")
EXAMPLES = {
    "offers": "offload offers --bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... --json",
    "submit": "offload submit examples/torch_demo.py --steps 50 --redundancy 2 "
              "--bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... --out results",
    "plan": "offload plan examples/torch_demo.py --steps 50 --gflop 2000 --json",
    "map": "offload map examples/square.py --items items.txt --out squares --json",
}


CONFIG_HELP = ("requester.toml: bootstrap, price caps, defaults (else "
               "OFFLOAD_REQUESTER_CONFIG); flags override it")


def _job_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("script", type=Path, metavar="SCRIPT",
                   help="the Python script to run (checked here before any network)")
    c.add_argument("script_args", nargs="*", default=[], metavar="ARGS",
                   help="words for SCRIPT: whatever follows it that is not an option of "
                        "ours (after `--`, everything)")
    c.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    c.add_argument("--file", action="append", default=[], type=Path, metavar="PATH",
                   help="an extra input file, placed beside the script (repeatable)")
    c.add_argument("--include", action="append", default=[], type=Path, metavar="PATH",
                   help="a local .py module or package folder the script imports, shipped "
                        "with it and put on its sys.path (repeatable)")
    c.add_argument("--needs-package", action="append", default=[], metavar="SPEC",
                   help="only providers whose runtime has this package, e.g. numpy>=2 "
                        "(repeatable)")
    c.add_argument("--bootstrap", action="append", default=None, metavar="MADDR")
    c.add_argument("--timeout", type=int, metavar="S",
                   help="wall-clock limit of the job on the provider (default 600)")
    c.add_argument("--cpus", type=int, default=1, metavar="N",
                   help="cpus the job needs; only providers with at least N (default 1)")
    c.add_argument("--memory", type=float, default=2.0, metavar="GB",
                   help="memory the job may use, GiB; only providers with that much "
                        "(default 2)")
    c.add_argument("--disk", type=float, default=1.0, metavar="GB",
                   help="size of the job's writable work dir, GiB (default 1)")
    c.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="CUDA GPUs the job needs; only providers with at least N (default 0)")
    c.add_argument("--where", metavar="EXPR",
                   help='only providers matching EXPR, e.g. \'gpu.memory >= 24 and '
                        'price.gpu_hour <= 2.5\'')
    c.add_argument("--runtime", metavar="NAME",
                   help="job runtime the provider must offer (see `offload offers --json`)")
    c.add_argument("--max-price", type=float, default=None, metavar="X",
                   help="most credits one job may cost")
    c.add_argument("--output-cap", type=int, default=0, metavar="BYTES",
                   help="most bytes of stdout (and of stderr) in the result, within the "
                        "provider's 65536 (default: the provider's); the rest is counted")
    c.add_argument("--full-output", action="store_true",
                   help="also bring the whole stdout and stderr back as files in the out dir")
    c.add_argument("--gflop", type=float, metavar="G",
                   help="the job's size in GFLOP (else a '# offload: gflop=G' comment, "
                        "else measured here, within the job's timeout)")
    c.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    c.add_argument("--json", action="store_true")


def register(sub: Any, cmd: Any) -> None:
    c = cmd("offers", "list verified provider ads found through the DHT")
    c.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    c.add_argument("--bootstrap", action="append", default=None, metavar="MADDR")
    c.add_argument("--where", metavar="EXPR",
                   help='keep offers matching EXPR, e.g. \'cpus >= 4 and tier == "A"\'')
    c.add_argument("--limit", type=int, default=20, metavar="N",
                   help="show at most N offers, best first (default 20)")
    c.add_argument("--cpus", type=int, default=1, metavar="N",
                   help="score offers for a job of N cpus (default 1)")
    c.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="score offers for a job of N GPUs (default 0)")
    c.add_argument("--timeout", type=int, default=600, metavar="S",
                   help="score offers for a job of at most S seconds (default 600)")
    c.add_argument("--fresh", action="store_true", help=FRESH_HELP)
    c.add_argument("--json", action="store_true")

    c = cmd("submit", "offload SCRIPT [ARGS]... to a provider and verify its signed result")
    _job_options(c)
    c.add_argument("--provider", metavar="PEER", help="use this provider's peer id")
    c.add_argument("--out", type=Path, metavar="DIR",
                   help="save result.msgpack and outputs here (default offload-out/<job>)")
    c.add_argument("--redundancy", type=int, default=1, metavar="K",
                   help="run on K providers at once and accept the result a majority agree "
                        "on (more providers are asked while none has one)")
    c.add_argument("--verify", choices=("none", "adaptive", "canary"), default="none",
                   help="adaptive: replicate by the provider's earned trust; canary: send a "
                        "job with a known answer along with it")
    c.add_argument("--tolerance", type=float, metavar="REL",
                   help="replicas agree when numbers differ by at most REL (relative); "
                        "default: byte-identical")
    c.add_argument("--deadline", type=float, metavar="S",
                   help="give up after S seconds, retries included (default 2 x timeout)")
    c.add_argument("--hold", type=float, metavar="S",
                   help="with --verify adaptive: pay a result no second provider checked "
                        "only after S seconds, if its provider was not caught cheating "
                        "meanwhile (default 600; settled by later submit/map runs)")
    c.add_argument("--follow", action="store_true",
                   help="stream the job's stdout/stderr while it runs (Ctrl-C cancels the "
                        "job on the provider and refunds it)")
    c.add_argument("--detach", action="store_true",
                   help="return the job id once the provider runs it; then `offload logs`, "
                        "`offload result` or `offload cancel` it from any process")

    c = cmd("plan", "decide whether SCRIPT should run here, on a provider, or split")
    _job_options(c)
    c.add_argument("--items", type=int, metavar="N",
                   help="the job is N independent items and may be split")
    c.add_argument("--model", metavar="NAME",
                   help="SCRIPT defines NAME, a torch nn.Sequential (or a function making "
                        "one): print where to cut it between here and a provider")
    c.add_argument("--input-shape", metavar="DIMS",
                   help="with --model: the example input's shape, e.g. 1,3,64,64 (float32)")
    c.add_argument("--objective", choices=("latency", "cost", "energy"), default="latency",
                   help="with --model: what the cut minimises (default latency)")

    c = cmd("map", "run SCRIPT once per line of --items FILE across providers")
    _job_options(c)
    c.add_argument("--items", type=Path, required=True, metavar="FILE",
                   help="one item per line; each run gets its line as the last argument")
    c.add_argument("--out", type=Path, default=Path("offload-out/map"), metavar="DIR",
                   help="item i's outputs go to DIR/i (default offload-out/map)")
    c.add_argument("--workers", type=int, default=4, metavar="N",
                   help="use at most N providers (default 4)")
    c.add_argument("--per-provider", type=int, default=2, metavar="N",
                   help="jobs each provider runs at once (default 2)")


def _ad_json(ad: CapacityAd) -> dict[str, Any]:
    """The ad as JSON, its prices in credits (decimal strings, as everywhere)."""
    doc = ad.to_wire()
    doc["price"] = {k: credits(v) for k, v in ad.price.to_wire().items()}
    return doc


def cmd_offers(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    core = session_from(args, config=args.config)
    core.where(args.where)
    options = dict(cpus=args.cpus, gpus=args.gpus, timeout=args.timeout, limit=args.limit)

    async def find() -> Any:
        async with core:
            report_swept(core.swept)
            return await core.offers(args.where, **options)

    found = core.cached_offers(args.where, **options)
    if found is None:
        log.info("searching the DHT for offers")
        found = trio.run(find)
    else:
        ago = time.time() - (found.cached_at or 0.0)
        log.info("offers from the offer cache (searched %.0f s ago; --fresh searches the "
                 "DHT)", ago)
    _print_offers(args, found)
    if found.cached_at is not None and core.offers_due():
        sys.stdout.flush()  # the answer is out: refresh the cache for the next command
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        log.info("refreshing the offer cache")
        trio.run(find)
    return 0


def _print_offers(args: argparse.Namespace, found: Any) -> None:
    if found.shortfall:  # stdout stays the offers (a JSON list with --json)
        print(f"offload: warning: {found.shortfall}", file=sys.stderr)
    docs = []
    for o in found.offers:
        doc = _ad_json(o.ad)
        doc["score"] = {k: (round(v, 6) if v == v and abs(v) != float("inf") else None)
                        for k, v in dataclasses.asdict(o.score).items()}
        doc["score"]["cost_credits"] = credit_text(o.score.cost_credits)
        doc["banned"] = o.banned
        docs.append(doc)
    lines = [f"{a.peer_id}  tier={a.sandbox_tier}  cpus={a.cpus}  mem={a.memory_mb}MB  "
             f"load={a.load:.2f}  cost={p.cost_credits:.6f}  time={p.seconds:.1f}s  "
             f"rtt={p.rtt_ms:.1f}ms  score={p.total:.6f}"
             for a, p in ((o.ad, o.score) for o in found.offers)]
    emit(args, docs, "\n".join(lines) or "no offers found")


def _core(args: argparse.Namespace) -> Session:
    return session_from(args, config=args.config)


def cmd_submit(args: argparse.Namespace) -> int:
    from node.cli.progress import Reporter

    job = job_from(args)
    core = _core(args)
    core.check(job)
    started = time.monotonic()
    if args.detach:
        return _submit_detached(args, job, core)

    async def go() -> Any:
        with Reporter(follow=args.follow, quiet=args.json) as show:
            core.emit = show
            async with core:
                report_swept(core.swept)
                if args.out is not None:
                    placement = await core.place(job, args.out)
                else:
                    placement = await core.place_under(job, Path("offload-out"))
            return placement

    placement = trio.run(go)
    paid, suspect = core.paid, core.suspect
    outcome = placement.outcome
    r = outcome.result
    doc = {"job_id": r.job_id, "provider": r.provider, "status": r.status,
           "exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
           "stdout_truncated": r.stdout_truncated, "stderr_truncated": r.stderr_truncated,
           "stdout_dropped": r.stdout_dropped, "stderr_dropped": r.stderr_dropped,
           "outputs": {o.name: o.sha256 for o in r.outputs}, "verified": True,
           "wall_s": round(time.monotonic() - started, 3), "out_dir": str(outcome.out_dir),
           "charged": credits(r.price_charged), "quoted": credits(outcome.quote.max_charge),
           "limits_hit": list(r.limits_hit), "verification": placement.verification,
           "replicas": [{"provider": x.provider, "job_id": x.job_id, "agreed": x.agreed}
                        for x in placement.replicas],
           "retries": [{"provider": a.provider, "error": a.error}
                       for a in placement.attempts],
           "canaries_passed": placement.canaries_passed, "route": outcome.route,
           "output_route": outcome.output_route,
           "paid": credits(paid), "held_until": placement.held_until,
           "suspect": [h.job_id for h in suspect]}
    if args.json:
        print(json.dumps(doc))
    else:
        if not args.follow:
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
        from protocol.messages import FULL_OUTPUT

        for name, cut, dropped, kept in (("stdout", r.stdout_truncated, r.stdout_dropped,
                                          r.stdout), ("stderr", r.stderr_truncated,
                                                      r.stderr_dropped, r.stderr)):
            whole = FULL_OUTPUT[name]
            if cut:
                print(f"offload: {name} was cut at {len(kept.encode()):,} bytes, "
                      f"{dropped:,} more dropped (the output cap); " + (
                          f"all of it is in {outcome.out_dir / whole}"
                          if any(o.name == whole for o in r.outputs)
                          else "write big output to a file in out/"), file=sys.stderr)
        agreed = sum(x.agreed for x in placement.replicas)
        extra = (f"; {agreed} of {len(placement.replicas)} providers agreed"
                 if len(placement.replicas) > 1 else "")
        moved = f"; {len(placement.attempts)} provider(s) replaced" if placement.attempts else ""
        print(f"verified result of job {r.job_id[:12]} from {r.provider[:16]}: {r.status} "
              f"(exit {r.exit_code}){extra}{moved}; {len(r.outputs)} output(s) in "
              f"{outcome.out_dir}", file=sys.stderr)
    return 0 if r.status == "ok" else 1


def _submit_detached(args: argparse.Namespace, job: Job, core: Session) -> int:
    from node.cli.progress import Reporter
    from node.requester.detach import submit_detached

    if args.follow:
        raise UserError("--follow and --detach exclude each other; `offload logs JOB "
                        "--follow` follows a detached job")

    async def go() -> Any:
        with Reporter(follow=False, quiet=args.json) as show:
            core.emit = show
            async with core:
                report_swept(core.swept)
                return await submit_detached(core, job)

    d = trio.run(go)
    emit(args, {"job_id": d.job_id, "provider": d.provider, "detached": True,
                "quoted": credits(d.quote.max_charge), "keep_s": d.keep_s},
         d.job_id)
    if not args.json:
        print(f"offload: job {d.job_id[:12]} runs on {d.provider[:16]} without this process "
              f"(its result is kept {d.keep_s // 3600} h after it ends); `offload logs "
              f"{d.job_id[:12]} --follow`, `offload result {d.job_id[:12]}`, `offload "
              f"cancel {d.job_id[:12]}`", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from node.requester.plan import local_capacity, measure_gflop, plan_json, script_hints

    if args.model is not None:
        return _plan_model(args)

    job = job_from(args)
    core = _core(args)
    request = core.check(job)
    hints = script_hints(args.script)
    items = args.items if args.items is not None else int(hints.get("items", 1))
    if items < 1:
        raise UserError("--items must be at least 1")
    measured = None
    if job.gflop is None and "gflop" not in hints:  # no size given: measure one run here
        local = trio.run(local_capacity, core.home)
        measured = measure_gflop(request.script, request.args, request.files, local,
                                 cpus=job.cpus, gpus=job.gpus,
                                 timeout_s=request.resources.max_seconds)
        job = dataclasses.replace(job, gflop=max(measured.gflop, 1e-6))

    async def go() -> Any:
        async with core:
            report_swept(core.swept)
            return await core.plan(job, items=items)

    plan, ranked = trio.run(go)
    doc = plan_json(plan)
    doc["offers"] = len(ranked)
    if measured is not None:
        doc["measured"] = {"seconds": round(measured.seconds, 4),
                           "finished": measured.finished}
    if args.json:
        print(json.dumps(doc))
    else:
        if measured is not None:
            print(f"measured here: {measured.gflop:.3g} GFLOP in {measured.seconds:.3f} s"
                  + ("" if measured.finished else " (stopped there: at least that much)"))
        print(f"{plan.decision}: {plan.reason}")
        for part in plan.chosen.parts:
            print(f"  {part.peer[:16]:16}  {part.items:6d} item(s)  {part.seconds:10.2f} s  "
                  f"{part.cost_credits:.6f} credits")
    return 0


def _plan_model(args: argparse.Namespace) -> int:
    """`plan SCRIPT --model NAME --input-shape DIMS`: the cut table of split()."""
    import importlib.util

    job = job_from(args)
    if not args.input_shape:
        raise UserError("--model needs --input-shape DIMS (e.g. 1,3,64,64)")
    try:
        shape = [int(d) for d in args.input_shape.split(",")]
    except ValueError:
        raise UserError(f"--input-shape {args.input_shape!r}: comma-separated sizes") from None
    if not shape or any(not 0 < d <= 1 << 20 for d in shape) or len(shape) > 8:
        raise UserError("--input-shape: 1 to 8 sizes, each from 1 to 1048576")
    spec = importlib.util.spec_from_file_location("offload_plan_model", job.script)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot load {job.script} as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch

    from node.api.split import split

    model = getattr(module, args.model, None)
    if model is not None and not isinstance(model, torch.nn.Module) and callable(model):
        model = model()
    if model is None:
        raise UserError(f"{job.script} defines no {args.model!r}")
    options = {"home": args.home, "config": args.config, "bootstrap": args.bootstrap,
               "cpus": job.cpus, "memory_gb": job.memory_gb, "max_price": job.max_price,
               "where": job.where}
    with split(model, torch.randn(shape), objective=args.objective,
               **{k: v for k, v in options.items() if v is not None}) as sm:
        plan = sm.plan
        doc = plan.to_json()
        doc["measured_ms"] = {k: round(v * 1e3, 3) for k, v in sm.measured_s.items()}
    if args.json:
        print(json.dumps(doc))
        return 0
    print("\n".join(plan.table()))
    print(f"cut {plan.chosen.k} of {len(plan.cuts) - 1} ({plan.reason}); power: "
          f"{plan.power.source}")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from node.cli.progress import Reporter

    try:
        items = [line.rstrip("\n") for line in args.items.read_text().splitlines()]
    except OSError as exc:
        raise UserError(f"cannot read --items {args.items}: {exc.strerror}") from None
    items = [i for i in items if i.strip()]
    if not items:
        raise UserError(f"{args.items} has no items; put one per line")
    job = job_from(args)
    core = _core(args)
    core.check(job)
    jobs = [dataclasses.replace(job, args=(*job.args, item)) for item in items]
    started = time.monotonic()

    async def go() -> Any:
        with Reporter(quiet=args.json) as show:
            core.emit = show
            async with core:
                report_swept(core.swept)
                report = await core.map(jobs, args.out, workers=args.workers,
                                        per_provider=args.per_provider)
            return report

    report = trio.run(go)
    paid = core.paid
    rows = []
    for item, res in zip(items, report.items, strict=True):
        r = res.outcome.result if res.outcome else None
        rows.append({"index": res.index, "item": item, "ok": r is not None and r.status == "ok",
                     "provider": r.provider if r else None, "job_id": r.job_id if r else None,
                     "status": r.status if r else "failed",
                     "exit_code": r.exit_code if r else None,
                     "stdout": r.stdout if r else "", "error": res.error,
                     "out_dir": str(res.outcome.out_dir) if res.outcome else None})
    failed = sum(not row["ok"] for row in rows)
    doc = {"items": rows, "workers": list(report.workers), "duplicates": report.duplicates,
           "paid": credits(paid),
           "retries": report.retries, "failed": failed,
           "wall_s": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(doc))
    else:
        for row in rows:
            where = (row["provider"] or "-")[:16]
            first = (row["stdout"] or row["error"] or "").strip().splitlines()[:1]
            print(f"{row['index']:5d}  {row['status']:8}  {where:16}  {' '.join(first)}")
        print(f"{len(rows) - failed} of {len(rows)} item(s) done on {len(report.workers)} "
              f"provider(s); {report.retries} retried, {report.duplicates} straggler copies",
              file=sys.stderr)
    return 0 if failed == 0 else 1


COMMANDS = {"offers": cmd_offers, "submit": cmd_submit, "plan": cmd_plan, "map": cmd_map}
