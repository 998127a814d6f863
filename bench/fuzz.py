"""Fuzz every decoder a peer's bytes reach, a million inputs by default.

Usage: .venv/bin/python bench/fuzz.py [--count N] [--seed S] [--only NAME]... [--crashes DIR]
       [--json]

The targets and mutators are tests/fuzz_targets.py's (the ones tests/test_fuzz.py runs
under hypothesis): codec, framing + wire frames, wire frames, every signed message type
through open_signed and its freshness / receipt / cheque checks, the ledger's
record_receipt and accept_cheque on a real SQLite file, and the @remote return decoder.
Inputs go round-robin over the targets, each from its own seeded generator: half
structural edits of real signed messages (re-signed by the right key), a third byte
edits, the rest random bytes. A crash is any exception but the target's own named ones;
each crash input is written to DIR (default bench/results/fuzz-crashes) to become a
regression test. Prints a table of inputs, inputs/s, refused, accepted and crashes per
target; exits 1 if anything crashed or the fuzzed ledger no longer verifies.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz_targets import Target, targets


def run(target: Target, count: int, seed: int, crash_dir: Path) -> dict[str, object]:
    rng = random.Random(seed ^ zlib.crc32(target.name.encode()))
    refused = accepted = 0
    crashes: dict[str, int] = {}
    start = time.perf_counter()
    for _ in range(count):
        data = target.generate(rng)
        try:
            target.run(data)
            accepted += 1
        except target.allowed:
            refused += 1
        except Exception as exc:
            kind = f"{type(exc).__name__}: {str(exc)[:120]}"
            if kind not in crashes:
                crash_dir.mkdir(parents=True, exist_ok=True)
                name = f"{target.name}-{len(crashes)}.bin".replace("+", "_")
                (crash_dir / name).write_bytes(data)
            crashes[kind] = crashes.get(kind, 0) + 1
    seconds = time.perf_counter() - start
    return {"target": target.name, "inputs": count, "seconds": round(seconds, 3),
            "inputs_per_s": round(count / max(seconds, 1e-9)), "refused": refused,
            "accepted": accepted,
            "crashes": sum(crashes.values()), "crash_kinds": crashes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs in all")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--only", action="append", default=[], help="a target name (repeatable)")
    ap.add_argument("--crashes", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "fuzz-crashes")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="offload-fuzz-") as tmp:
        all_targets, ledger = targets(Path(tmp))
        chosen = [t for t in all_targets if not args.only or t.name in args.only]
        if not chosen:
            ap.error(f"no target named {args.only}; choose from "
                     f"{[t.name for t in all_targets]}")
        per, extra = divmod(max(args.count, len(chosen)), len(chosen))
        rows = [run(t, per + (i < extra), args.seed, args.crashes)
                for i, t in enumerate(chosen)]
        fault = ledger.verify()
        balance = ledger.balance()
        ledger.close()
    total_s = sum(float(str(r["seconds"])) for r in rows)
    total = sum(int(str(r["inputs"])) for r in rows)
    crashed = sum(int(str(r["crashes"])) for r in rows)
    summary = {"inputs": total, "seconds": round(total_s, 1),
               "inputs_per_s": round(total / max(total_s, 1e-9)), "crashes": crashed,
               "ledger_verifies": fault is None, "ledger_earned": balance.earned,
               "targets": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("| decoder | inputs | inputs/s | refused (named) | accepted | crashes |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['target']} | {r['inputs']:,} | {r['inputs_per_s']:,} | "
                  f"{r['refused']:,} | {r['accepted']:,} | {r['crashes']} |")
        print(f"| **all** | {total:,} | {summary['inputs_per_s']:,} | | | {crashed} |")
        print(f"\nfuzzed ledger verifies: {fault is None} (earned {balance.earned}); "
              f"{total_s:.0f} s of decoding")
        for r in rows:
            for kind, n in dict(r["crash_kinds"]).items():  # type: ignore[call-overload]
                print(f"CRASH {r['target']}: {n} x {kind}")
    return 1 if crashed or fault is not None else 0


if __name__ == "__main__":
    sys.exit(main())
