"""The requester's memory of peers: measured RTTs, its Vivaldi coordinate, trust and bans.

Kept in `<home>/peers.json` (small, rewritten atomically) so that a ban outlives the
command that imposed it and adaptive replication remembers who earned trust. Several
processes may share a home: a save merges under an `flock`, so what this process
changed since it loaded wins and what others saved meanwhile is kept, not overwritten.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from node.home import Home, atomic_write_json
from scheduler.scoring import Observations
from scheduler.verification import TrustTracker, _Trust
from scheduler.vivaldi import ORIGIN, Coord, from_ad, to_ad, update

log = logging.getLogger(__name__)
RTT_SMOOTHING = 0.3
MAX_PEERS = 10_000
RTT_FRESH_S = 30.0
"""A peer measured this recently (this process) is not pinged again before a job."""


class PeerBook:
    """RTTs (EWMA), this node's coordinate and a TrustTracker, persisted in one file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.rtt_ms: dict[str, float] = {}
        self.coord: Coord = ORIGIN
        self.trust = TrustTracker()
        self.measured_at: dict[str, float] = {}
        """When this process last measured each peer (time.monotonic())."""
        self._seen_rtt: dict[str, float] = {}
        self._seen_trust: dict[str, tuple[int, int, float]] = {}
        """What the file said at load (or the last save): changes since are ours."""

    @classmethod
    def load(cls, home: Path) -> PeerBook:
        book = cls(Home(home).peers)
        doc = book._read()
        if doc is not None:
            try:
                book._restore(doc)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                log.warning("ignoring unreadable %s (%s); starting with no peer history",
                            book.path, exc)
                book = cls(Home(home).peers)
        book._remember()
        return book

    def _read(self) -> dict[str, Any] | None:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s)", self.path, exc)
            return None
        return doc if isinstance(doc, dict) else None

    def _restore(self, doc: dict[str, Any]) -> None:
        rtt, coord, trust = _parse(doc)
        self.rtt_ms = rtt
        self.coord = coord
        for peer, t in trust.items():
            self.trust._peers[peer] = t

    def _remember(self) -> None:
        self._seen_rtt = dict(self.rtt_ms)
        self._seen_trust = {p: _key(t) for p, t in self.trust._peers.items()}

    def changed(self) -> bool:
        """Whether this process changed anything since the last load or save."""
        return self.rtt_ms != self._seen_rtt or self._seen_trust != {
            p: _key(t) for p, t in self.trust._peers.items()}

    def save(self) -> None:
        """Merge this process's changes into the file (never fatal: a full disk costs
        peer history, not the job); nothing is written when nothing changed."""
        if self.path is None or not self.changed():
            return
        try:
            self._save()
        except OSError as exc:
            log.warning("could not save %s: %s", self.path, exc)

    def _save(self) -> None:
        assert self.path is not None
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._merge(self._read())
            trust = {p: [t.cv, t.strikes,
                         t.banned_until if math.isfinite(t.banned_until) else None]
                     for p, t in list(self.trust._peers.items())[-MAX_PEERS:]}
            doc = {"rtt_ms": dict(list(self.rtt_ms.items())[-MAX_PEERS:]),
                   "coord": list(to_ad(self.coord)), "trust": trust}
            atomic_write_json(self.path, doc)
            self._remember()
        finally:
            os.close(fd)

    def _merge(self, doc: dict[str, Any] | None) -> None:
        """Take in what other processes saved for peers this one did not change."""
        if doc is None:
            return
        try:
            rtt, _, trust = _parse(doc)
        except (ValueError, TypeError, KeyError, AttributeError):
            return
        for peer, value in rtt.items():
            if self.rtt_ms.get(peer) == self._seen_rtt.get(peer):
                self.rtt_ms[peer] = value
        for peer, t in trust.items():
            mine = self.trust._peers.get(peer)
            if (None if mine is None else _key(mine)) == self._seen_trust.get(peer):
                self.trust._peers[peer] = t

    def record_rtt(self, peer: str, rtt_ms: float, their_coords: tuple[float, ...]) -> None:
        """A measured round trip: smooth it, and move our coordinate."""
        if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
            return
        self.measured_at[peer] = time.monotonic()
        rtt_ms = max(rtt_ms, 0.01)
        old = self.rtt_ms.pop(peer, None)
        self.rtt_ms[peer] = rtt_ms if old is None else (
            (1 - RTT_SMOOTHING) * old + RTT_SMOOTHING * rtt_ms)
        # A peer without a coordinate yet sits at the origin with full error, as in Vivaldi.
        self.coord = update(self.coord, from_ad(their_coords) or ORIGIN, rtt_ms)

    def measured_recently(self, peer: str, within_s: float = RTT_FRESH_S) -> bool:
        """Measured by this process within `within_s`: its RTT (and the connection that
        carried the ping) are still warm, so a job need not ping it again."""
        at = self.measured_at.get(peer)
        return at is not None and time.monotonic() - at < within_s

    def observations(self, reputation: dict[str, float] | None = None) -> Observations:
        return Observations(rtt_ms=dict(self.rtt_ms), reputation=reputation or {},
                            local_coord=self.coord)


def _key(t: _Trust) -> tuple[int, int, float]:
    return (t.cv, t.strikes, t.banned_until)


def _parse(doc: dict[str, Any]) -> tuple[dict[str, float], Coord, dict[str, _Trust]]:
    rtt = {str(p): float(v) for p, v in list(doc["rtt_ms"].items())[-MAX_PEERS:]
           if math.isfinite(float(v)) and float(v) > 0}
    coord = from_ad(tuple(float(x) for x in doc["coord"])) or ORIGIN
    trust = {}
    for peer, (cv, strikes, banned) in list(doc["trust"].items())[-MAX_PEERS:]:
        trust[str(peer)] = _Trust(cv=int(cv), strikes=int(strikes),
                                  banned_until=-math.inf if banned is None else float(banned))
    return rtt, coord, trust
