"""Identity: Ed25519 keys whose peer ids are exactly libp2p's; base58; signature checks."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from protocol import BadSignature, Identity, InvalidMessage, MalformedMessage
from protocol.identity import (
    b58decode,
    b58encode,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify,
)

SEEDS = [
    bytes(32),
    b"\xff" * 32,
    bytes(range(32)),
    *(hashlib.sha256(str(i).encode()).digest() for i in range(5)),
]


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: s.hex()[:8])
def test_peer_id_matches_libp2p(seed: bytes) -> None:
    identity = Identity(seed)
    expected = ID.from_pubkey(create_new_key_pair(identity.seed).public_key).to_base58()
    assert identity.peer_id == expected
    assert identity.peer_id.startswith("12D3KooW")
    assert identity.public_key == create_new_key_pair(seed).public_key.to_bytes()


def test_generated_identity_matches_libp2p_and_differs_each_time() -> None:
    one, two = Identity.generate(), Identity.generate()
    assert one.peer_id != two.peer_id
    for identity in (one, two):
        assert Identity(identity.seed).peer_id == identity.peer_id
        expected = ID.from_pubkey(create_new_key_pair(identity.seed).public_key).to_base58()
        assert identity.peer_id == expected


def test_libp2p_reads_our_peer_id_back() -> None:
    identity = Identity(SEEDS[3])
    assert ID.from_base58(identity.peer_id).to_bytes() == b58decode(identity.peer_id)


def test_public_key_round_trips_through_the_peer_id() -> None:
    identity = Identity(SEEDS[4])
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key
    assert peer_id_from_public_key(identity.public_key) == identity.peer_id


@pytest.mark.parametrize(
    ("peer_id", "message"),
    [
        ("", "peer id has the wrong length for an Ed25519 id"),
        ("1" * 61, "peer id has the wrong length for an Ed25519 id"),
        ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
         "peer id is not an inline Ed25519 libp2p id"),
        ("12D3KooW" + "l" * 44, "invalid base58 character 'l'"),
    ],
)
def test_peer_ids_of_other_kinds_are_malformed(peer_id: str, message: str) -> None:
    with pytest.raises(MalformedMessage, match=f"^{message}$"):
        public_key_from_peer_id(peer_id)


def test_bad_key_lengths_are_local_errors() -> None:
    with pytest.raises(InvalidMessage, match=r"^an Ed25519 public key is exactly 32 bytes$"):
        peer_id_from_public_key(bytes(31))
    with pytest.raises(InvalidMessage, match=r"^an Ed25519 seed is exactly 32 bytes$"):
        Identity(bytes(33))


def test_verify_accepts_the_signer_and_refuses_everyone_else() -> None:
    alice, carol = Identity(SEEDS[0]), Identity(SEEDS[1])
    sig = alice.sign(b"payload")
    verify(alice.peer_id, b"payload", sig)  # canary
    with pytest.raises(BadSignature, match=rf"^signature does not verify for {carol.peer_id}$"):
        verify(carol.peer_id, b"payload", sig)
    with pytest.raises(BadSignature):
        verify(alice.peer_id, b"payload!", sig)
    with pytest.raises(BadSignature):
        verify(alice.peer_id, b"payload", sig[:-1] + bytes([sig[-1] ^ 1]))


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"", ""),
        (b"\x00", "1"),
        (b"\x00\x00\x01", "112"),
        (b"hello world", "StV1DL6CwTryKyV"),
        (b"\x00\x00\x28\x7f\xb4\xcd", "11233QC4"),
    ],
)
def test_base58_known_vectors(raw: bytes, text: str) -> None:
    assert b58encode(raw) == text
    assert b58decode(text) == raw


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 4), st.binary(max_size=48))
def test_base58_round_trip_with_leading_zeros(zeros: int, tail: bytes) -> None:
    raw = b"\x00" * zeros + tail
    text = b58encode(raw)
    assert b58decode(text) == raw
    assert len(text) - len(text.lstrip("1")) == len(raw) - len(raw.lstrip(b"\x00"))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_any_seed_gives_the_libp2p_peer_id(seed: bytes) -> None:
    identity = Identity(seed)
    assert identity.seed == seed
    assert identity.peer_id == ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()
