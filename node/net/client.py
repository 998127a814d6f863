"""A requester-side node session: a host, a DHT client and the bootstrap peers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from node.errors import NoProviders, sole_error
from node.net.addrs import check_bootstrap
from node.net.discovery import Discovery, open_discovery
from node.net.host import Host, open_host
from protocol.identity import Identity

CLIENT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)


@asynccontextmanager
async def open_client(identity: Identity, bootstrap: Sequence[str], *,
                      clock: Callable[[], float] = time.time
                      ) -> AsyncIterator[tuple[Host, Discovery]]:
    check_bootstrap(bootstrap)
    try:
        async with open_host(identity, CLIENT_LISTEN) as host, \
                open_discovery(host, server=False, clock=clock) as disc:
            if not await disc.bootstrap(bootstrap):
                raise NoProviders(
                    f"none of the bootstrap peers answered: {', '.join(bootstrap)}")
            yield host, disc
    except BaseExceptionGroup as group:
        sole = sole_error(group)
        if sole is None:
            raise
        raise sole from None
