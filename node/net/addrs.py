"""Peer addresses as text (`/ip4/.../tcp/N/p2p/ID`), checked without importing libp2p."""

from __future__ import annotations

from collections.abc import Sequence

from node.errors import UserError


def split_peer_addr(maddr: str) -> tuple[str, str]:
    """`/ip4/.../tcp/N/p2p/ID` -> (transport part, peer id); UserError when malformed."""
    head, sep, peer = maddr.rpartition("/p2p/")
    if not sep or not head or not peer or "/" in peer:
        raise UserError(f"address {maddr!r} must end in /p2p/<peer id>; copy it from the "
                        "provider's ready file or `offload id`")
    return head, peer


def check_bootstrap(bootstrap: Sequence[str]) -> None:
    """UserError unless there is at least one bootstrap peer and each is well formed."""
    if not bootstrap:
        raise UserError("no bootstrap peer: pass --bootstrap /ip4/.../tcp/N/p2p/ID "
                        "or set OFFLOAD_BOOTSTRAP")
    for maddr in bootstrap:
        split_peer_addr(maddr)
