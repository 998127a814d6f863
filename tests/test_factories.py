"""The shared builders make valid messages, signed the same way in every run."""

from __future__ import annotations

from protocol import CapacityAd, JobResult, JobSpec, Receipt, open_signed
from tests import factories


def test_every_builder_makes_a_message_its_signer_can_sign_and_a_peer_can_open() -> None:
    for message in (factories.ad(), factories.spec(), factories.result(), factories.receipt(),
                    factories.plain_ad(peer_id=factories.BOB.peer_id)):
        signed = factories.signed(message)
        assert open_signed(signed.raw, type(message)).message == message


def test_signatures_are_fixed_and_overrides_apply() -> None:
    assert factories.signed(factories.spec()).raw == factories.signed(factories.spec()).raw
    assert factories.ad(cpus=2).cpus == 2
    assert factories.plain_ad().peer_id != factories.plain_ad().peer_id
    signers = factories.SIGNERS
    assert signers[CapacityAd] == signers[JobResult] == factories.BOB
    assert signers[JobSpec] == signers[Receipt] == factories.ALICE
