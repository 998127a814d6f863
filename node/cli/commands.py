"""The `offload` parser and its table of verbs; this node's own verbs (init, id, provide,
relay, verify, demo, sandbox, runtime, status). Requester verbs are in jobs.py, the ledger's in
ledger.py, `offload sessions` in sessions.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import trio

from node.cli import control as control_cli
from node.cli import jobs as jobs_cli
from node.cli import ledger as ledger_cli
from node.cli import sessions as sessions_cli
from node.cli.common import bootstrap, emit
from node.config import resolve
from node.errors import UsageError
from node.home import init_identity, load_identity, resolve_home
from scheduler.pricing import credits

EXAMPLES = {
    **jobs_cli.EXAMPLES,
    **sessions_cli.EXAMPLES,
    **control_cli.EXAMPLES,
    "init": "offload init",
    "id": "offload id --json",
    "provide": "offload provide --listen /ip4/127.0.0.1/tcp/4001 --ready-file ready.json",
    "relay": "offload relay --listen /ip4/0.0.0.0/tcp/4001 --ready-file relay.json",
    "verify": "offload verify results/result.msgpack",
    "demo": "offload demo --providers 3",
    "sandbox": "offload sandbox check --json",
    "runtime": "offload runtime install",
    "status": "offload --home ~/.local/share/offload status --json",
}


JSON_HELP = "print one JSON document on stdout (an error too: {\"error\": {code, message}})"
BOOTSTRAP_HELP = ("a peer of the network to join, /ip4/.../tcp/N/p2p/ID (repeatable; "
                  "else OFFLOAD_BOOTSTRAP)")


class Parser(argparse.ArgumentParser):
    """argparse that raises UsageError (so `--json` can report it) and gives `--json` and
    `--bootstrap` their help line wherever a verb adds them."""

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        if kwargs.get("help") is None:
            kwargs.update({"--json": {"help": JSON_HELP},
                           "--bootstrap": {"help": BOOTSTRAP_HELP}}.get(names[0], {}))
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        verb = self.prog.removeprefix("offload").strip()
        raise UsageError(f"{verb + ': ' if verb else ''}{message} (see `{self.prog} --help`)")


class ScriptHelp(argparse.RawDescriptionHelpFormatter):
    """Usage as `... SCRIPT [ARGS]...`: the script's own words follow it."""

    def _format_usage(self, *args: Any) -> str:
        return super()._format_usage(*args).replace("[ARGS ...]", "[ARGS]...")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("offload")
    except PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


class Version(argparse.Action):
    """--version, with the installed version looked up (importlib.metadata) only when asked."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"offload {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="offload", description="Offload compute jobs to providers found over libp2p.",
        epilog="Every global flag has an OFFLOAD_* environment variable "
               "(OFFLOAD_HOME, OFFLOAD_BOOTSTRAP). OFFLOAD_DEBUG=1 shows tracebacks.")
    p.add_argument("--version", action=Version, help="print offload's version and exit")
    p.add_argument("--home",
                   help="node home (identity, jobs); default: the platform's data dir")
    p.add_argument("--log-format", choices=("text", "json"),
                   help="logs on stderr as text lines or one JSON object per line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_,
                              epilog=f"example: {EXAMPLES[name]}", formatter_class=ScriptHelp)

    c = cmd("init", "create this node's identity key if it has none")
    c.add_argument("--json", action="store_true")
    c = cmd("id", "print this node's peer id and public key")
    c.add_argument("--json", action="store_true")

    c = cmd("provide", "run a provider daemon in the foreground (SIGINT/SIGTERM stops it)")
    c.add_argument("--listen", action="append", default=None, metavar="MADDR",
                   help="address to listen on (repeatable; default: the config's, else "
                        "/ip4/127.0.0.1/tcp/0)")
    c.add_argument("--bootstrap", action="append", default=None, metavar="MADDR")
    c.add_argument("--ready-file", type=Path, metavar="F",
                   help='write {"peer_id", "addrs"} here once listening and advertised')
    c.add_argument("--config", type=Path, metavar="FILE",
                   help="provider.toml (see configs/); flags given here override it")
    c.add_argument("--slots", type=int, metavar="N", help="jobs at once (default 2)")
    c.add_argument("--queue", type=int, metavar="N",
                   help="admitted jobs that may wait for a slot (default 8)")
    c.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="Prometheus metrics on loopback (default: a free port; '' disables)")
    c.add_argument("--drain-timeout", type=float, metavar="S",
                   help="on SIGTERM, how long running jobs may finish (default 60)")
    c.add_argument("--warm", type=int, metavar="N",
                   help="pre-started sandboxed interpreters with torch imported (default 1)")
    c.add_argument("--no-benchmark", action="store_true",
                   help="do not measure throughput (ads then carry none)")
    c.add_argument("--sandbox-tier", choices=("auto", "A", "B"),
                   help="isolation to prove at start: A (bubblewrap), B (Landlock), or auto "
                        "(A, else B)")
    c.add_argument("--unsafe-no-sandbox", action="store_true",
                   help="run jobs WITHOUT isolation if tier A cannot be proved (ad says so)")
    c.add_argument("--relay-service", action="store_true",
                   help="also relay for providers behind NATs (circuit relay v2), as "
                        "`offload relay` does; for public providers")
    c.add_argument("--reachability", choices=("auto", "public", "private"),
                   help="auto (default): ask AutoNAT; private: always reserve relay slots "
                        "and advertise only circuit addresses; public: never")

    c = cmd("relay", "run a public relay (circuit relay v2, AutoNAT, DHT server); no jobs")
    c.add_argument("--listen", action="append", default=None, metavar="MADDR",
                   help="address to listen on (repeatable; default /ip4/0.0.0.0/tcp/4001)")
    c.add_argument("--bootstrap", action="append", default=None, metavar="MADDR")
    c.add_argument("--ready-file", type=Path, metavar="F",
                   help='write {"peer_id", "addrs"} here once listening')
    c.add_argument("--circuit-mib", type=_circuit_mib, metavar="N",
                   help="most MiB one circuit carries, both ways together (default 256); "
                        "bulk data waits for a direct connection")

    jobs_cli.register(sub, cmd)
    control_cli.register(sub, cmd)
    sessions_cli.register(sub, cmd)
    ledger_cli.register(sub)

    c = cmd("sandbox", "check or set up job isolation on this host")
    ss = c.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")
    s = ss.add_parser("check", help="run every escape probe inside the sandbox; exit 1 if any "
                      "escaped", epilog="example: offload sandbox check --json")
    s.add_argument("--json", action="store_true")
    s = ss.add_parser("setup", help="as root: create the job users and install the runtime",
                      epilog="example: sudo offload sandbox setup --users 4")
    s.add_argument("--users", type=int, default=4, metavar="N",
                   help="how many job users (one per job slot) to create (default 4)")
    s.add_argument("--json", action="store_true")

    c = cmd("runtime", "install or describe the job runtime (a venv the job users can run)")
    rs = c.add_subparsers(dest="runtime_command", required=True, metavar="ACTION")
    r = rs.add_parser("install", help="as root: build /opt/offload/runtimes/python3 with torch",
                      epilog="example: sudo offload runtime install")
    r.add_argument("--json", action="store_true")
    r = rs.add_parser("show", help="print the installed runtime's manifest",
                      epilog="example: offload runtime show --json")
    r.add_argument("--json", action="store_true")

    c = cmd("status", "show the provider running with this home: slots, queue, jobs, earnings")
    c.add_argument("--json", action="store_true")

    c = cmd("verify", "check a saved result offline: signature and output digests (or a "
            "session's signed result, see `offload sessions`)")
    c.add_argument("result", type=Path, metavar="RESULT_FILE",
                   help="a result.msgpack that `offload submit` saved, or a session's file")
    c.add_argument("--json", action="store_true")

    c = cmd("demo", "start a local network and offload a torch job to it")
    c.add_argument("--providers", type=int, default=3, metavar="N",
                   help="local provider processes to start, 1 to 8 (default 3)")
    c.add_argument("--json", action="store_true")
    return p


def cmd_init(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    identity, created = init_identity(home)
    emit(args, {"peer_id": identity.peer_id, "home": str(home), "created": created},
          f"{'created' if created else 'existing'} identity {identity.peer_id} in {home}")
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    home = resolve_home(args.home)
    identity = load_identity(home)
    emit(args, {"peer_id": identity.peer_id, "public_key": identity.public_key.hex(),
                 "home": str(home)}, identity.peer_id)
    return 0


def cmd_provide(args: argparse.Namespace) -> int:
    from node.config import load_provider
    from node.provider.daemon import ProviderConfig, serve

    toml = resolve(args.config, "OFFLOAD_PROVIDER_CONFIG")
    s = load_provider(Path(toml) if toml else None)
    home = resolve_home(args.home)
    identity, _ = init_identity(home)

    def pick(flag: Any, setting: Any) -> Any:
        return setting if flag is None else flag

    tier = pick(args.sandbox_tier, s.sandbox_tier)
    config = ProviderConfig(
        home=home, listen=args.listen or list(s.listen),
        bootstrap=bootstrap(args) or list(s.bootstrap), ready_file=args.ready_file,
        slots=pick(args.slots, s.slots), warm=pick(args.warm, s.warm),
        queue=pick(args.queue, s.queue), metrics_listen=pick(args.metrics_listen,
                                                             s.metrics_listen),
        drain_timeout_s=pick(args.drain_timeout, s.drain_timeout_s), price=s.price,
        region=s.region, max_seconds=s.max_job_seconds, quote_hold_s=s.quote_hold_s,
        unsafe_no_sandbox=args.unsafe_no_sandbox or s.unsafe_no_sandbox,
        benchmark_interval_s=None if args.no_benchmark else float(s.benchmark_interval_s),
        cache_dir=Path(s.cache_dir) if s.cache_dir else None,
        cache_max_bytes=int(s.cache_max_gb * 10**9), limits=s.limits,
        jobs_per_peer=s.jobs_per_peer or None, detached_keep_s=float(s.detached_keep_s),
        detached_max_bytes=int(s.detached_max_gb * 10**9),
        sandbox_tiers=("A", "B") if tier == "auto" else (tier,),
        relay_service=args.relay_service, reachability=args.reachability or "auto")
    trio.run(serve, config, identity)
    return 0


def _circuit_mib(text: str) -> int:
    try:
        mib = int(text)
    except ValueError:
        mib = 0
    if not 1 <= mib <= 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of MiB, 1 to 65536")
    return mib


def cmd_relay(args: argparse.Namespace) -> int:
    from node.net.nat import RelayLimits
    from node.net.relay import serve_relay

    home = resolve_home(args.home)
    identity, _ = init_identity(home)
    limits = (RelayLimits(circuit_bytes=args.circuit_mib * 2**20)
              if args.circuit_mib else None)
    trio.run(partial(serve_relay, identity, args.listen or ["/ip4/0.0.0.0/tcp/4001"],
                     bootstrap=bootstrap(args), ready_file=args.ready_file,
                     relay_limits=limits))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from node.errors import ResultRejected
    from node.requester.verify import is_session_file, verify_result_file

    if is_session_file(args.result):
        return _verify_session(args)
    try:
        signed = verify_result_file(args.result)
    except ResultRejected as exc:
        emit(args, {"valid": False, "reason": str(exc)}, f"INVALID: {exc}")
        return 1
    r = signed.message
    emit(args, {"valid": True, "job_id": r.job_id, "provider": r.provider,
                 "outputs": len(r.outputs)},
          f"valid: job {r.job_id[:12]} signed by {r.provider}, {len(r.outputs)} output(s) intact")
    return 0


def _verify_session(args: argparse.Namespace) -> int:
    from node.errors import ResultRejected
    from node.requester.verify import verify_session_file

    try:
        signed = verify_session_file(args.result)
    except ResultRejected as exc:
        emit(args, {"valid": False, "reason": str(exc)}, f"INVALID: {exc}")
        return 1
    r = signed.message
    emit(args, {"valid": True, "session_id": r.job_id, "provider": r.provider,
                 "requester": r.requester, "calls": r.calls, "status": r.status,
                 "charge": credits(r.price_charged), "transcript": r.transcript},
          f"valid: session {r.job_id[:12]} signed by {r.provider}, {r.calls} call(s), "
          f"status {r.status}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from node.cli.demo import run_demo

    doc = run_demo(args.providers)
    if args.json:
        print(json.dumps({k: doc[k] for k in ("providers", "job_id", "provider", "verified",
                                              "status", "exit_code", "stdout", "wall_s")}))
    else:
        print(f"{len(doc['providers'])} providers on loopback; job {doc['job_id'][:12]} ran on "
              f"{doc['provider'][:16]} ({doc['status']}, exit {doc['exit_code']}, "
              f"{doc['wall_s']:.1f} s), signature and outputs verified")
        print(doc["stdout"], end="")
    return 0 if doc["exit_code"] == 0 else 1


def cmd_sandbox(args: argparse.Namespace) -> int:
    from node.provider.sandbox import commands

    if args.sandbox_command == "setup":
        doc = commands.setup(users_count=args.users)
        emit(args, doc, f"job users: {', '.join(doc['users'])}; runtime "
                         f"{doc['runtime']['name']} at {doc['runtime']['path']}")
        return 0
    home = resolve_home(args.home)
    report = trio.run(commands.full_check, home)
    if args.json:
        print(json.dumps(report))
    else:
        print(commands.format_report(report))
    return 0 if report["tier"] == "A" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from node.provider.status import format_status, read_status, shown

    doc = shown(read_status(resolve_home(args.home), now=time.time()))
    emit(args, doc, format_status(doc))
    return 0 if doc["running"] else 1


def cmd_runtime(args: argparse.Namespace) -> int:
    from node.provider.sandbox import runtime

    info = runtime.install() if args.runtime_command == "install" else runtime.describe()
    doc = {"name": info.name, "path": str(info.path), "python": info.python,
           "packages": info.packages, "digest": info.digest}
    emit(args, doc, f"{info.name}: python {info.python}, "
                     + ", ".join(f"{k} {v}" for k, v in info.packages.items())
                     + f" ({info.path})")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    **jobs_cli.COMMANDS,
    **ledger_cli.COMMANDS,
    **sessions_cli.COMMANDS,
    **control_cli.COMMANDS,
    "init": cmd_init, "id": cmd_id, "provide": cmd_provide, "relay": cmd_relay,
    "verify": cmd_verify, "demo": cmd_demo, "sandbox": cmd_sandbox,
    "runtime": cmd_runtime, "status": cmd_status,
}
