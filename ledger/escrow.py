"""The escrow lifecycle as one transition table, and the credit each kind of entry moves.

Both the live writer (book.py) and the replay that verifies a file (chain.py) go through
`step` and `moves`, so the rules exist once.
"""

from __future__ import annotations

from typing import Literal

from ledger.errors import EscrowStateError, UnknownJob

State = Literal["none", "locked", "released", "refunded"]
Event = Literal["lock", "release", "refund"]
Kind = Literal["deposit", "lock", "release", "refund", "cheque_in"]
RefundReason = Literal["rejected", "timeout", "failed", "cancelled"]
REFUND_REASONS: tuple[RefundReason, ...] = ("rejected", "timeout", "failed", "cancelled")
KINDS: tuple[Kind, ...] = ("deposit", "lock", "release", "refund", "cheque_in")

TRANSITIONS: dict[tuple[State, Event], State] = {
    ("none", "lock"): "locked",
    ("locked", "release"): "released",
    ("locked", "refund"): "refunded",
}
"""Every allowed step; anything else raises EscrowStateError. released/refunded are final."""

# accounts: credit moves between these; the sum of all balances is always zero
EXTERNAL = "external"
"""The settlement backend: deposits come from here (its balance is minus all deposits)."""
AVAILABLE = "available"
ESCROW = "escrow"
EARNED = "earned"
PAID = "paid:"
"""paid:<provider>: released to that provider (what our cheques to it add up to)."""
OWED = "owed:"
"""owed:<payer>: credit a payer's cheques promised us (minus what they add up to)."""


def step(state: State, event: Event, job_id: str) -> State:
    """The state after `event`, or EscrowStateError saying why the step is refused."""
    after = TRANSITIONS.get((state, event))
    if after is not None:
        return after
    job = job_id[:16]
    if state == "none":
        raise UnknownJob(f"no escrow for job {job}; lock the job's quoted maximum first")
    if event == "lock":
        raise EscrowStateError(f"job {job} already has an escrow ({state}); a job id is "
                               "locked once")
    if state == "released":
        raise EscrowStateError(f"escrow of job {job} was already released; it pays out once "
                               f"and cannot {event} again")
    raise EscrowStateError(f"escrow of job {job} was already refunded; nothing is left to "
                           f"{event}")


Move = tuple[str, str, int]
"""(from account, to account, micro-credits)."""


def moves(kind: Kind, *, peer: str, amount: int, rest: int = 0) -> list[Move]:
    """The credit an entry moves. For a release `amount` is the charge and `rest` the part
    of the escrow refunded with it."""
    if kind == "deposit":
        return [(EXTERNAL, AVAILABLE, amount)]
    if kind == "lock":
        return [(AVAILABLE, ESCROW, amount)]
    if kind == "release":
        return [(ESCROW, PAID + peer, amount), (ESCROW, AVAILABLE, rest)]
    if kind == "refund":
        return [(ESCROW, AVAILABLE, amount)]
    return [(OWED + peer, EARNED, amount)]


EVENT_OF: dict[Kind, Event] = {"lock": "lock", "release": "release", "refund": "refund"}
"""Entry kinds that step an escrow; deposit and cheque_in touch none."""
