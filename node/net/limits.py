"""Per-peer and per-IP shares of what a node serves, and the count of what peers did wrong.

`StreamShares` caps the inbound streams one peer id (and one IP, for peers that mint fresh
identities) holds open per protocol; `ConnectionShares` caps connections per IP. Networks
in `exempt` (loopback by default, as go-libp2p does) skip the per-IP caps only.
`PeerErrors` counts every refused or failed exchange by kind, so an operator sees a
misbehaving peer in metrics instead of in a traceback.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

from node.errors import PeerGone, PeerTimeout, RemoteError, UserError
from protocol import ProtocolError

log = logging.getLogger(__name__)

KINDS: Final = ("protocol", "too_large", "timeout", "gone", "remote", "limit", "unexpected")
LOOPBACK: Final = ("127.0.0.0/8", "::1/128")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Defaults for an internet-facing node; provider.toml `[limits]` overrides them."""

    streams_per_peer: int = 8
    """Open inbound streams of one protocol from one peer id."""
    streams_per_ip: int = 32
    """Open inbound streams of one protocol from one IP, whatever the peer ids."""
    connections_per_ip: int = 16
    """Connections from one IP at once."""
    exempt: tuple[str, ...] = LOOPBACK
    """Networks the per-IP caps do not apply to."""

    def __post_init__(self) -> None:
        for name in ("streams_per_peer", "streams_per_ip", "connections_per_ip"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise UserError(f"limits.{name} must be between 1 and 100000")
        for net in self.exempt:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise UserError(f"limits.exempt: {net!r} is not a network such as "
                                "127.0.0.0/8") from None


class _Exempt:
    def __init__(self, networks: Sequence[str]) -> None:
        self._nets = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __call__(self, ip: str) -> bool:
        if not ip:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in n for n in self._nets)


class StreamShares:
    """Open inbound streams by (protocol, peer) and (protocol, ip); pure bookkeeping."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._exempt = _Exempt(limits.exempt)
        self._by_peer: Counter[tuple[str, str]] = Counter()
        self._by_ip: Counter[tuple[str, str]] = Counter()

    def is_exempt(self, ip: str) -> bool:
        """Whether `ip` lies in a network the per-IP caps skip."""
        return self._exempt(ip)

    def try_open(self, protocol: str, peer: str, ip: str) -> str | None:
        """Take a share; None when granted, else why not (nothing taken)."""
        if self._by_peer[(protocol, peer)] >= self.limits.streams_per_peer:
            return f"more than {self.limits.streams_per_peer} open {protocol} streams from you"
        counted_ip = not self._exempt(ip)
        if counted_ip and self._by_ip[(protocol, ip)] >= self.limits.streams_per_ip:
            return f"more than {self.limits.streams_per_ip} open {protocol} streams from {ip}"
        self._by_peer[(protocol, peer)] += 1
        if counted_ip:
            self._by_ip[(protocol, ip)] += 1
        return None

    def close(self, protocol: str, peer: str, ip: str) -> None:
        _drop(self._by_peer, (protocol, peer))
        if not self._exempt(ip):
            _drop(self._by_ip, (protocol, ip))

    def open_count(self, protocol: str, peer: str) -> int:
        return self._by_peer[(protocol, peer)]


class ConnectionShares:
    """Connections by IP; `admit` says whether one more from `ip` may stay open."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._exempt = _Exempt(limits.exempt)
        self._by_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> bool:
        if self._exempt(ip):
            return True
        if self._by_ip[ip] >= self.limits.connections_per_ip:
            return False
        self._by_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        if not self._exempt(ip):
            _drop(self._by_ip, ip)

    def count(self, ip: str) -> int:
        return self._by_ip[ip]


def _drop(counter: Counter[Any], key: Any) -> None:
    if counter[key] <= 1:
        counter.pop(key, None)
    else:
        counter[key] -= 1


def kind_of(exc: BaseException) -> str:
    """The metrics label of a peer's failure; "unexpected" marks a bug of ours."""
    from protocol.errors import FrameTooLarge

    if isinstance(exc, BaseExceptionGroup):  # a task group's: one kind, or a bug of ours
        kinds = {kind_of(e) for e in exc.exceptions}
        return kinds.pop() if len(kinds) == 1 else "unexpected"
    if isinstance(exc, FrameTooLarge):
        return "too_large"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, PeerGone):
        return "gone"
    if isinstance(exc, RemoteError):
        return "remote"
    return "unexpected"


class PeerErrors:
    """Counts of refused or failed peer exchanges by kind; `on_count` feeds metrics."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.on_count: Callable[[str], None] | None = None

    def count(self, kind: str) -> None:
        self.counts[kind] += 1
        if self.on_count is not None:
            self.on_count(kind)

    def failed(self, where: str, peer: str, exc: BaseException) -> None:
        """A handler, validator or recorder failed on what `peer` sent: count it, log it
        (at debug for the peer's own fault, with a traceback for a bug of ours)."""
        kind = kind_of(exc)
        self.count(kind)
        if kind == "unexpected":
            log.error("%s failed on input from peer %s (a bug: please report it)", where,
                      peer, exc_info=exc)
        else:
            log.debug("%s: peer %s: %s: %s", where, peer[:16], kind, exc)
