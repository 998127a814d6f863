"""Every py-libp2p 0.8.1 workaround lives here (see shared/notes/libp2p-0.8.1.md)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

_patched = False


class _DropNoise(logging.Filter):
    """Bug 10: normal stream closes log 'Failed to read DHT message' by the hundred."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to read DHT message" not in record.getMessage()


def patch_libp2p() -> None:
    """Apply process-wide fixes once: no happy-eyeballs dial delay (bug 1), quiet logs."""
    global _patched
    if _patched:
        return
    import libp2p.network.swarm as swarm

    swarm._HAPPY_EYEBALLS_DELAY = 0.0
    for name in ("libp2p", "libp2p.kad_dht", "libp2p.kad_dht.kad_dht"):
        logging.getLogger(name).addFilter(_DropNoise())
    root = logging.getLogger("libp2p")
    root.setLevel(logging.ERROR)
    # libp2p detaches its logger (propagate=False, no handler), so Python's last-resort
    # handler printed every failed dial to a dead peer, unformatted, on users' stderr.
    # Our own errors say what failed; libp2p's lines join our logs only when debugging.
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        root.propagate = True
    else:
        root.addHandler(logging.NullHandler())
    _patched = True


def new_host(seed: bytes) -> Any:
    """A host with our Ed25519 identity, noise only (bug 6) and yamux only (bugs 3, 4)."""
    patch_libp2p()
    from libp2p import new_host as _new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519
    from libp2p.custom_types import TProtocol
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519().private_key)
    return _new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_ID): noise},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
    )


@asynccontextmanager
async def running_host(host: Any, listen: Sequence[str]) -> AsyncIterator[None]:
    """Run `host`; on exit close it explicitly, shielded, so no listener survives (bug 5)."""
    from multiaddr import Multiaddr

    try:
        async with host.run([Multiaddr(a) for a in listen]):
            yield
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            await host.close()


def forget_failed_dial(host: Any, peer_id: Any) -> None:
    """Bug 11: after one failed dial a peer id is refused for 60 s; forget that."""
    cache = getattr(host.get_network(), "_negative_peer_cache", None)
    if cache is not None:
        cache.evict(str(peer_id))


def rendezvous_cid(name: str) -> str:
    """Provider keys must be CIDs (CIDv1, raw codec, sha2-256) to interoperate."""
    from libp2p.bitswap.cid import compute_cid_v1_obj

    return str(compute_cid_v1_obj(name.encode()))


def dedupe_peers(infos: Sequence[Any]) -> list[Any]:
    """Bug 7: find_providers returns duplicates."""
    seen: set[str] = set()
    out = []
    for info in infos:
        key = str(info.peer_id)
        if key not in seen:
            seen.add(key)
            out.append(info)
    return out


async def fresh_get_value(dht: Any, key: str) -> bytes | None:
    """get_value answers from the local store first, and stores what it found there, so a
    long-lived node would never see an updated record: ask the network, and fall back to
    the local copy only if no peer has one (a server holding the only copy)."""
    key_bytes = key.encode("utf-8")
    local = dht.value_store.get(key_bytes)
    if local is not None:
        dht.value_store.remove(key_bytes)
    try:
        value: bytes | None = await dht.get_value(key)
    finally:
        if dht.value_store.get(key_bytes) is None and local is not None:
            dht.value_store.put_record(key_bytes, local)
    if value is None and local is not None:
        return bytes(local.value)
    return value


def announce_existing_peers(pubsub: Any, host: Any) -> int:
    """Pubsub learns of peers only from connections opened after it was built: hand it the
    ones already open (bootstrap peers), or those peers never hear our subscriptions."""
    peers = list(host.get_network().connections)
    for peer_id in peers:
        pubsub.manager.run_task(pubsub._handle_new_peer_with_retry, peer_id)
    return len(peers)
