"""Whether peers can dial us, and relay reservations when they cannot.

`Reachability` asks AutoNAT servers (bootstrap peers and relays) to dial us back on our
listen addresses. Public: we advertise our own addresses. Private: we hold reservations
on up to `max_relays` relays (from the bootstrap list and the DHT), renew them, replace
a relay that goes away, and advertise only the circuit addresses through them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import trio

from node.errors import RemoteError
from node.net.addrs import split_peer_addr
from node.net.discovery import Discovery
from node.net.host import Libp2pHost
from node.net.nat import circuit_addr

log = logging.getLogger(__name__)

Reach = Literal["public", "private", "unknown"]
CHECK_S: Final = 2.0
"""How often held reservations are checked (their relay still connected, renewal due)."""
AUTONAT_RECHECK_S: Final = 300.0
"""How often reachability is asked again while our addresses stay the same."""
RELAY_SEARCH_S: Final = 60.0
"""Least time between two DHT searches for relays."""
RELAY_RETRY_S: Final = 30.0
"""Longest wait before a relay that refused or failed is tried again (backoff 2, 4, ... s)."""
SERVERS_ASKED: Final = 3


@dataclasses.dataclass
class ReachState:
    """What `offload status` reports about reachability."""

    reachability: Reach = "unknown"
    relays: list[str] = dataclasses.field(default_factory=list)
    """Peer ids of the relays we hold reservations on."""
    direct_upgrades: int = 0
    since: float = 0.0

    def doc(self) -> dict[str, Any]:
        return {"reachability": self.reachability, "relays": list(self.relays),
                "direct_upgrades": self.direct_upgrades}


def verdict(answers: Sequence[bool | None]) -> Reach:
    """Public only when more servers reached us than did not (a single hostile "yes"
    among honest "no"s does not make us skip relays); no answers at all: unknown."""
    yes, no = answers.count(True), answers.count(False)
    if yes > no:
        return "public"
    return "private" if no else "unknown"


class Reachability:
    """A provider's (or relay's) view of its own reachability; run it in a nursery."""

    def __init__(self, host: Libp2pHost, disc: Discovery, *, bootstrap: Sequence[str],
                 max_relays: int = 2, on_change: Callable[[ReachState], None] | None = None,
                 forced: Literal["auto", "public", "private"] = "auto",
                 clock: Callable[[], float] = time.time) -> None:
        self.host, self.disc = host, disc
        self.bootstrap = [a for a in bootstrap if "/p2p-circuit" not in a]
        self.max_relays = max_relays
        self.forced = forced
        self.on_change = on_change
        self.clock = clock
        self.state = ReachState(since=clock())
        self._held: dict[str, tuple[str, float]] = {}  # relay -> (its address, expiry)
        self._granted: dict[str, float] = {}  # relay -> the TTL it granted, seconds
        self._failed: dict[str, tuple[float, int]] = {}  # relay -> (when, failures in a row)
        self._found: dict[str, str] = {}
        self._searched = -RELAY_SEARCH_S
        self._listen: list[str] = []
        self._asked = -AUTONAT_RECHECK_S
        self._reported = ""  # the reachability last logged

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Check now, report started, then keep checking until cancelled."""
        await self.check()
        task_status.started()
        while True:
            await trio.sleep(CHECK_S)
            try:
                await self.check()
            except Exception:
                log.warning("reachability check failed; retrying", exc_info=True)

    async def check(self) -> None:
        """One round: re-ask AutoNAT when due or our addresses changed, then keep the
        reservations a private node needs."""
        now = trio.current_time()
        listen = self.host.listen_addrs()
        if listen != self._listen or now - self._asked >= AUTONAT_RECHECK_S:
            self._listen, self._asked = listen, now
            reach = verdict(await self._ask(listen)) if self.forced == "auto" else self.forced
            if reach != "unknown" or self.state.reachability == "unknown":
                self.state.reachability = reach
        if self.state.reachability == "private":
            await self._keep_relays()
        else:
            self._held.clear()
        self._publish()

    async def _ask(self, listen: Sequence[str]) -> list[bool | None]:
        servers = list(dict.fromkeys(
            [split_peer_addr(a)[1] for a in self.bootstrap] + list(self._held)))
        servers = [s for s in servers if s != self.host.peer_id][:SERVERS_ASKED]
        for maddr in self.bootstrap:
            if not self.host.connection_kind(split_peer_addr(maddr)[1]):
                try:
                    await self.host.connect(maddr, timeout=5.0)
                except RemoteError:
                    log.debug("bootstrap %s unreachable for AutoNAT", maddr)
        answers: list[bool | None] = []

        async def ask(server: str) -> None:
            answers.append(await self.host.nat.ask_autonat(server, listen))

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(ask, server)
        return answers

    async def _keep_relays(self) -> None:
        wall = self.clock()
        for relay, (addr, expires) in list(self._held.items()):
            if not self.host.connection_kind(relay):
                log.info("relay %s went away", relay[:16])
                del self._held[relay]  # tried again at once: it may have restarted
            elif expires - wall < self._granted.get(relay, 0.0) / 2:
                renewed = await self.host.nat.reserve(relay)
                if renewed:
                    self._held[relay] = (addr, renewed)
                    self._granted[relay] = max(renewed - self.clock(), 0.0)
                    log.debug("renewed the reservation on relay %s", relay[:16])
                else:
                    del self._held[relay]
                    self._fail(relay)
        if len(self._held) >= self.max_relays:
            return
        for relay, addr in (await self._candidates()).items():
            if len(self._held) >= self.max_relays:
                break
            await self._take(relay, addr)

    async def _candidates(self) -> dict[str, str]:
        """Relays not held and not failed lately: the bootstrap peers, then the DHT's."""
        now = trio.current_time()

        def usable(found: dict[str, str]) -> dict[str, str]:
            return {p: a for p, a in found.items()
                    if p not in self._held and p != self.host.peer_id
                    and not self._backing_off(p, now)}

        out = usable({split_peer_addr(a)[1]: a for a in self.bootstrap} | self._found)
        if len(out) < self.max_relays - len(self._held) and \
                now - self._searched >= RELAY_SEARCH_S:
            self._searched = now
            try:
                found = await self.disc.find_relays(limit=8)
            except Exception:
                log.debug("relay search failed", exc_info=True)
                found = {}
            for peer, addrs in found.items():
                direct = [a for a in addrs if "/p2p-circuit" not in a]
                if direct:
                    self._found[peer] = direct[0] if direct[0].endswith(f"/p2p/{peer}") \
                        else f"{direct[0]}/p2p/{peer}"
            out = usable({split_peer_addr(a)[1]: a for a in self.bootstrap} | self._found)
        return out

    def _fail(self, relay: str) -> None:
        self._failed[relay] = (trio.current_time(), self._failed.get(relay, (0.0, 0))[1] + 1)

    def _backing_off(self, relay: str, now: float) -> bool:
        """A relay that failed n times in a row waits 2**n s (at most RELAY_RETRY_S)."""
        when, n = self._failed.get(relay, (0.0, 0))
        return n > 0 and now - when < min(RELAY_RETRY_S, 2.0 ** n)

    async def _take(self, relay: str, addr: str) -> None:
        started = trio.current_time()
        try:
            if not self.host.connection_kind(relay):
                await self.host.connect(addr, timeout=5.0)
            expires = await self.host.nat.reserve(relay)
        except RemoteError:
            expires = 0.0
        if not expires:
            self._fail(relay)
            return
        self._held[relay] = (addr, expires)
        self._failed.pop(relay, None)
        self._granted[relay] = max(expires - self.clock(), 0.0)
        log.info("reserved a slot on relay %s in %.0f ms", relay[:16],
                 (trio.current_time() - started) * 1000)

    def _publish(self) -> None:
        relays = sorted(self._held)
        upgrades = self.host.nat.upgrades
        if self.state.reachability == "private":
            me = self.host.peer_id
            self.host.nat.advertised = [circuit_addr(self._held[r][0], me) for r in relays]
        else:
            self.host.nat.advertised = None
        changed = relays != self.state.relays or self._reported != self.state.reachability
        moved = changed or self.state.direct_upgrades != upgrades
        if changed:
            log.info("reachability %s%s", self.state.reachability,
                     f", relays {', '.join(r[:16] for r in relays)}" if relays else
                     (", no relay yet" if self.state.reachability == "private" else ""))
            self._reported = self.state.reachability
            self.state.since = self.clock()
        self.state.relays = relays
        self.state.direct_upgrades = upgrades
        if moved and self.on_change is not None:
            self.on_change(self.state)
