"""Kademlia discovery: providers advertise signed CapacityAds; requesters find and re-check them."""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import trio

from node.errors import NoProviders, RemoteError
from node.errors import RemoteAdError as RemoteAdError
from node.net import compat, compat_kad
from node.net.compat_kad import DhtRequestFailed
from node.net.host import Host, libp2p_host
from protocol import CapacityAd, ProtocolError, Signed, check_ad_fresh, open_signed

log = logging.getLogger(__name__)

NAMESPACE = "offload"
AD_REFRESH_S = 60
AD_LIFETIME_S = 120
MAX_AD_SIZE = 16 * 1024
K_CLOSEST = 20            # Kademlia k: provider records live on the k closest servers
LOOKUP_CONCURRENCY = 4    # GET_PROVIDERS in flight at once (Kademlia alpha)
LOOKUP_DIALS = 1          # of those, to peers not yet connected (a dial costs ~100 requests)
FETCH_CONCURRENCY = 8     # ads fetched at once
HOLDERS_ASKED = 3         # DHT servers asked for every ad (on one stream) before providers
REQUEST_TIMEOUT_S = 5.0   # one DHT request to one peer
LOOKUP_SHARE = 0.6        # of a search's time, the most the provider lookup may take
MAX_CANDIDATES = 100      # peers a lookup keeps in view (a hostile answer cannot grow it)
MAX_FOUND = 200           # provider entries a lookup keeps
MIN_ASKED = 3             # closest servers asked even if named as providers (they hold others')

Clock = Callable[[], float]
T = TypeVar("T")
Miss = Literal["invalid", "gone", "unreachable"]


def ad_key(peer_id: str) -> str:
    """`/offload/<32 hex>`: 41 bytes, under the 50-byte limit (notes, bug 2)."""
    return f"/{NAMESPACE}/{hashlib.sha256(peer_id.encode()).hexdigest()[:32]}"


def rendezvous_key(capability: str) -> str:
    return compat.rendezvous_cid(f"offload/providers/{capability}/v1")


def relay_key() -> str:
    """The rendezvous key relays provide (computed on use: it imports libp2p)."""
    return compat.rendezvous_cid("offload/relays/v1")


def open_ad(key: str, value: bytes, *, now_ms: int) -> Signed[CapacityAd]:
    """The one check every ad passes, stored or read: signature, key binding, freshness."""
    signed = open_signed(value, CapacityAd, max_size=MAX_AD_SIZE)
    if ad_key(signed.message.peer_id) != key:
        raise RemoteAdError(f"ad of {signed.message.peer_id[:16]} stored under a foreign key")
    check_ad_fresh(signed.message, now_ms=now_ms)
    return signed


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
            except Exception as exc:  # a bug of ours: refuse the record, keep serving
                log.error("validating an ad under %s failed", key, exc_info=exc)
                raise ValueError("invalid offload ad") from exc

        def select(self, key: str, values: list[bytes]) -> int:
            best, best_seq = 0, -1
            for i, value in enumerate(values):
                try:
                    seq = open_ad(key, value, now_ms=int(clock() * 1000)).message.seq
                except Exception:  # what validate() refuses is never the best
                    continue
                if seq > best_seq:
                    best, best_seq = i, seq
            return best

    return AdValidator()


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Jittered exponential backoff: wait n is base * factor**n capped at cap, its upper half
    random, so a burst of requesters that were refused together does not return together."""

    base_s: float = 0.05
    factor: float = 2.0
    cap_s: float = 1.0
    attempts: int = 6

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap_s, self.base_s * self.factor ** attempt)
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


async def retry(op: Callable[[float], Awaitable[T]], *, policy: Backoff, deadline: float,
                rng: random.Random, what: str, clock: Callable[[], float] = trio.current_time,
                sleep: Callable[[float], Awaitable[None]] = trio.sleep) -> T:
    """`op(seconds_left)` until it succeeds; a retryable DhtRequestFailed (the peer reset,
    closed or timed out) is tried again after a backoff, never past `deadline` nor more than
    `policy.attempts` times; the last failure is raised."""
    last: DhtRequestFailed | None = None
    for attempt in range(policy.attempts):
        left = deadline - clock()
        if left <= 0:
            break
        try:
            return await op(left)
        except DhtRequestFailed as exc:
            if not exc.retryable:
                raise
            last = exc
        pause = policy.delay(attempt, rng)
        if attempt + 1 == policy.attempts or clock() + pause >= deadline:
            break
        await sleep(pause)
    raise last or DhtRequestFailed(f"{what}: no time left before the deadline", retryable=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    """What one provider search found: verified ads and what it could not reach."""

    ads: list[Signed[CapacityAd]]
    found: int                      # providers the DHT named (other than this node)
    unreachable: tuple[str, ...]    # of those, whose ad requests kept failing: retry later
    gone: int                       # of those, whose ad nobody holds (expired, or dead)
    invalid: int                    # of those, whose ad failed verification (dropped)
    dht_failed: int                 # DHT servers that reset or timed out in the lookup
    lookup_cut: bool                # the lookup ran out of time

    def shortfall(self) -> str | None:
        """None if the search saw everything it asked about, else one line saying what
        it missed (ads of providers it could not reach, or an unfinished lookup)."""
        parts = []
        if self.unreachable:
            parts.append(f"{len(self.unreachable)} of {self.found} providers found in the DHT "
                         "could not be reached (their ads could not be fetched)")
        if self.dht_failed or self.lookup_cut:
            parts.append("the provider lookup did not finish ("
                         + (f"{self.dht_failed} DHT peers busy or slow" if self.dht_failed
                            else "out of time") + ")")
        if not parts:
            return None
        return "; ".join(parts) + "; offers may be missing, try again"


class Discovery:
    """A KadDHT in server mode (providers) or client mode (requesters)."""

    def __init__(self, host: Host, dht: Any, *, clock: Clock, rng: random.Random | None = None,
                 backoff: Backoff = Backoff()) -> None:
        self.host = host
        self.dht = dht
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff = backoff
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

    async def provide_relay(self) -> None:
        """Say in the DHT that we relay (circuit relay v2 hop) for others."""
        await self.dht.provide(relay_key())

    async def find_relays(self, *, limit: int = 8, timeout: float = 10.0) -> dict[str, list[str]]:
        """Relays found in the DHT: peer id -> the addresses their records carry."""
        infos, _, _, _ = await self._lookup(relay_key(), limit, trio.current_time() + timeout)
        return {str(i.peer_id): [str(a) for a in i.addrs] for i in infos}

    async def find_ads(self, capability: str = "cpu", *, limit: int = 20,
                       timeout: float = 15.0) -> list[Signed[CapacityAd]]:
        """Verified, fresh ads of providers of `capability`, each re-checked after reading."""
        return (await self.search(capability, limit=limit, timeout=timeout)).ads

    async def search(self, capability: str = "cpu", *, limit: int = 20,
                     timeout: float = 15.0) -> Search:
        """Find up to `limit` providers of `capability` and fetch their ads, within `timeout`:
        the lookup gets LOOKUP_SHARE of it, the ads the rest. Ads are first asked, all on
        one stream each, of the DHT servers that answered the lookup (already connected; in
        a small network every server holds every ad); only the ads they lack are fetched
        from the providers themselves (a dial each), FETCH_CONCURRENCY at a time. Refused
        or reset requests are retried with backoff inside that time."""
        start = trio.current_time()
        deadline = start + timeout
        infos, holders, dht_failed, cut = await self._lookup(
            rendezvous_key(capability), limit, start + timeout * LOOKUP_SHARE)
        results: dict[str, Signed[CapacityAd] | Miss] = {}
        with trio.move_on_after(max(deadline - trio.current_time(), 0.0)):
            await self._ads_from_holders(infos, holders, deadline, results)
        slots = trio.CapacityLimiter(FETCH_CONCURRENCY)

        async def fetch(info: Any) -> None:
            async with slots:
                results[str(info.peer_id)] = await self._fetch_ad(info.peer_id, deadline)

        with trio.move_on_after(max(deadline - trio.current_time(), 0.0)):
            async with trio.open_nursery() as nursery:
                for info in infos:
                    if str(info.peer_id) not in results:
                        self.host.remember(str(info.peer_id), [str(a) for a in info.addrs])
                        nursery.start_soon(fetch, info)
        got = [results.get(str(i.peer_id), "unreachable") for i in infos]  # cut: unreachable
        ads = [r for r in got if isinstance(r, Signed)]
        unreachable = tuple(str(i.peer_id) for i, r in zip(infos, got, strict=True)
                            if r == "unreachable")
        if unreachable or dht_failed:
            log.info("provider search: %d found, %d ads, %d unreachable, %d DHT peers failed",
                     len(infos), len(ads), len(unreachable), dht_failed)
        return Search(ads=ads, found=len(infos), unreachable=unreachable,
                      gone=got.count("gone"), invalid=got.count("invalid"),
                      dht_failed=dht_failed, lookup_cut=cut)

    async def _ads_from_holders(self, infos: Sequence[Any], holders: Sequence[Any],
                                deadline: float,
                                results: dict[str, Signed[CapacityAd] | Miss]) -> None:
        """Verified ads of `infos` asked of DHT servers that answered the lookup (up to
        HOLDERS_ASKED of them, first answer first), every ad still missing on one stream
        per server; what they lack, or hold only as an invalid or expired copy, stays out
        of `results` for the providers themselves to answer."""
        for holder in holders[:HOLDERS_ASKED]:
            missing = [ad_key(str(i.peer_id)) for i in infos if str(i.peer_id) not in results]
            if not missing:
                return
            values = await compat_kad.kad_get_values(
                self.dht, holder, missing, timeout=min(REQUEST_TIMEOUT_S,
                                                       deadline - trio.current_time()))
            for info in infos:
                peer_id = str(info.peer_id)
                value = values.get(ad_key(peer_id))
                if value is None or peer_id in results:
                    continue
                try:
                    signed = open_ad(ad_key(peer_id), value, now_ms=int(self.clock() * 1000))
                except (ProtocolError, RemoteAdError) as exc:
                    self.dropped += 1  # a stale or forged copy: the provider may have a good one
                    log.debug("dropping ad of %s from %s: %s", peer_id[:16], str(holder)[:16],
                              exc)
                    continue
                if signed.message.peer_id == peer_id:
                    results[peer_id] = signed

    async def _lookup(self, key: str, limit: int,
                      deadline: float) -> tuple[list[Any], list[Any], int, bool]:
        """Iterative GET_PROVIDERS over the closest peers to `key` (Kademlia), counting
        distinct providers; it ends when the K_CLOSEST closest peers that answered have all
        been asked, `limit` providers are known, or at `deadline`. Past the MIN_ASKED
        closest, a peer already named as a provider is not asked (asking it is a dial); the
        first MIN_ASKED are asked even so, since a provider's record may have reached only
        some servers. Connected peers are
        asked LOOKUP_CONCURRENCY at a time, but only LOOKUP_DIALS peers are dialled at once:
        each answer may name the next ones as providers, sparing their dials. (Any provider
        missing from all answers is a DHT server that is in view and gets asked, so the
        lookup still finds every provider whose record its servers hold.) Returns the
        providers, the servers that answered (first answer first), the failed requests,
        and whether the deadline cut it."""
        me = self.host.peer_id
        found: dict[str, Any] = {}
        for info in compat_kad.kad_local_providers(self.dht, key):
            found.setdefault(str(info.peer_id), info)
        candidates = compat_kad.kad_seed_peers(self.dht, key, K_CLOSEST)
        known, asked = set(candidates), set[Any]()
        answered: list[Any] = []
        failed = 0

        def enough() -> bool:
            return len([p for p in found if p != me]) >= limit

        send, receive = trio.open_memory_channel[tuple[Any, Any]](math.inf)
        with trio.move_on_after(max(deadline - trio.current_time(), 0.0)) as scope:
            async with trio.open_nursery() as nursery:
                inflight, dialing = 0, set[Any]()
                while not enough():
                    for peer in candidates[:K_CLOSEST]:
                        if inflight >= LOOKUP_CONCURRENCY:
                            break
                        if peer in asked or (str(peer) in found and len(asked) >= MIN_ASKED):
                            continue
                        dial = not compat_kad.kad_connected(self.dht, peer)
                        if dial and len(dialing) >= LOOKUP_DIALS:
                            continue
                        asked.add(peer)
                        inflight += 1
                        if dial:
                            dialing.add(peer)
                        nursery.start_soon(self._ask_providers, peer, key, deadline, send)
                    if not inflight:
                        break
                    peer, answer = await receive.receive()
                    inflight -= 1
                    dialing.discard(peer)
                    if answer is None or answer is False:
                        failed += answer is None
                        if peer in candidates:  # it may have dropped out of view meanwhile
                            candidates.remove(peer)
                        continue
                    providers, closer = answer
                    answered.append(peer)
                    for info in providers:
                        if len(found) < MAX_FOUND:
                            found.setdefault(str(info.peer_id), info)
                    fresh = [p for p in closer if p not in known]
                    known.update(fresh)
                    candidates = compat_kad.kad_by_distance(self.dht, key,
                                                        candidates + fresh)[:MAX_CANDIDATES]
                nursery.cancel_scope.cancel()
        infos = [i for p, i in found.items() if p != me][:limit]
        return infos, answered, failed, scope.cancelled_caught

    async def _ask_providers(self, peer: Any, key: str, deadline: float,
                             send: trio.MemorySendChannel[tuple[Any, Any]]) -> None:
        answer: tuple[list[Any], list[Any]] | bool | None
        try:
            answer = await retry(
                lambda left: compat_kad.kad_get_providers(
                    self.dht, peer, key, timeout=min(REQUEST_TIMEOUT_S, left)),
                policy=self.backoff, deadline=deadline, rng=self.rng,
                what=f"providers from {str(peer)[:16]}")
        except DhtRequestFailed as exc:
            log.debug("provider lookup: %s", exc)
            answer = None if exc.retryable else False  # None: busy or slow; False: gone
        send.send_nowait((peer, answer))

    async def _fetch_ad(self, peer: Any, deadline: float) -> Signed[CapacityAd] | Miss:
        """The provider's ad, asked of the provider itself (it holds the freshest copy, and
        this spreads the load over providers), else of the DHT. A miss says why: the ad
        failed verification ("invalid", counted in `dropped`), nobody holds one ("gone":
        the provider is unreachable for good or its ad expired), or requests kept failing
        until the deadline ("unreachable": the provider may well be there)."""
        peer_id, key = str(peer), ad_key(str(peer))
        value: bytes | None = None
        transient = False  # a request reset, closed or timed out: the answer may be wrong
        try:
            value = await retry(
                lambda left: compat_kad.kad_get_value(
                    self.dht, peer, key, timeout=min(REQUEST_TIMEOUT_S, left)),
                policy=self.backoff, deadline=deadline, rng=self.rng,
                what=f"ad of {peer_id[:16]}")
        except DhtRequestFailed as exc:
            log.debug("ad of %s from itself: %s", peer_id[:16], exc)
            transient = exc.retryable
        if value is None:
            with trio.move_on_after(max(deadline - trio.current_time(), 0.0)) as scope:
                try:
                    value = await compat.fresh_get_value(self.dht, key)
                except Exception as exc:
                    log.debug("get_value(%s) failed: %s", key, exc)
            transient = transient or scope.cancelled_caught
        if value is None:
            log.debug("no ad found for provider %s", peer_id[:16])
            return "unreachable" if transient else "gone"
        try:
            signed = open_ad(key, value, now_ms=int(self.clock() * 1000))
        except (ProtocolError, RemoteAdError) as exc:
            self.dropped += 1
            log.debug("dropping ad of %s: %s", peer_id[:16], exc)
            return "invalid"
        if signed.message.peer_id != peer_id:
            self.dropped += 1
            return "invalid"
        return signed

    async def require_ads(self, capability: str = "cpu", *,
                          want: Callable[[CapacityAd], bool] | None = None,
                          **kw: Any) -> list[Signed[CapacityAd]]:
        """A search's ads (it always searches: `want` is for caches), else NoProviders."""
        found = await self.search(capability, **kw)
        if found.ads:
            return found.ads
        shortfall = found.shortfall()
        if shortfall:
            raise NoProviders(f"no provider with a valid ad was reached: {shortfall}")
        raise NoProviders("no provider with a valid ad was found; check --bootstrap and "
                          "that a provider is running")


@asynccontextmanager
async def open_discovery(host: Host, *, server: bool, clock: Clock) -> AsyncIterator[Discovery]:
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    dht = KadDHT(libp2p_host(host), DHTMode.SERVER if server else DHTMode.CLIENT)
    dht.register_validator(NAMESPACE, _make_validator(clock))
    if server:
        compat_kad.fair_dht_inbound(dht)
    else:
        compat_kad.kad_client_without_walks(dht)
    async with background_trio_service(dht):
        yield Discovery(host, dht, clock=clock)
