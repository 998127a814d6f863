"""Vivaldi coordinates from real round trips: ping a few peers found in the DHT, move.

Providers run `probe_forever` and publish the coordinate in their ads, so a requester can
estimate its RTT to a provider it never contacted; requesters update theirs on every
provider they ping before sending work (see placement.py).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from node.errors import RemoteError
from node.net.discovery import Discovery
from node.net.host import Host
from node.net.peers import PeerBook
from protocol import CapacityAd
from scheduler.vivaldi import MAX_ERROR

log = logging.getLogger(__name__)
PROBE_INTERVAL_S = 30.0
PROBE_SAMPLE = 3
EMPTY_RETRY_S = 3.0
PING_TIMEOUT_S = 2.0


async def probe_once(host: Host, disc: Discovery, book: PeerBook, *,
                     rng: random.Random, sample: int = PROBE_SAMPLE) -> int:
    """Ping up to `sample` other providers; returns how many answered."""
    ads = [a.message for a in await disc.find_ads("cpu", limit=16)
           if a.message.peer_id != host.peer_id]
    answered = 0
    for ad in rng.sample(ads, min(sample, len(ads))):
        answered += await measure(host, book, ad)
    return answered


async def measure(host: Host, book: PeerBook, ad: CapacityAd, *,
                  timeout: float = PING_TIMEOUT_S) -> bool:
    """Ping the ad's peer and record the RTT (moving our coordinate); False if no answer."""
    try:
        rtt = await host.ping(ad.peer_id, addrs=ad.addrs, timeout=timeout)
    except RemoteError as exc:
        log.debug("ping of %s failed: %s", ad.peer_id[:16], exc)
        return False
    book.record_rtt(ad.peer_id, rtt, ad.coords)
    return True


async def probe_forever(host: Host, disc: Discovery, book: PeerBook, *,
                        on_moved: Callable[[], None], interval_s: float = PROBE_INTERVAL_S,
                        rng: random.Random | None = None) -> None:
    rng = rng or random.Random()
    while True:
        answered = 0
        try:
            if answered := await probe_once(host, disc, book, rng=rng):
                book.save()
                if book.coord.error < MAX_ERROR:
                    on_moved()
        except RemoteError as exc:
            log.debug("proximity probe failed: %s", exc)
        # Alone so far: look again soon, a network is usually forming around a new node.
        wait = interval_s if answered else min(interval_s, EMPTY_RETRY_S)
        await trio.sleep(wait * (0.75 + 0.5 * rng.random()))
