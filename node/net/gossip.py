"""Receipts gossiped on a libp2p pubsub topic, so reputation needs no central server.

Every node joins `/offload/receipts/1` (gossipsub). A message is one signed Receipt;
the topic validator (`protocol.check_receipt`: strict decoding, signature, sane fields,
size cap, age window) drops anything else before it is stored or forwarded. Message ids
are content addresses, so the same receipt published by several peers travels once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ledger import Ledger, LedgerError
from node.net import compat
from node.net.host import Host, libp2p_host
from node.net.limits import PeerErrors
from protocol import ProtocolError, check_receipt

log = logging.getLogger(__name__)
RECEIPTS_TOPIC = "/offload/receipts/1"
MAX_MESSAGE = 4096


class Gossip:
    """A joined receipts topic: `publish(raw_receipt)`; `dropped` counts refused messages."""

    def __init__(self, pubsub: Any, clock: Callable[[], float],
                 errors: PeerErrors | None = None) -> None:
        self._pubsub = pubsub
        self._clock = clock
        self.errors = errors or PeerErrors()
        self.dropped = 0
        self.received = 0

    def validate(self, peer: Any, msg: Any) -> bool:
        """Never raises: anything but a valid receipt is dropped and counted."""
        try:
            data = bytes(msg.data)
            if len(data) > MAX_MESSAGE:
                raise ProtocolError(f"{len(data)} bytes, above {MAX_MESSAGE}")
            check_receipt(data, int(self._clock() * 1000))
        except Exception as exc:
            self.dropped += 1
            self.errors.failed("receipt gossip validator", str(peer), exc)
            return False
        return True

    async def publish(self, raw_receipt: bytes) -> None:
        """Best effort: gossip is a second path, the provider got the receipt directly."""
        try:
            await self._pubsub.publish(RECEIPTS_TOPIC, raw_receipt)
        except Exception as exc:  # py-libp2p raises plain exceptions
            log.info("could not gossip a receipt: %s", exc)


def recorder(ledger: Ledger | None, errors: PeerErrors | None = None
             ) -> Callable[[bytes], Awaitable[None]]:
    """`on_receipt` that keeps each gossiped receipt in `ledger` as reputation evidence;
    never raises (a receipt the ledger refuses is counted and dropped)."""
    counted = errors or PeerErrors()

    async def record(raw: bytes) -> None:
        if ledger is None:
            return
        try:
            await trio.to_thread.run_sync(ledger.record_receipt, raw)
        except (ProtocolError, LedgerError) as exc:
            counted.count("protocol")
            log.debug("not recording a gossiped receipt: %s", exc)
        except Exception as exc:
            counted.failed("receipt recorder", "gossip", exc)

    return record


@asynccontextmanager
async def open_gossip(host: Host, *, on_receipt: Callable[[bytes], Awaitable[None]] | None = None,
                      clock: Callable[[], float] = time.time) -> AsyncIterator[Gossip]:
    """Join the receipts topic for the life of the block; `on_receipt` gets valid ones."""
    from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import ContentAddressedMessageIDGenerator, Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    router = GossipSub(protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=6, degree_low=4,
                       degree_high=12, heartbeat_interval=1,
                       max_messages_per_topic_per_second=200.0, min_mesh_diversity_ips=1)
    raw = libp2p_host(host)
    pubsub = Pubsub(raw, router, msg_id_constructor=ContentAddressedMessageIDGenerator(),
                    max_inbound_rpc_size=64 * 1024)
    gossip = Gossip(pubsub, clock, host.peer_errors)
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        compat.announce_existing_peers(pubsub, raw)
        pubsub.set_topic_validator(RECEIPTS_TOPIC, gossip.validate, False)
        sub = await pubsub.subscribe(RECEIPTS_TOPIC)
        async with trio.open_nursery() as nursery:
            async def deliver() -> None:
                while True:
                    msg = await sub.get()
                    gossip.received += 1
                    if on_receipt is None:
                        continue
                    try:
                        await on_receipt(bytes(msg.data))
                    except Exception as exc:
                        gossip.errors.failed("receipt delivery", "gossip", exc)

            nursery.start_soon(deliver)
            yield gossip
            nursery.cancel_scope.cancel()


async def run_gossip(host: Host, *, on_receipt: Callable[[bytes], Awaitable[None]],
                     task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """`open_gossip` as a task (for `nursery.start`): started() hands back the Gossip."""
    async with open_gossip(host, on_receipt=on_receipt) as gossip:
        task_status.started(gossip)
        await trio.sleep_forever()
