"""Kademlia discovery: providers advertise signed CapacityAds; requesters find and re-check them."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from node import compat
from node.errors import NoProviders, RemoteError
from node.host import Host
from protocol import CapacityAd, ProtocolError, Signed, check_ad_fresh, open_signed

log = logging.getLogger(__name__)

NAMESPACE = "offload"
AD_REFRESH_S = 60
AD_LIFETIME_S = 120
MAX_AD_SIZE = 16 * 1024
CAPABILITY_CLASSES = ("cpu", "gpu")

Clock = Callable[[], float]


def ad_key(peer_id: str) -> str:
    """`/offload/<32 hex>`: 41 bytes, under the 50-byte limit (notes, bug 2)."""
    return f"/{NAMESPACE}/{hashlib.sha256(peer_id.encode()).hexdigest()[:32]}"


def rendezvous_key(capability: str) -> str:
    return compat.rendezvous_cid(f"offload/providers/{capability}/v1")


def open_ad(key: str, value: bytes, *, now_ms: int) -> Signed[CapacityAd]:
    """The one check every ad passes, stored or read: signature, key binding, freshness."""
    signed = open_signed(value, CapacityAd, max_size=MAX_AD_SIZE)
    if ad_key(signed.message.peer_id) != key:
        raise RemoteAdError(f"ad of {signed.message.peer_id[:16]} stored under a foreign key")
    check_ad_fresh(signed.message, now_ms=now_ms)
    return signed


class RemoteAdError(RemoteError):
    """An ad is valid on its own but does not belong under the key it was found at."""


def _make_validator(clock: Clock) -> Any:
    from libp2p.records.validator import Validator

    class AdValidator(Validator):
        """Registered on every node, so no node stores or serves an invalid ad."""

        def validate(self, key: str, value: bytes) -> None:
            try:
                open_ad(key, value, now_ms=int(clock() * 1000))
            except (ProtocolError, RemoteAdError) as exc:
                log.debug("rejecting ad under %s: %s", key, exc)
                raise ValueError(f"invalid offload ad: {exc}") from exc

        def select(self, key: str, values: list[bytes]) -> int:
            best, best_seq = 0, -1
            for i, value in enumerate(values):
                try:
                    seq = open_ad(key, value, now_ms=int(clock() * 1000)).message.seq
                except (ProtocolError, RemoteAdError):
                    continue
                if seq > best_seq:
                    best, best_seq = i, seq
            return best

    return AdValidator()


class Discovery:
    """A KadDHT in server mode (providers) or client mode (requesters)."""

    def __init__(self, host: Host, dht: Any, *, clock: Clock) -> None:
        self.host = host
        self.dht = dht
        self.clock = clock
        self.dropped = 0

    async def bootstrap(self, maddrs: Sequence[str]) -> list[str]:
        """Connect to each bootstrap address; returns the peers reached."""
        from libp2p.peer.id import ID

        reached = []
        for maddr in maddrs:
            try:
                peer = await self.host.connect(maddr)
            except RemoteError as exc:
                log.warning("bootstrap %s unreachable: %s", maddr, exc)
                continue
            await self.dht.add_peer(ID.from_base58(peer))
            reached.append(peer)
        return reached

    async def advertise(self, signed: Signed[CapacityAd], classes: Sequence[str]) -> None:
        await self.dht.put_value(ad_key(signed.message.peer_id), signed.raw)
        for cls in classes:
            await self.dht.provide(rendezvous_key(cls))

    async def find_ads(self, capability: str = "cpu", *, limit: int = 20,
                       timeout: float = 15.0) -> list[Signed[CapacityAd]]:
        """Verified, fresh ads of providers of `capability`, each re-checked after reading."""
        ads: list[Signed[CapacityAd]] = []
        with trio.move_on_after(timeout):
            infos = compat.dedupe_peers(
                await self.dht.find_providers(rendezvous_key(capability), limit))
            for info in infos:
                peer = str(info.peer_id)
                if peer == self.host.peer_id:
                    continue
                self.host.remember(peer, [str(a) for a in info.addrs])
                ad = await self._read_ad(peer)
                if ad is not None:
                    ads.append(ad)
        return ads

    async def _read_ad(self, peer_id: str) -> Signed[CapacityAd] | None:
        key = ad_key(peer_id)
        try:
            value = await compat.fresh_get_value(self.dht, key)
        except Exception as exc:
            log.debug("get_value(%s) failed: %s", key, exc)
            value = None
        if value is None:
            log.debug("no ad found for provider %s", peer_id[:16])
            return None
        try:
            signed = open_ad(key, value, now_ms=int(self.clock() * 1000))
        except (ProtocolError, RemoteAdError) as exc:
            self.dropped += 1
            log.debug("dropping ad of %s: %s", peer_id[:16], exc)
            return None
        if signed.message.peer_id != peer_id:
            self.dropped += 1
            return None
        return signed

    async def require_ads(self, capability: str = "cpu", **kw: Any) -> list[Signed[CapacityAd]]:
        ads = await self.find_ads(capability, **kw)
        if not ads:
            raise NoProviders("no provider with a valid ad was found; check --bootstrap and "
                              "that a provider is running")
        return ads


@asynccontextmanager
async def open_discovery(host: Host, *, server: bool, clock: Clock) -> AsyncIterator[Discovery]:
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    dht = KadDHT(host.raw, DHTMode.SERVER if server else DHTMode.CLIENT)
    dht.register_validator(NAMESPACE, _make_validator(clock))
    async with background_trio_service(dht):
        yield Discovery(host, dht, clock=clock)
