"""The offer book: the ads a requester knows, at most one per peer, kept as numpy columns
so that ranking them for a job is a handful of array operations.

An ad replaces the stored one of its peer only when its `seq` is higher; `prune` drops
expired ads (after which a restarted provider whose `seq` started over is accepted
again). Rows are unordered: ties in `rank` fall back to row order, which depends on the
history of adds and removals, not on the ads' content.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from protocol import CapacityAd
from scheduler.scoring import (
    AdColumns,
    BatchStrategy,
    DefaultStrategy,
    JobEstimate,
    Observations,
    ScoreArrays,
    ScoreParts,
    Strategy,
    rank_columns,
)

_DEFAULT = DefaultStrategy()


class OfferBook:
    """Capacity ads by peer, with their job-independent features in columns."""

    __slots__ = ("_cols",)

    def __init__(self, ads: Iterable[CapacityAd] = ()) -> None:
        self._cols = AdColumns()
        self.update(ads)

    def __len__(self) -> int:
        return len(self._cols)

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, str) and bool(self._cols.rows_of(peer_id))

    def __iter__(self) -> Iterator[CapacityAd]:
        """The stored ads, in row order."""
        return iter(list(self._cols.ads))

    @property
    def columns(self) -> AdColumns:
        """The feature columns, row-aligned with `scores` (read only)."""
        return self._cols

    def _row(self, peer_id: str) -> int | None:
        rows = self._cols.rows_of(peer_id)
        return next(iter(rows)) if rows else None

    def get(self, peer_id: str) -> CapacityAd | None:
        """The stored ad of `peer_id`, if any."""
        row = self._row(peer_id)
        return None if row is None else self._cols.ads[row]

    def add(self, ad: CapacityAd) -> bool:
        """Store `ad` unless an ad of its peer with the same or a higher seq is stored.

        Returns whether it was stored. The ad must already be validated (signature too).
        """
        row = self._row(ad.peer_id)
        if row is None:
            self._cols.extend([ad])
            return True
        if ad.seq <= self._cols.ads[row].seq:
            return False
        self._cols.set(row, ad)
        return True

    def update(self, ads: Iterable[CapacityAd]) -> int:
        """`add` for many ads (new peers are appended in one step); returns how many
        were stored."""
        newest: dict[str, CapacityAd] = {}
        for ad in ads:
            seen = newest.get(ad.peer_id)
            if seen is None or ad.seq > seen.seq:
                newest[ad.peer_id] = ad
        fresh: list[CapacityAd] = []
        stored = 0
        for peer, ad in newest.items():
            row = self._row(peer)
            if row is None:
                fresh.append(ad)
            elif ad.seq > self._cols.ads[row].seq:
                self._cols.set(row, ad)
                stored += 1
        self._cols.extend(fresh)
        return stored + len(fresh)

    def discard(self, peer_id: str) -> bool:
        """Forget the peer's ad; returns whether there was one."""
        row = self._row(peer_id)
        if row is None:
            return False
        self._cols.remove(row)
        return True

    def prune(self, now_ms: int) -> int:
        """Drop every ad expired at `now_ms`; returns how many."""
        dead = np.flatnonzero(self._cols.feature("expires") <= now_ms)
        for row in dead[::-1].tolist():  # highest first: the row moved in is never dead
            self._cols.remove(row)
        return len(dead)

    def scores(self, job: JobEstimate, obs: Observations, *, now_ms: int,
               strategy: BatchStrategy = _DEFAULT) -> ScoreArrays:
        """Every stored ad's score as arrays, row-aligned with `columns.ads`; call
        `.order(limit)` on the result for the ranking without building ScoreParts."""
        return strategy.score_arrays(self._cols, job, obs, now_ms=now_ms)

    def rank(self, job: JobEstimate, obs: Observations, *, now_ms: int,
             strategy: Strategy = _DEFAULT,
             limit: int | None = None) -> list[tuple[CapacityAd, ScoreParts]]:
        """The stored ads with their scores, best (lowest total) first, as
        `scoring.rank` would give them; only the best `limit` get ScoreParts built."""
        return rank_columns(self._cols, job, obs, strategy=strategy, now_ms=now_ms,
                            limit=limit)
