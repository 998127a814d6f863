"""The escrow transition table and the credit moves, tested without SQLite."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest

from ledger.errors import EscrowStateError, UnknownJob
from ledger.escrow import KINDS, TRANSITIONS, Event, State, moves, step

JOB = "ab" * 32
ALL = list(itertools.product(get_args(State), get_args(Event)))


def test_the_table_is_exactly_the_lifecycle() -> None:
    assert TRANSITIONS == {("none", "lock"): "locked", ("locked", "release"): "released",
                           ("locked", "refund"): "refunded"}


@pytest.mark.parametrize(("state", "event"), ALL)
def test_every_state_event_pair(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert step(state, event, JOB) == TRANSITIONS[(state, event)]
    else:
        with pytest.raises(EscrowStateError):
            step(state, event, JOB)


@pytest.mark.parametrize(("state", "event", "error", "match"), [
    ("released", "release", EscrowStateError,
     "escrow of job abababababababab was already released; it pays out once"),
    ("released", "refund", EscrowStateError, "was already released; .* cannot refund"),
    ("refunded", "release", EscrowStateError, "was already refunded; nothing is left"),
    ("locked", "lock", EscrowStateError, r"already has an escrow \(locked\)"),
    ("none", "release", UnknownJob, "no escrow for job abababababababab; lock"),
])
def test_refusals_say_what_happened(state: State, event: Event, error: type[Exception],
                                    match: str) -> None:
    with pytest.raises(error, match=match):
        step(state, event, JOB)


def test_final_states_allow_nothing() -> None:
    for final in ("released", "refunded"):
        assert not [e for (s, e) in TRANSITIONS if s == final]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_moves_credit_without_creating_any(kind: str) -> None:
    sums: dict[str, int] = {}
    for src, dst, amount in moves(kind, peer="P", amount=70, rest=30):  # type: ignore[arg-type]
        sums[src] = sums.get(src, 0) - amount
        sums[dst] = sums.get(dst, 0) + amount
    assert sum(sums.values()) == 0 and any(sums.values())


def test_a_release_splits_the_escrow() -> None:
    assert moves("release", peer="P", amount=70, rest=30) == [
        ("escrow", "paid:P", 70), ("escrow", "available", 30)]
