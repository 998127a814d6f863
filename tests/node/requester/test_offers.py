"""The offer cache: expired ads never used, forged files refused, vanished providers dropped,
background refresh, jobs placed without the DHT while fresh ads meet them; and the
provider lookup asks the closest servers even when they are named as providers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from node.errors import NoProviders, OfferCacheRefused
from node.home import Home
from node.net import compat_kad
from node.net.discovery import Discovery, Search
from node.net.peers import PeerBook
from node.requester.offers import MARGIN_S, OfferCache, OfferSource
from node.requester.placement import find_candidates
from protocol import CapacityAd, Identity, Resources, Signed
from scheduler import Requirements
from scheduler.scoring import JobEstimate
from tests.factories import BOB, CAROL, plain_ad, signed

T0 = 1_800_000_000.0  # unix seconds the tests' clocks start at


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(who: Identity = BOB, *, seq: int = 1, life_s: float = 120.0, at: float = T0,
         cpus: int = 4) -> Signed[CapacityAd]:
    return signed(plain_ad(peer_id=who.peer_id, seq=seq, cpus=cpus,
                           expires=int((at + life_s) * 1000)), who)


class FakeDisc:
    """A Discovery that counts searches and answers what `ads()` returns then."""

    def __init__(self, ads: Any) -> None:
        self.make = ads if callable(ads) else (lambda: ads)
        self.searches = 0

    async def search(self, capability: str = "cpu", **_: Any) -> Search:
        self.searches += 1
        ads = list(self.make())
        return Search(ads=ads, found=len(ads), unreachable=(), gone=0, invalid=0,
                      dht_failed=0, lookup_cut=False)


def source(disc: FakeDisc, clock: Clock, path: Path | None = None) -> OfferSource:
    return OfferSource(disc, OfferCache(clock=clock), path=path)  # type: ignore[arg-type]


# expiry --------------------------------------------------------------------------------
async def test_an_ad_past_its_expires_is_never_used_from_memory() -> None:
    clock = Clock()
    disc = FakeDisc([])
    src = source(disc, clock)
    assert src.cache.add(make(life_s=10))
    assert [s.message.peer_id for s in await src.ads()] == [BOB.peer_id]  # canary: fresh
    assert disc.searches == 0
    clock.t += 10  # expires is exclusive: at `expires` the ad is dead
    assert src.cache.fresh() == []
    with pytest.raises(NoProviders, match=r"^no provider with a valid ad was found"):
        await src.require_ads()
    assert disc.searches == 1  # it searched instead of using the dead ad


def test_an_ad_past_its_expires_is_never_used_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "offers.msgpack"
    cache = OfferCache(clock=Clock())
    cache.add(make(life_s=30))
    cache.add(make(CAROL, life_s=90))
    cache.searched_at = T0
    cache.save(path)
    assert path.stat().st_mode & 0o077 == 0
    assert len(OfferCache.load(path, clock=Clock(T0 + 29)).fresh()) == 2  # canary
    later = OfferCache.load(path, clock=Clock(T0 + 30))
    assert [s.message.peer_id for s in later.fresh()] == [CAROL.peer_id]
    assert OfferCache.load(path, clock=Clock(T0 + 91)).fresh() == []


# forged files --------------------------------------------------------------------------
def _file(entries: list[dict[str, Any]]) -> bytes:
    return bytes(msgpack.packb({"v": 1, "searched_at": T0, "ads": entries, "gone": []},
                               use_bin_type=True))


def _forgeries() -> dict[str, bytes]:
    good = make()
    raw = bytearray(good.raw)
    raw[-1] ^= 1  # the signature is the last field of the envelope
    other = make(CAROL)
    return {
        "bad signature": _file([{"peer": BOB.peer_id, "ad": bytes(raw)}]),
        "swapped peer id": _file([{"peer": BOB.peer_id, "ad": other.raw}]),
        "truncated": _file([{"peer": BOB.peer_id, "ad": good.raw}])[:-7],
        "not msgpack": b"{\"ads\": []}\n\xff",
        "another version": bytes(msgpack.packb({"v": 2, "ads": [], "gone": []})),
    }


@pytest.mark.parametrize("kind", list(_forgeries()))
def test_a_forged_or_corrupt_cache_file_is_refused(tmp_path: Path, kind: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    good = _file([{"peer": BOB.peer_id, "ad": make().raw}])
    loaded = OfferCache.loads(good, clock=Clock())  # canary: the honest file is used
    assert [s.message.peer_id for s in loaded.fresh()] == [BOB.peer_id]
    with pytest.raises(OfferCacheRefused):
        OfferCache.loads(_forgeries()[kind], clock=Clock())
    path = Home(tmp_path).offers
    path.write_bytes(_forgeries()[kind])
    assert OfferCache.load(path, clock=Clock()).fresh() == []  # ignored, logged
    assert "refusing the offer cache" in caplog.text


async def test_a_refused_file_is_searched_past_and_rewritten(tmp_path: Path) -> None:
    path = Home(tmp_path).offers
    path.write_bytes(_forgeries()["bad signature"])
    clock = Clock()
    disc = FakeDisc([make(CAROL)])
    src = OfferSource(disc, OfferCache.load(path, clock=clock), path=path)  # type: ignore[arg-type]
    assert [s.message.peer_id for s in await src.ads()] == [CAROL.peer_id]
    assert disc.searches == 1
    again = OfferCache.load(path, clock=clock)
    assert [s.message.peer_id for s in again.fresh()] == [CAROL.peer_id]


# a provider that vanished --------------------------------------------------------------
async def test_a_provider_that_vanished_is_dropped_until_it_advertises_anew(
        tmp_path: Path) -> None:
    clock = Clock()
    path = Home(tmp_path).offers
    seq = {"bob": 5}
    disc = FakeDisc(lambda: [make(seq=seq["bob"]), make(CAROL)])
    src = OfferSource(disc, OfferCache(clock=clock), path=path)  # type: ignore[arg-type]
    await src.search()
    assert {s.message.peer_id for s in src.cache.fresh()} == {BOB.peer_id, CAROL.peer_id}
    src.drop(BOB.peer_id)
    assert [s.message.peer_id for s in src.cache.fresh()] == [CAROL.peer_id]
    on_disk = OfferCache.load(path, clock=clock)
    assert [s.message.peer_id for s in on_disk.fresh()] == [CAROL.peer_id]
    await src.search()  # the DHT still holds its last ad: that one stays out
    assert BOB.peer_id not in {s.message.peer_id for s in src.cache.fresh()}
    on_disk.add(make(seq=5))
    assert BOB.peer_id not in {s.message.peer_id for s in on_disk.fresh()}  # also from disk
    seq["bob"] = 6  # it is back: a newer ad
    await src.search()
    assert BOB.peer_id in {s.message.peer_id for s in src.cache.fresh()}


# background refresh --------------------------------------------------------------------
async def test_background_refresh_replaces_ads_before_they_expire(
        autojump_clock: trio.testing.MockClock) -> None:
    def now() -> float:
        return T0 + trio.current_time()

    disc = FakeDisc(lambda: [make(seq=int(now()), at=now())])
    src = OfferSource(disc, OfferCache(clock=now))  # type: ignore[arg-type]
    seen: list[tuple[float, int, int]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(src.refresh_forever)
        for _ in range(60):
            await trio.sleep(5)
            ads = src.cache.fresh()
            assert ads, f"no fresh ad at {now() - T0:.0f} s"
            seen.append((now(), ads[0].message.seq, ads[0].message.expires))
        nursery.cancel_scope.cancel()
    assert disc.searches >= 5
    assert len({s for _, s, _ in seen}) >= 5  # replaced, again and again
    for t, _, expires in seen:
        assert expires / 1000 - t >= MARGIN_S - 5.0  # never close to its end


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# placement from the cache --------------------------------------------------------------
def _place(src: OfferSource, tmp_path: Path, **kw: Any) -> Any:
    return find_candidates(src, Requirements(), JobEstimate(resources=Resources()),
                           PeerBook(tmp_path / "p.json"), **kw)


async def test_a_job_does_not_touch_the_dht_while_fresh_ads_meet_it(tmp_path: Path) -> None:
    clock = Clock()
    disc = FakeDisc(lambda: [make(CAROL, cpus=8, at=clock.t)])
    src = source(disc, clock)
    ranked = await _place(src, tmp_path)  # canary: an empty cache searches
    assert disc.searches == 1 and ranked[0][0].peer_id == CAROL.peer_id
    for _ in range(5):
        await _place(src, tmp_path)
    assert disc.searches == 1
    src.cache.add(make(BOB))
    await _place(src, tmp_path, provider=BOB.peer_id)
    assert disc.searches == 1
    clock.t += 121  # every ad expired: the next job searches
    ranked = await _place(src, tmp_path)
    assert disc.searches == 2 and ranked[0][0].peer_id == CAROL.peer_id


async def test_a_job_no_cached_ad_meets_searches(tmp_path: Path) -> None:
    disc = FakeDisc([make(CAROL)])
    src = source(disc, Clock())
    src.cache.add(make(BOB))
    ranked = await _place(src, tmp_path, provider=CAROL.peer_id)
    assert disc.searches == 1 and [a.peer_id for a, _ in ranked] == [CAROL.peer_id]


async def test_fresh_searches_once_then_uses_the_cache(tmp_path: Path) -> None:
    disc = FakeDisc([make(CAROL)])
    src = OfferSource(disc, OfferCache(clock=Clock()), fresh=True)  # type: ignore[arg-type]
    src.cache.add(make(BOB))
    await _place(src, tmp_path)
    await _place(src, tmp_path)
    assert disc.searches == 1


# the provider lookup -------------------------------------------------------------------
class Info:
    def __init__(self, peer: str) -> None:
        self.peer_id, self.addrs = peer, []


async def test_the_lookup_asks_servers_named_as_providers_for_records_of_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain p1..p10 where p10's record reached only p9: p1 (the bootstrap) names p1..p9
    as providers and as its closest peers. A lookup that never asks a peer named as a
    provider stops there and misses p10."""
    peers = [f"p{i}" for i in range(1, 11)]
    asked: list[str] = []

    async def get_providers(dht: Any, peer: str, key: str, *, timeout: float) -> Any:
        asked.append(peer)
        named = peers if peer == "p9" else peers[:9]
        return [Info(p) for p in named], [p for p in peers[:9] if p != peer]

    monkeypatch.setattr(compat_kad, "kad_local_providers", lambda dht, key: [])
    monkeypatch.setattr(compat_kad, "kad_seed_peers", lambda dht, key, n: ["p1"])
    monkeypatch.setattr(compat_kad, "kad_connected", lambda dht, peer: True)
    monkeypatch.setattr(compat_kad, "kad_get_providers", get_providers)
    # p9 is the closest to the key, then p8, ...
    monkeypatch.setattr(compat_kad, "kad_by_distance",
                        lambda dht, key, ps: sorted(dict.fromkeys(ps), key=lambda p: -int(p[1:])))

    class Me:
        peer_id = "requester"

    disc = Discovery(Me(), None, clock=lambda: T0)  # type: ignore[arg-type]
    with trio.fail_after(5):
        infos, _, failed, cut = await disc._lookup("key", 20, trio.current_time() + 5)
    assert sorted(i.peer_id for i in infos) == sorted(peers), asked
    assert "p9" in asked and len(asked) <= 4 and not failed and not cut
