"""A child process that writes to a real ledger file (run by test_ledger_crash.py).

    python -m tests.ledger.writer churn DB OPS
        deposit, then OPS escrow operations (lock, then release/refund/leave locked);
        prints each committed entry's seq on its own line right after the commit.
    python -m tests.ledger.writer race DB JOBS release|refund
        waits for a line on stdin, then tries to close escrows 0..JOBS-1 in an order
        of its own (seeded by the kind, so two racers overlap all along); prints
        "won <n>" / "lost <n>" per job and "done" at the end.
"""

from __future__ import annotations

import random
import sys
import time

from ledger import EscrowStateError, Ledger
from tests.ledger.conftest import ALICE, BOB, CAROL, RESULT, job


def churn(path: str, ops: int) -> None:
    out = sys.stdout
    rng = random.Random(7)
    with Ledger.open(path, ALICE) as ledger:
        out.write(f"{ledger.deposit(10**12).seq}\n")
        out.flush()
        open_jobs: list[str] = []
        for n in range(ops):
            choice = rng.random()
            if open_jobs and choice < 0.45:
                j = open_jobs.pop(rng.randrange(len(open_jobs)))
                seq = ledger.release(j, rng.randrange(0, 1000), result_digest=RESULT).entry.seq
            elif open_jobs and choice < 0.6:
                ledger.refund(j := open_jobs.pop(), rng.choice(["timeout", "cancelled"]))
                seq = ledger.history(limit=1)[0].seq
            else:
                j = job(f"churn {n}")
                seq = ledger.lock(j, rng.choice([BOB.peer_id, CAROL.peer_id]), 1000).seq
                open_jobs.append(j)
            out.write(f"{seq}\n")  # only after the commit returned
            out.flush()


def race(path: str, jobs: int, kind: str) -> None:
    with Ledger.open(path, ALICE) as ledger:
        print("ready", flush=True)
        order = list(range(jobs))
        random.Random(kind).shuffle(order)
        sys.stdin.readline()
        for n in order:
            try:
                if kind == "release":
                    ledger.release(job(n), 10, result_digest=RESULT)
                else:
                    ledger.refund(job(n), "cancelled")
                print(f"won {n}", flush=True)
            except EscrowStateError:
                print(f"lost {n}", flush=True)
            time.sleep(0.002)  # let the other racer's busy handler find the lock free
        print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "churn":
        churn(sys.argv[2], int(sys.argv[3]))
    else:
        race(sys.argv[2], int(sys.argv[3]), sys.argv[4])
