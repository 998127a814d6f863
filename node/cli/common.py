"""What the verb modules share: argv splitting, output, and the requester core from flags."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.config import resolve_list
from node.errors import UserError
from node.home import resolve_home
from node.requester.events import Emit, ignore
from node.requester.payments import Swept
from node.requester.session import Job, Session
from protocol.messages import MAX_OUTPUT_TEXT

OPTIONS_WITH_VALUE = {"--file", "--bootstrap", "--provider", "--timeout", "--out", "--config",
                      "--cpus", "--memory", "--disk", "--gpus", "--max-price", "--runtime",
                      "--where", "--redundancy", "--verify", "--tolerance", "--deadline",
                      "--gflop", "--items", "--workers", "--hold",
                      "--per-provider", "--output-cap", "--model", "--input-shape",
                      "--objective", "--include", "--needs-package"}
FLAGS = {"--json", "-h", "--help", "--follow", "--fresh", "--full-output", "--detach"}
SCRIPT_VERBS = ("submit", "plan", "map")


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


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    """One JSON document with --json, else the text."""
    print(json.dumps(doc) if getattr(args, "json", False) else text)


def bootstrap(args: argparse.Namespace, file: Sequence[str] = ()) -> list[str]:
    """--bootstrap, else OFFLOAD_BOOTSTRAP, else the config file's."""
    return resolve_list(args.bootstrap, "OFFLOAD_BOOTSTRAP", file)


def check_job(job: Job) -> None:
    """What submit/plan/map check before any network: the script and each --file is a
    readable file, and every size is in range (UserError names the option)."""
    from protocol.limits import MAX_CPUS, MAX_GPUS, MAX_JOB_SECONDS, MAX_MB

    for flag, path in [("SCRIPT", Path(job.script)), *(("--file", Path(f)) for f in job.files)]:
        what = "script" if flag == "SCRIPT" else "--file"
        if not path.exists():
            raise UserError(f"{what} {path}: no such file; check the path")
        if not path.is_file():
            raise UserError(f"{what} {path}: not a regular file; give a file, not a folder")
        if not os.access(path, os.R_OK):
            raise UserError(f"{what} {path}: not readable; check its permissions")
    for path in map(Path, job.include):
        if not (path.is_dir() or (path.is_file() and path.suffix == ".py")):
            raise UserError(f"--include {path}: give a .py module or a package folder")
    for spec in job.packages:
        from scheduler.requirements import package_spec

        try:
            package_spec(spec)
        except ValueError as exc:
            raise UserError(f"--needs-package {exc}") from None
    max_gb = MAX_MB / 1024
    for name, value, low, high in (("--cpus", job.cpus, 1, MAX_CPUS),
                                   ("--gpus", job.gpus, 0, MAX_GPUS)):
        if not low <= value <= high:
            raise UserError(f"{name} must be a whole number from {low} to {high}")
    for name, size in (("--memory", job.memory_gb), ("--disk", job.disk_gb)):
        if not (size == size and 0 < size <= max_gb):
            raise UserError(f"{name} is in GiB: give a number above 0 and at most "
                            f"{max_gb:.0f}")
    if not 0 <= job.output_cap <= MAX_OUTPUT_TEXT:
        raise UserError(f"--output-cap must be from 0 to {MAX_OUTPUT_TEXT} bytes (the most a "
                        "provider sends; --full-output brings the whole output as files)")
    if job.timeout is not None and not 1 <= job.timeout <= MAX_JOB_SECONDS:
        raise UserError(f"--timeout must be from 1 to {MAX_JOB_SECONDS} seconds (a week)")
    if job.max_price is not None and not (job.max_price == job.max_price
                                          and 0 <= job.max_price < float("inf")):
        raise UserError("--max-price is in credits: give 0 or more")


def job_from(args: argparse.Namespace) -> Job:
    """The one job description from submit/plan/map's flags, checked (`check_job`)."""
    job = _job_from(args)
    check_job(job)
    return job


def _job_from(args: argparse.Namespace) -> Job:
    return Job(args.script, args=tuple(args.script_args), files=tuple(args.file),
               gpus=args.gpus, cpus=args.cpus, memory_gb=args.memory, disk_gb=args.disk,
               timeout=args.timeout, max_price=args.max_price, runtime=args.runtime,
               where=args.where, provider=getattr(args, "provider", None),
               redundancy=getattr(args, "redundancy", 1),
               verify=getattr(args, "verify", "none"),
               tolerance=getattr(args, "tolerance", None),
               deadline=getattr(args, "deadline", None), gflop=args.gflop,
               hold=getattr(args, "hold", None),
               output_cap=getattr(args, "output_cap", 0) or 0,
               full_output=getattr(args, "full_output", False),
               include=tuple(getattr(args, "include", ()) or ()),
               packages=tuple(getattr(args, "needs_package", ()) or ()))


def session_from(args: argparse.Namespace, *, emit: Emit = ignore,
                 config: Path | None = None) -> Session:
    """The requester core for a verb: --home, --bootstrap (else OFFLOAD_BOOTSTRAP, else
    the config's), the config's defaults, --fresh; errors name the flags (`--timeout ...`)."""
    from node.config import load_requester, resolve

    path = resolve(config, "OFFLOAD_REQUESTER_CONFIG")
    settings = load_requester(Path(path) if path else None)
    return Session(home=resolve_home(args.home),
                   bootstrap=bootstrap(args, settings.bootstrap),
                   settings=settings, emit=emit, prefix="--",
                   fresh=getattr(args, "fresh", False))


def report_swept(swept: Swept) -> None:
    """One stderr line per orphaned escrow settled (stdout stays one document)."""
    for job_id in swept.released:
        print(f"offload: job {job_id[:12]}: its process had died; the provider proved a "
              "verified result, so its charge was paid and the rest refunded", file=sys.stderr)
    for job_id in swept.refunded:
        print(f"offload: job {job_id[:12]}: its process had died; escrow refunded",
              file=sys.stderr)
