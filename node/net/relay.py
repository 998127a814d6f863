"""`offload relay`: a public node that relays for NATed peers and runs no jobs.

It serves circuit relay v2 (hop) within `nat.RelayLimits`, answers AutoNAT with fresh
dial-backs, is a DHT server a network can bootstrap from, and provides the relays' DHT
key so providers find it beyond their bootstrap list.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from node.home import write_ready_file
from node.net.discovery import Discovery, open_discovery
from node.net.host import open_host
from node.net.limits import Limits
from node.net.nat import RelayLimits
from protocol.identity import Identity

log = logging.getLogger(__name__)
PROVIDE_EVERY_S = 600.0


async def provide_relay_forever(disc: Discovery, *,
                                task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Keep the relays' DHT key pointing at us (provider records expire)."""
    first = True
    while True:
        try:
            with trio.move_on_after(30):
                await disc.provide_relay()
        except Exception:
            log.warning("announcing the relay in the DHT failed; retrying", exc_info=True)
        if first:
            task_status.started()
            first = False
        await trio.sleep(PROVIDE_EVERY_S)


async def serve_relay(identity: Identity, listen: Sequence[str], *,
                      bootstrap: Sequence[str] = (), ready_file: Path | None = None,
                      limits: Limits | None = None, relay_limits: RelayLimits | None = None,
                      task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a relay until SIGINT/SIGTERM (or cancelled)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_host(identity, listen, limits=limits, relay_service=True,
                             relay_limits=relay_limits) as host, \
                open_discovery(host, server=True, clock=time.time) as disc, \
                trio.open_nursery() as nursery:
            await disc.bootstrap(bootstrap)
            await nursery.start(provide_relay_forever, disc)
            if ready_file is not None:
                write_ready_file(ready_file, host.peer_id, host.addrs(), relay=True)
            log.info("relay %s listening on %s (reservations up to %d, %d per IP; circuits "
                     "%d s, %d MiB)", identity.peer_id, host.addrs(),
                     host.nat.relay_limits.reservations,
                     host.nat.relay_limits.reservations_per_ip,
                     host.nat.relay_limits.circuit_s,
                     host.nat.relay_limits.circuit_bytes // 2**20)
            task_status.started(host)
            async for signum in signals:
                log.info("signal %d: stopping", signum)
                break
            nursery.cancel_scope.cancel()

