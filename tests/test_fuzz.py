"""Fuzz every decoder a peer's bytes reach, across packages: the codec, framing, wire
frames, every signed message type through open_signed and its checks, the ledger's
record paths on a real SQLite file, and the @remote return decoder. Inputs are mutations
of real signed messages (byte edits; structural edits re-signed by the right key) and
random bytes; only each target's own named errors may escape. Derandomized, so every
run is reproducible; bench/fuzz.py runs the same targets a million times."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import Ledger
from protocol import BadSignature, ProtocolError, Receipt, open_signed, wire
from tests.fuzz_targets import Target, frames, mutate_document, resign, signed_seeds, targets

BATCH = 10
"""Inputs per example: a decoder breaks on maybe one input in a thousand."""
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
NAMES = ["codec.unpack", "framing+wire", "wire.decode", "capacity_ad+check_ad_fresh",
         "job_spec+check_spec_fresh", "job_result", "quote", "session_spec",
         "session_result", "receipt+check_receipt",
         "cheque+open_cheque", "ledger.record_receipt", "ledger.accept_cheque",
         "values.decode_return"]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Target],
                                                                        Ledger]]:
    ts, ledger = targets(tmp_path_factory.mktemp("fuzz-ledger"))
    yield {t.name: t for t in ts}, ledger
    ledger.close()


def test_every_decoder_is_a_target_and_accepts_its_seeds(
        fuzzed: tuple[dict[str, Target], Ledger]) -> None:
    """The canary: unmutated seeds pass, so refusals below are the mutations' doing."""
    by_name, _ = fuzzed
    assert sorted(by_name) == sorted(NAMES)
    for name, target in by_name.items():
        if name.startswith("ledger."):
            continue  # seeds are recorded once; the fuzz test below writes them
        for seed in target.seeds:
            target.run(seed)


def test_every_wire_frame_type_has_a_seed() -> None:
    seeded = {type(f) for f in frames()}
    missing = sorted(n for n, cls in wire.FRAME_TYPES.items() if cls not in seeded)
    assert not missing, f"add a real {missing} frame to tests/fuzz_targets.py frames()"


def test_a_foreign_error_is_caught_as_a_crash() -> None:
    def overflow(data: bytes) -> None:
        raise OverflowError("Python int too large to convert to SQLite INTEGER")

    target = Target("probe", overflow, [b""], (ValueError,))
    assert isinstance(target.check(b"x"), OverflowError)


def test_structural_mutations_are_re_signed_by_the_right_key() -> None:
    """A re-signed mutation must reach the field checks, not stop at the signature."""
    raw = signed_seeds()["receipt"][0]
    rng = random.Random(1)
    reasons = []
    for _ in range(200):
        try:
            open_signed(resign(rng, raw), Receipt)
            reasons.append("ok")
        except BadSignature:
            reasons.append("sig")
        except ProtocolError as exc:
            reasons.append(type(exc).__name__)
    assert reasons.count("sig") < len(reasons) // 10
    assert {"OutOfRange", "FieldTypeError"} <= set(reasons)
    assert mutate_document(rng, {}) is not None


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(seed=st.integers(0, 2**64 - 1))
def test_hostile_input_raises_only_named_errors(
        fuzzed: tuple[dict[str, Target], Ledger], name: str, seed: int) -> None:
    """A seeded generator, not hypothesis' own random: its draws lean to simple values
    and hardly ever pick the boundary int or the ext value that breaks a decoder."""
    by_name, ledger = fuzzed
    target, rng = by_name[name], random.Random(seed)
    for _ in range(BATCH):
        data = target.generate(rng)
        crash = target.check(data)
        assert crash is None, f"{name} raised {crash!r} on {data!r}"
    if name.startswith("ledger."):
        assert ledger.verify() is None


def test_the_fuzzed_ledger_still_verifies(fuzzed: tuple[dict[str, Target], Ledger]) -> None:
    _, ledger = fuzzed
    assert ledger.verify() is None
    balance = ledger.balance()
    assert type(balance.earned) is int and 0 <= balance.earned <= 10**15
