"""The job verbs of the `offload` command: submit, plan, map."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from node.errors import UserError
from node.home import init_identity, resolve_home
from protocol import Resources

EXAMPLES = {
    "submit": "offload submit examples/torch_demo.py --steps 50 --redundancy 2 "
              "--bootstrap /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... --out results",
    "plan": "offload plan examples/torch_demo.py --steps 50 --gflop 2000 --json",
    "map": "offload map examples/square.py --items items.txt --out squares --json",
}
OPTIONS_WITH_VALUE = {"--file", "--bootstrap", "--provider", "--timeout", "--out", "--config",
                      "--cpus", "--memory", "--disk", "--gpus", "--max-price", "--runtime",
                      "--where", "--redundancy", "--verify", "--tolerance", "--deadline",
                      "--gflop", "--items", "--workers", "--hold",
                      "--per-provider"}
FLAGS = {"--json", "-h", "--help", "--follow"}
SCRIPT_VERBS = ("submit", "plan", "map")


def _job_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("script", type=Path, metavar="SCRIPT")
    c.add_argument("--config", type=Path, metavar="FILE",
                   default=os.environ.get("OFFLOAD_REQUESTER_CONFIG"),
                   help="requester.toml: bootstrap, price caps, defaults; flags override it")
    c.add_argument("--file", action="append", default=[], type=Path, metavar="PATH",
                   help="an extra input file, placed beside the script")
    c.add_argument("--bootstrap", action="append", default=None, metavar="MADDR")
    c.add_argument("--timeout", type=int, metavar="S",
                   help="wall-clock limit of the job on the provider (default 600)")
    c.add_argument("--cpus", type=int, default=1, metavar="N")
    c.add_argument("--memory", type=float, default=2.0, metavar="GB")
    c.add_argument("--disk", type=float, default=1.0, metavar="GB",
                   help="size of the job's writable work dir (default 1)")
    c.add_argument("--gpus", type=int, default=0, metavar="N")
    c.add_argument("--where", metavar="EXPR",
                   help='only providers matching EXPR, e.g. \'gpu.memory >= 24 and '
                        'price.gpu_hour <= 2.5\'')
    c.add_argument("--runtime", metavar="NAME",
                   help="job runtime the provider must offer (see `offload offers --json`)")
    c.add_argument("--max-price", type=float, default=None, metavar="X",
                   help="most credits one job may cost")
    c.add_argument("--gflop", type=float, metavar="G",
                   help="the job's size in GFLOP (else a '# offload: gflop=G' comment, "
                        "else assumed)")
    c.add_argument("--json", action="store_true")


def register(sub: Any, cmd: Any) -> None:
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

    c = cmd("plan", "decide whether SCRIPT should run here, on a provider, or split")
    _job_options(c)
    c.add_argument("--items", type=int, metavar="N",
                   help="the job is N independent items and may be split")

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


def split_script_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """For submit/plan/map: our options anywhere; other words after SCRIPT go to it."""
    i = next((n for n, w in enumerate(argv) if w in SCRIPT_VERBS), None)
    if i is None:
        return list(argv), []
    ours, theirs = list(argv[: i + 1]), []
    rest = list(argv[i + 1:])
    seen_script = False
    while rest:
        word = rest.pop(0)
        name = word.split("=", 1)[0]
        if seen_script and word == "--":
            theirs += rest
            break
        if name in OPTIONS_WITH_VALUE:
            ours.append(word)
            if "=" not in word and rest:
                ours.append(rest.pop(0))
        elif name in FLAGS or not seen_script:
            ours.append(word)
            seen_script = seen_script or not word.startswith("-")
        else:
            theirs.append(word)
    return ours, theirs


@dataclasses.dataclass(frozen=True, slots=True)
class _Setup:
    request: Any
    requirements: Any
    bootstrap: list[str]
    identity: Any
    home: Path
    gflop: float


def _setup(args: argparse.Namespace, script_args: tuple[str, ...]) -> _Setup:
    from node.cli.main import _env_list, _where
    from node.config import load_requester
    from node.requester.exchange import JobRequest
    from node.requester.plan import script_hints
    from scheduler import Requirements

    where = _where(args.where)
    s = load_requester(args.config)
    timeout = args.timeout if args.timeout is not None else s.timeout_s
    if timeout < 1:
        raise UserError("--timeout must be at least 1 second")
    runtime = args.runtime or s.runtime
    home = resolve_home(args.home)
    identity, _ = init_identity(home)
    request = JobRequest(
        script=args.script, args=script_args, files=tuple(args.file),
        resources=Resources(gpus=args.gpus, cpus=args.cpus, max_seconds=timeout,
                            memory_mb=max(1, int(args.memory * 1024)),
                            disk_mb=max(1, int(args.disk * 1024))),
        max_price=(round(args.max_price * 1_000_000) if args.max_price is not None
                   else s.max_price),
        runtime=runtime, caps=s.caps)
    gflop = args.gflop if args.gflop is not None else script_hints(args.script).get("gflop", 0.0)
    return _Setup(request=request, bootstrap=list(
        args.bootstrap or _env_list("OFFLOAD_BOOTSTRAP") or list(s.bootstrap)),
        requirements=Requirements(cpus=1, gpus=args.gpus, runtime=runtime, where=where),
        identity=identity, home=home, gflop=gflop)


def _ledger(st: _Setup) -> Any:
    from node.cli.ledger import open_ledger

    return open_ledger(st.home, st.identity)


@dataclasses.dataclass(slots=True)
class _Session:
    host: Any
    disc: Any
    pay: Any
    suspect: list[Any] = dataclasses.field(default_factory=list)
    """Held payments refused when the session ended (their providers were caught)."""


@asynccontextmanager
async def _session(st: _Setup, peers: Any, show: Any) -> AsyncIterator[_Session]:
    """Host, DHT client, receipts gossip and payments for one command. Escrows that dead
    processes on this home left locked are swept, and held payments settle, on the way
    in; held payments settle and escrows still open are refunded on the way out."""
    from node.cli.ledger import report_swept
    from node.net.client import open_client
    from node.net.gossip import open_gossip, recorder
    from node.requester.escrows import Lease
    from node.requester.holds import HoldBook
    from node.requester.payments import Payments

    with _ledger(st) as ledger:
        async with open_client(st.identity, st.bootstrap) as (host, disc), \
                open_gossip(host, on_receipt=recorder(ledger)) as gossip:
            pay = Payments(ledger, host, emit=show, publish=gossip.publish,
                           holds=HoldBook.load(st.home), lease=Lease.open(st.home))
            session = _Session(host=host, disc=disc, pay=pay)
            try:
                report_swept(await pay.sweep(st.home))
                await pay.settle_holds(time.time(), peers.trust.strikes)
                yield session
            finally:
                await pay.settle_all()
                session.suspect = await pay.settle_holds(time.time(), peers.trust.strikes)
                pay.close()


def cmd_submit(args: argparse.Namespace) -> int:
    from node.cli.progress import Reporter
    from node.net.peers import PeerBook
    from node.requester.agreement import exact, numeric
    from node.requester.placement import (
        Placer,
        find_candidates,
        hold_seconds,
        job_estimate,
        verification_policy,
    )

    st = _setup(args, tuple(args.script_args))
    peers = PeerBook.load(st.home)
    policy = verification_policy(args.redundancy, args.verify, peers.trust,
                                 what="--redundancy")
    if args.tolerance is not None and not 0 <= args.tolerance < 1:
        raise UserError("--tolerance is relative: give a number like 1e-6, below 1")
    same = exact if args.tolerance is None else numeric(args.tolerance)
    deadline = args.deadline or 2.0 * st.request.resources.max_seconds + 60.0
    hold_s = hold_seconds(args.redundancy, args.verify, args.hold)
    if hold_s < 0:
        raise UserError("--hold must be 0 or more seconds")
    started = time.monotonic()
    out = args.out or Path("offload-out") / f".pending-{os.getpid()}"

    async def go() -> Any:
        with Reporter(follow=args.follow, quiet=args.json) as show:
            async with _session(st, peers, show) as s:
                ranked = await find_candidates(s.disc, st.requirements,
                                               job_estimate(st.request, gflop=st.gflop), peers,
                                               provider=args.provider,
                                               reputation=s.pay.reputations())
                placer = Placer(host=s.host, peers=peers, policy=policy, same=same,
                                canary=args.verify == "canary", rng=random.Random(),
                                replicas=args.redundancy, payments=s.pay, emit=show,
                                hold_s=hold_s)
                placement = await placer.place(ranked, st.request, out, deadline_s=deadline)
            return placement, s.pay.paid, s.suspect

    placement, paid, suspect = trio.run(go)
    outcome = placement.outcome
    r = outcome.result
    if args.out is None:
        final = Path("offload-out") / r.job_id[:12]
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
        outcome = dataclasses.replace(outcome, out_dir=final)
    doc = {"job_id": r.job_id, "provider": r.provider, "status": r.status,
           "exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
           "outputs": {o.name: o.sha256 for o in r.outputs}, "verified": True,
           "wall_s": round(time.monotonic() - started, 3), "out_dir": str(outcome.out_dir),
           "charged": r.price_charged, "quoted": outcome.quote.max_charge,
           "limits_hit": list(r.limits_hit), "verification": placement.verification,
           "replicas": [{"provider": x.provider, "job_id": x.job_id, "agreed": x.agreed}
                        for x in placement.replicas],
           "retries": [{"provider": a.provider, "error": a.error}
                       for a in placement.attempts],
           "canaries_passed": placement.canaries_passed,
           "paid": paid, "held_until": placement.held_until,
           "suspect": [h.job_id for h in suspect]}
    if args.json:
        print(json.dumps(doc))
    else:
        if not args.follow:
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
        agreed = sum(x.agreed for x in placement.replicas)
        extra = (f"; {agreed} of {len(placement.replicas)} providers agreed"
                 if len(placement.replicas) > 1 else "")
        moved = f"; {len(placement.attempts)} provider(s) replaced" if placement.attempts else ""
        print(f"verified result of job {r.job_id[:12]} from {r.provider[:16]}: {r.status} "
              f"(exit {r.exit_code}){extra}{moved}; {len(r.outputs)} output(s) in "
              f"{outcome.out_dir}", file=sys.stderr)
    return 0 if r.status == "ok" else 1


def cmd_plan(args: argparse.Namespace) -> int:
    from node.cli.ledger import report_swept
    from node.net.client import open_client
    from node.net.peers import PeerBook
    from node.requester.payments import Payments
    from node.requester.placement import job_estimate
    from node.requester.plan import local_capacity, make_plan, plan_json, script_hints
    from scheduler import meets

    st = _setup(args, tuple(args.script_args))
    items = args.items if args.items is not None else int(
        script_hints(args.script).get("items", 1))
    if items < 1:
        raise UserError("--items must be at least 1")
    peers = PeerBook.load(st.home)

    async def go() -> Any:
        local = await local_capacity(st.home)
        with _ledger(st) as ledger:
            async with open_client(st.identity, st.bootstrap) as (host, disc):
                report_swept(await Payments(ledger, host).sweep(st.home))
                ads = [a.message for a in await disc.find_ads("cpu", limit=50)]
                now_ms = int(disc.clock() * 1000)
            reputation = ledger.reputations()
        ads = [a for a in ads if meets(a, st.requirements, now_ms=now_ms)
               and not peers.trust.is_blacklisted(a.peer_id, now_ms / 1000)]
        return make_plan(job_estimate(st.request, gflop=st.gflop), local, ads,
                         peers.observations(reputation), items=items, now_ms=now_ms)

    plan, ranked = trio.run(go)
    doc = plan_json(plan)
    doc["offers"] = len(ranked)
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{plan.decision}: {plan.reason}")
        for part in plan.chosen.parts:
            print(f"  {part.peer[:16]:16}  {part.items:6d} item(s)  {part.seconds:10.2f} s  "
                  f"{part.cost_credits:.6f} credits")
    return 0


def cmd_map(args: argparse.Namespace) -> int:
    from node.cli.progress import Reporter
    from node.net.peers import PeerBook
    from node.requester.mapper import run_map
    from node.requester.placement import find_candidates, job_estimate

    try:
        items = [line.rstrip("\n") for line in args.items.read_text().splitlines()]
    except OSError as exc:
        raise UserError(f"cannot read --items {args.items}: {exc.strerror}") from None
    items = [i for i in items if i.strip()]
    if not items:
        raise UserError(f"{args.items} has no items; put one per line")
    st = _setup(args, tuple(args.script_args))
    requests = [dataclasses.replace(st.request, args=(*st.request.args, item))
                for item in items]
    peers = PeerBook.load(st.home)
    started = time.monotonic()

    async def go() -> Any:
        with Reporter(quiet=args.json) as show:
            async with _session(st, peers, show) as s:
                ranked = await find_candidates(s.disc, st.requirements,
                                               job_estimate(st.request, gflop=st.gflop), peers,
                                               reputation=s.pay.reputations())
                report = await run_map(s.host, ranked, requests, args.out, peers=peers,
                                       max_workers=max(1, args.workers),
                                       per_provider=max(1, args.per_provider),
                                       payments=s.pay, emit=show)
            return report, s.pay.paid

    report, paid = trio.run(go)
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
           "paid": paid,
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


COMMANDS = {"submit": cmd_submit, "plan": cmd_plan, "map": cmd_map}
