"""The `offload` command's entry: argv, logging, and errors mapped onto exit codes.

With `--json` an error is also one document on stdout, `{"error": {"code", "message"}}`
(code: the error's name in snake case), and the exit code is the same as without.
The parser and the table of verbs are in commands.py; each verb group has its module.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from node.cli.commands import COMMANDS, build_parser
from node.cli.common import split_script_argv
from node.config import resolve
from node.errors import NodeError, UsageError, sole_error, translated


def main(argv: Sequence[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, script_args = split_script_argv(argv)
    json_out = "--json" in ours
    try:
        args = build_parser().parse_args(ours)
    except UsageError as exc:
        sys.exit(_fail(exc, exc.exit_code, json_out=json_out))
    args.script_args = script_args
    json_out = bool(getattr(args, "json", False))
    level = resolve(None, "OFFLOAD_LOG", None,
                    "INFO" if args.command in ("provide", "relay") else "WARNING")
    json_logs = resolve(args.log_format, "OFFLOAD_LOG_FORMAT", None, "text") == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if json_logs else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    try:
        with translated():  # protocol, ledger, scheduler and OS errors become node errors
            code = _run_unwrapped(COMMANDS[args.command], args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if json_out:
            _json_error("interrupted", "interrupted")
        code = 130
    except NodeError as exc:
        code = _fail(exc, exc.exit_code, json_out=json_out)
    sys.exit(code)


def _run_unwrapped(command: Callable[[argparse.Namespace], int],
                   args: argparse.Namespace) -> int:
    try:
        return command(args)
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise sole from None


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def error_code(exc: BaseException) -> str:
    """`NeedsUnmet` -> "needs_unmet": the stable name an error has in JSON."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(exc).__name__).lower()


def _json_error(code: str, message: str) -> None:
    sys.stdout.flush()
    print(json.dumps({"error": {"code": code, "message": message}}))


def _fail(exc: BaseException, code: int, *, json_out: bool = False) -> int:
    if os.environ.get("OFFLOAD_DEBUG") == "1":
        raise exc
    print(f"offload: error: {exc}", file=sys.stderr)
    if json_out:
        _json_error(error_code(exc), str(exc))
    return code
