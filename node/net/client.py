"""A requester-side node session: a host, a DHT client and the bootstrap peers."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from node.config import env_list
from node.errors import NoProviders, sole_error
from node.net.addrs import check_bootstrap
from node.net.discovery import Discovery, open_discovery
from node.net.host import Host, open_host
from protocol.identity import Identity

CLIENT_LISTEN = ("/ip4/127.0.0.1/tcp/0",)
PROBE_IP = "192.0.2.1"
"""TEST-NET-1: a UDP socket "connected" to it names our outbound address; nothing is sent."""


def client_listen(env: Mapping[str, str] | None = None) -> list[str]:
    """Where a requester listens: $OFFLOAD_LISTEN, else a free port on the address this
    machine reaches other networks from (behind a NAT, hole punching needs it), else
    loopback."""
    chosen = env_list("OFFLOAD_LISTEN", env=env)
    if chosen:
        return chosen
    ip = outbound_ip()
    return [f"/ip4/{ip}/tcp/0"] if ip else list(CLIENT_LISTEN)


def outbound_ip() -> str:
    """The IPv4 address of the interface the default route leaves by ("" when none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((PROBE_IP, 9))
            ip = str(s.getsockname()[0])
    except OSError:
        return ""
    return "" if ip.startswith("0.") else ip


@asynccontextmanager
async def open_client(identity: Identity, bootstrap: Sequence[str], *,
                      clock: Callable[[], float] = time.time
                      ) -> AsyncIterator[tuple[Host, Discovery]]:
    check_bootstrap(bootstrap)
    try:
        async with open_host(identity, client_listen()) as host, \
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
