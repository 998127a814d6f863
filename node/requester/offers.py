"""The requester's offer cache: verified ads by peer, in memory and under the home.

Ads are signed and carry `expires`, so a requester reuses them until then instead of
searching the DHT for every job. `OfferCache` keeps the newest ad per peer (by `seq`),
never returns one past its `expires` (clock injected), and forgets a provider that did
not answer until it advertises anew (a higher `seq`). On disk (`Home.offers`) it is the
signed ad bytes themselves: every ad is verified again when read (signature, signer =
peer id, expiry) and a file that fails is refused whole, logged and later rewritten.
`OfferSource` places jobs from the cache, searches the DHT only when no fresh ad meets a
job (or on `fresh`), one search at a time, and refreshes in the background before ads
expire.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from node.errors import NodeError, NoProviders
from node.errors import OfferCacheRefused as CacheRefused
from protocol import CapacityAd, ProtocolError, Signed, check_ad_fresh, open_signed

if TYPE_CHECKING:
    from node.net.discovery import Discovery, Search

log = logging.getLogger(__name__)

CACHE_VERSION = 1
REFRESH_S = 30.0
"""A cache searched longer ago than this is refreshed (to meet providers that are new)."""
MARGIN_S = 20.0
"""Ads are refreshed this long before the first of them expires."""
RETRY_S = 5.0
"""After a failed background search, the next one waits this long."""
MAX_CACHED = 512
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_AD_SIZE = 16 * 1024  # as node.net.discovery's (kept here: reading needs no network)
SEARCH_LIMIT = 100
Clock = Callable[[], float]
Want = Callable[[CapacityAd], bool]


class OfferCache:
    """Verified ads, at most one per peer (the highest `seq`); expired ones never leave."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock
        self._ads: dict[str, Signed[CapacityAd]] = {}
        self._gone: dict[str, tuple[int, int]] = {}  # peer -> (seq, expires) it vanished at
        self.searched_at: float | None = None
        """Wall time of the last search that fed this cache (None: never)."""

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def add(self, signed: Signed[CapacityAd]) -> bool:
        """Keep a verified ad unless a same-or-higher `seq` of its peer is kept, or its
        provider vanished at that `seq` or later."""
        ad = signed.message
        gone = self._gone.get(ad.peer_id)
        if gone is not None and ad.seq <= gone[0]:
            return False
        old = self._ads.get(ad.peer_id)
        if old is not None and old.message.seq >= ad.seq:
            return False
        if old is None and len(self._ads) >= MAX_CACHED:
            return False
        self._gone.pop(ad.peer_id, None)
        self._ads[ad.peer_id] = signed
        return True

    def drop(self, peer_id: str) -> bool:
        """Forget a provider that did not answer, until it advertises a higher `seq`."""
        signed = self._ads.pop(peer_id, None)
        if signed is None:
            return False
        self._gone[peer_id] = (signed.message.seq, signed.message.expires)
        return True

    def prune(self) -> None:
        now_ms = self._now_ms()
        for peer in [p for p, s in self._ads.items() if s.message.expires <= now_ms]:
            del self._ads[peer]
        for peer in [p for p, (_, exp) in self._gone.items() if exp <= now_ms]:
            del self._gone[peer]

    def fresh(self) -> list[Signed[CapacityAd]]:
        """Every kept ad not yet expired."""
        self.prune()
        return list(self._ads.values())

    def __len__(self) -> int:
        return len(self.fresh())

    def refresh_at(self) -> float:
        """When the cache should be searched again (wall clock; now if empty)."""
        ads = self.fresh()
        if self.searched_at is None:
            return self.clock()
        if not ads:
            return self.searched_at + RETRY_S
        first = min(s.message.expires for s in ads) / 1000 - MARGIN_S
        return max(self.searched_at + RETRY_S, min(self.searched_at + REFRESH_S, first))

    def due(self) -> bool:
        return self.refresh_at() <= self.clock()

    # disk -------------------------------------------------------------------------------
    def dump(self) -> bytes:
        self.prune()
        return bytes(msgpack.packb({
            "v": CACHE_VERSION, "searched_at": self.searched_at,
            "ads": [{"peer": p, "ad": s.raw} for p, s in self._ads.items()],
            "gone": [[p, seq, exp] for p, (seq, exp) in self._gone.items()]},
            use_bin_type=True))

    @classmethod
    def loads(cls, data: bytes, *, clock: Clock = time.time) -> OfferCache:
        """The cache in `data`, every ad verified again; CacheRefused for any flaw but an
        ad that expired since (that one is left out)."""
        cache = cls(clock=clock)
        if len(data) > MAX_FILE_BYTES:
            raise CacheRefused(f"{len(data)} bytes is more than a cache file holds")
        try:
            doc = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:
            raise CacheRefused(f"not msgpack: {exc}") from None
        if not isinstance(doc, dict) or doc.get("v") != CACHE_VERSION:
            raise CacheRefused("not an offer cache of this version")
        ads, gone, searched = doc.get("ads"), doc.get("gone"), doc.get("searched_at")
        if not isinstance(ads, list) or not isinstance(gone, list) or len(ads) > MAX_CACHED \
                or len(gone) > MAX_CACHED or not (searched is None or (
                    isinstance(searched, (int, float)) and math.isfinite(searched))):
            raise CacheRefused("malformed offer cache")
        now_ms = cache._now_ms()
        for entry in ads:
            if not isinstance(entry, dict) or not isinstance(entry.get("peer"), str) \
                    or not isinstance(entry.get("ad"), bytes):
                raise CacheRefused("malformed ad entry")
            try:
                signed = open_signed(entry["ad"], CapacityAd, max_size=MAX_AD_SIZE)
            except ProtocolError as exc:
                raise CacheRefused(f"an ad does not verify: {exc}") from None
            if signed.message.peer_id != entry["peer"]:
                raise CacheRefused(f"an ad of {signed.message.peer_id[:16]} is filed under "
                                   f"{entry['peer'][:16]}")
            try:
                check_ad_fresh(signed.message, now_ms=now_ms)
            except ProtocolError:
                continue  # expired since it was written: never used
            cache.add(signed)
        for entry in gone:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and all(isinstance(x, int) for x in entry[1:])):
                raise CacheRefused("malformed gone entry")
            if entry[2] > now_ms and entry[0] not in cache._ads:
                cache._gone[entry[0]] = (entry[1], entry[2])
        cache.searched_at = None if searched is None else float(searched)
        return cache

    @classmethod
    def load(cls, path: Path, *, clock: Clock = time.time) -> OfferCache:
        """The cache at `path`; an empty one if there is none or it is refused (logged)."""
        try:
            with path.open("rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return cls(clock=clock)
        except OSError as exc:
            log.warning("cannot read the offer cache %s: %s; searching the DHT", path, exc)
            return cls(clock=clock)
        try:
            return cls.loads(data, clock=clock)
        except CacheRefused as exc:
            log.warning("refusing the offer cache %s (%s); searching the DHT", path, exc)
            return cls(clock=clock)

    def save(self, path: Path) -> None:
        """Replace `path` atomically (0600); a failure is logged, never fatal."""
        try:
            data = self.dump()
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), 0o600)
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot write the offer cache %s: %s", path, exc)


class OfferSource:
    """Ads for jobs: from the cache while fresh ones meet the job, else from one DHT search
    at a time; `refresh_forever` keeps the cache fresh in the background."""

    def __init__(self, disc: Discovery, cache: OfferCache, *, path: Path | None = None,
                 fresh: bool = False) -> None:
        self.disc = disc
        self.cache = cache
        self.path = path
        self.force = fresh
        self.searches = 0
        self.last: Search | None = None
        self._lock = trio.Lock()

    def clock(self) -> float:
        return self.cache.clock()

    async def search(self, *, limit: int = SEARCH_LIMIT) -> Search:
        """One DHT search into the cache (a caller that waited on another's search gets
        that one's answer)."""
        started = self.searches
        async with self._lock:
            if self.searches > started and self.last is not None:
                return self.last
            found = await self.disc.search("cpu", limit=max(limit, SEARCH_LIMIT))
            self.searches += 1
            self.last = found
            self.force = False
            for signed in found.ads:
                self.cache.add(signed)
            self.cache.searched_at = self.clock()
            if self.path is not None:
                self.cache.save(self.path)
            return found

    async def ads(self, want: Want | None = None) -> list[Signed[CapacityAd]]:
        """Fresh ads, from the cache if one of them meets `want` (else from a search)."""
        if not self.force:
            cached = self.cache.fresh()
            if any(want is None or want(s.message) for s in cached):
                return cached
        await self.search()
        return self.cache.fresh()

    async def require_ads(self, capability: str = "cpu", *, want: Want | None = None,
                          **_: Any) -> list[Signed[CapacityAd]]:
        """`ads`, or NoProviders saying what the search missed."""
        ads = await self.ads(want)
        if ads:
            return ads
        shortfall = self.last.shortfall() if self.last is not None else None
        if shortfall:
            raise NoProviders(f"no provider with a valid ad was reached: {shortfall}")
        raise NoProviders("no provider with a valid ad was found; check --bootstrap and "
                          "that a provider is running")

    def drop(self, peer_id: str) -> None:
        """A provider that did not answer leaves the cache (on disk too)."""
        if self.cache.drop(peer_id):
            log.info("provider %s did not answer; dropped from the offer cache", peer_id[:16])
            if self.path is not None:
                self.cache.save(self.path)

    async def refresh_forever(self, *, sleep: Callable[[float], Any] = trio.sleep) -> None:
        """Search again before ads expire (and every REFRESH_S), until cancelled."""
        while True:
            wait = self.cache.refresh_at() - self.clock()
            if wait > 0:
                await sleep(wait)
                continue
            try:
                await self.search()
            except (NodeError, OSError) as exc:
                log.debug("background offer refresh failed: %s", exc)
                await sleep(RETRY_S)

