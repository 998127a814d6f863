"""The requester's memory of peers: measured RTTs, its Vivaldi coordinate, trust and bans.

Kept in `<home>/peers.json` (small, rewritten atomically) so that a ban outlives the
command that imposed it and adaptive replication remembers who earned trust.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from scheduler.scoring import Observations
from scheduler.verification import TrustTracker, _Trust
from scheduler.vivaldi import ORIGIN, Coord, from_ad, to_ad, update

log = logging.getLogger(__name__)
FILE = "peers.json"
RTT_SMOOTHING = 0.3
MAX_PEERS = 10_000


class PeerBook:
    """RTTs (EWMA), this node's coordinate and a TrustTracker, persisted in one file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.rtt_ms: dict[str, float] = {}
        self.coord: Coord = ORIGIN
        self.trust = TrustTracker()

    @classmethod
    def load(cls, home: Path) -> PeerBook:
        book = cls(home / FILE)
        try:
            doc = json.loads((home / FILE).read_text())
            book._restore(doc)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring unreadable %s (%s); starting with no peer history",
                        home / FILE, exc)
            book = cls(home / FILE)
        return book

    def _restore(self, doc: dict[str, Any]) -> None:
        self.rtt_ms = {str(p): float(v) for p, v in doc["rtt_ms"].items()
                       if math.isfinite(float(v)) and float(v) > 0}
        coord = from_ad(tuple(float(x) for x in doc["coord"]))
        self.coord = coord if coord is not None else ORIGIN
        for peer, (cv, strikes, banned) in doc["trust"].items():
            self.trust._peers[str(peer)] = _Trust(
                cv=int(cv), strikes=int(strikes),
                banned_until=-math.inf if banned is None else float(banned))

    def save(self) -> None:
        if self.path is None:
            return
        trust = {p: [t.cv, t.strikes, t.banned_until if math.isfinite(t.banned_until) else None]
                 for p, t in list(self.trust._peers.items())[-MAX_PEERS:]}
        doc = {"rtt_ms": dict(list(self.rtt_ms.items())[-MAX_PEERS:]),
               "coord": list(to_ad(self.coord)), "trust": trust}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.path)

    def record_rtt(self, peer: str, rtt_ms: float, their_coords: tuple[float, ...]) -> None:
        """A measured round trip: smooth it, and move our coordinate."""
        if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
            return
        rtt_ms = max(rtt_ms, 0.01)
        old = self.rtt_ms.pop(peer, None)
        self.rtt_ms[peer] = rtt_ms if old is None else (
            (1 - RTT_SMOOTHING) * old + RTT_SMOOTHING * rtt_ms)
        # A peer without a coordinate yet sits at the origin with full error, as in Vivaldi.
        self.coord = update(self.coord, from_ad(their_coords) or ORIGIN, rtt_ms)

    def observations(self, reputation: dict[str, float] | None = None) -> Observations:
        return Observations(rtt_ms=dict(self.rtt_ms), reputation=reputation or {},
                            local_coord=self.coord)
