"""A provider re-signs its ad on schedule: higher seq, fresh expiry, same key (real libp2p host)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import trio

from ledger import Ledger
from node.net.discovery import AD_LIFETIME_S, AD_REFRESH_S, ad_key, open_ad, open_discovery
from node.net.gossip import recorder, run_gossip
from node.net.host import open_host
from node.provider.cache import InputCache
from node.provider.daemon import Provider, ProviderConfig
from node.provider.executor import ExecutorSetup, PlainExecutor
from node.provider.telemetry import Telemetry
from protocol import Identity, Runtime


def test_default_schedule_is_60_s_refresh_with_120_s_lifetime() -> None:
    config = ProviderConfig(home=Path("/nonexistent"))
    assert (AD_REFRESH_S, AD_LIFETIME_S) == (60, 120)
    assert (config.ad_refresh_s, config.ad_lifetime_s) == (60, 120)


async def test_ads_are_refreshed_with_rising_seq(tmp_path: Path) -> None:
    me = Identity.generate()
    config = ProviderConfig(home=tmp_path, ad_refresh_s=0.3, ad_lifetime_s=120)
    runtime = Runtime(name="python3", version="3.11", packages={}, digest="")
    setup = ExecutorSetup(executor=PlainExecutor(tmp_path / "jobs"), runtime=runtime,
                          report=None, reason="test")
    async with open_host(me, ["/ip4/127.0.0.1/tcp/0"]) as host, \
            open_discovery(host, server=True, clock=time.time) as disc:
        addrs = tuple(host.addrs())
        async with trio.open_nursery() as nursery:
            ledger = Ledger.open(tmp_path / "ledger.db", me)
            provider = Provider(config, me, clock=time.time, setup=setup, ledger=ledger,
                                cache=InputCache(tmp_path / "cache", max_bytes=10**6),
                                telemetry=Telemetry(),
                                gossip=await nursery.start(partial(
                                    run_gossip, host, on_receipt=recorder(ledger))))
            await nursery.start(provider.advertise_forever, host, disc)
            seen = []
            for _ in range(3):
                record = disc.dht.value_store.get(ad_key(me.peer_id).encode())
                assert record is not None
                ad = open_ad(ad_key(me.peer_id), record.value,
                             now_ms=int(time.time() * 1000)).message
                seen.append(ad)
                await trio.sleep(0.45)
            nursery.cancel_scope.cancel()
        ledger.close()
    seqs = [a.seq for a in seen]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    for ad in seen:
        assert ad.expires - ad.seq == 120_000
        assert ad.addrs == addrs and addrs
