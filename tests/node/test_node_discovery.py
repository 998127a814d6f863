"""Ad keys and the ad validator that every node registers, without a network."""

from __future__ import annotations

import hashlib

import pytest

from node.discovery import RemoteAdError, _make_validator, ad_key, open_ad, rendezvous_key
from protocol import CapacityAd, Device, Expired, Identity, Price, Runtime, sign

NOW_MS = 1_800_000_000_000


def make_ad(identity: Identity, *, seq: int = 1, expires: int = NOW_MS + 120_000) -> CapacityAd:
    return CapacityAd(
        peer_id=identity.peer_id, addrs=("/ip4/127.0.0.1/tcp/4001",),
        devices=(Device(kind="cpu", model="test", memory_mb=1024, compute_capability="",
                        count=1, gflops=0.0),),
        cpus=2, memory_mb=1024,
        runtimes=(Runtime(name="python3", version="3.11", packages={}, digest=""),),
        price=Price(), sandbox_tier="none", region="", coords=(), cached=(), load=0.0,
        seq=seq, expires=expires)


def test_ad_keys_fit_the_dht_limit_and_rendezvous_is_a_cid() -> None:
    for _ in range(20):
        key = ad_key(Identity.generate().peer_id)
        assert key.startswith("/offload/") and len(key.encode()) <= 50
    from libp2p.kad_dht.kad_dht import _encode_key

    mh = _encode_key(rendezvous_key("cpu"))  # parsed as a CID, not raw UTF-8
    assert mh == bytes([0x12, 0x20]) + hashlib.sha256(b"offload/providers/cpu/v1").digest()
    assert rendezvous_key("cpu") != rendezvous_key("gpu")


def test_open_ad_accepts_a_fresh_ad_under_its_own_key() -> None:
    me = Identity.generate()
    signed = sign(make_ad(me), me)
    assert open_ad(ad_key(me.peer_id), signed.raw, now_ms=NOW_MS).message.peer_id == me.peer_id


def test_open_ad_refuses_a_foreign_key_and_an_expired_ad() -> None:
    me, other = Identity.generate(), Identity.generate()
    signed = sign(make_ad(me), me)
    with pytest.raises(RemoteAdError, match="stored under a foreign key"):
        open_ad(ad_key(other.peer_id), signed.raw, now_ms=NOW_MS)
    with pytest.raises(Expired, match="expired"):
        open_ad(ad_key(me.peer_id), signed.raw, now_ms=NOW_MS + 121_000)


def test_registered_validator_rejects_bad_values_and_selects_the_highest_seq() -> None:
    me = Identity.generate()
    validator = _make_validator(lambda: NOW_MS / 1000)
    key = ad_key(me.peer_id)
    old, new = sign(make_ad(me, seq=5), me).raw, sign(make_ad(me, seq=9), me).raw
    validator.validate(key, new)
    with pytest.raises(ValueError, match="invalid offload ad"):
        validator.validate(key, b"\x93garbage")
    forged = bytearray(new)
    forged[-10] ^= 1
    with pytest.raises(ValueError, match="invalid offload ad"):
        validator.validate(key, bytes(forged))
    assert validator.select(key, [old, new]) == 1
    assert validator.select(key, [new, old]) == 0
    assert validator.select(key, [b"junk", old]) == 1
