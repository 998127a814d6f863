"""Reputation from signed receipts, EigenTrust-style, personalised to this node (pure).

Evidence is a tally per (requester, provider) of good (accepted) and bad (rejected, timed
out) receipts. Two steps:

1. Trust in raters: a personalised EigenTrust walk. Rater i trusts provider j in
   proportion to max(0, good - bad_weight * bad), normalised over i's row plus `prior`
   pseudo-receipts that trust no one, so a little evidence earns little trust. Each step
   `restart` of the trust returns to this node (and any pre-trusted peers). A ring of
   identities that no trusted node has had good work from gets exactly zero trust,
   however much its members praise each other.
2. Reputation of a provider: a Beta-style score over its receipts, each weighted by its
   rater's trust: 1 for this node's own receipts (direct experience weighs most), and
   t(rater) / t(self), at most `rater_cap`, for everyone else's, of which at most
   `hearsay_cap` per (rater, provider) count:

       reputation = (G + prior * 0.5) / (G + bad_weight * B + prior)

   A stranger is at 0.5; good receipts raise it slowly (ten of our own: 0.75), a bad one
   costs `bad_weight` good ones (slow to earn, fast to lose).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping

NEUTRAL = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Tally:
    """One requester's receipts about one provider."""

    good: int = 0
    bad: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Params:
    prior: float = 10.0
    """Pseudo-receipts at 0.5 every provider starts with; also damps trust from thin evidence."""
    bad_weight: float = 5.0
    """One bad receipt weighs as much as this many good ones."""
    restart: float = 0.5
    """Share of trust that returns to this node each step: higher keeps trust closer to home."""
    rater_cap: float = 0.5
    """Another requester's receipt counts at most this much of one of ours."""
    pair_cap: int = 50
    """Our own receipts about one provider that count (the latest, see book.py)."""
    hearsay_cap: int = 10
    """Another requester's receipts about one provider that count, before its weight."""
    iterations: int = 40


DEFAULT = Params()

Evidence = Mapping[tuple[str, str], Tally]
"""(requester, provider) -> tally."""


def local_trust(tally: Tally, params: Params = DEFAULT) -> float:
    good, bad = min(tally.good, params.pair_cap), min(tally.bad, params.pair_cap)
    return max(0.0, good - params.bad_weight * bad)


def trust(evidence: Evidence, me: str, *, pre_trusted: Collection[str] = (),
          params: Params = DEFAULT) -> dict[str, float]:
    """Global trust of every peer as seen from `me` (sums to 1): t = r * p + (1 - r) * C^T t,
    where p spreads over `me` and `pre_trusted`, and untrusting mass returns to p."""
    rows: dict[str, dict[str, float]] = {}
    for (rater, provider), tally in evidence.items():
        s = local_trust(tally, params)
        if s > 0 and rater != provider:
            rows.setdefault(rater, {})[provider] = s
    norm = {r: [(p, s / (sum(row.values()) + params.prior)) for p, s in sorted(row.items())]
            for r, row in rows.items()}
    seeds = [me, *sorted(set(pre_trusted) - {me})]
    home = {s: 1.0 / len(seeds) for s in seeds}
    t = dict(home)
    keep = 1.0 - params.restart
    for _ in range(params.iterations):
        nxt = {k: params.restart * v for k, v in home.items()}
        back = 0.0
        for i, ti in t.items():
            given = 0.0
            for j, cij in norm.get(i, ()):
                nxt[j] = nxt.get(j, 0.0) + keep * cij * ti
                given += cij
            back += keep * ti * (1.0 - given)
        for k, v in home.items():
            nxt[k] += back * v
        t = nxt
    return t


def score(good: float, bad: float, params: Params = DEFAULT) -> float:
    return (good + params.prior * NEUTRAL) / (good + params.bad_weight * bad + params.prior)


def reputations(evidence: Evidence, me: str, *, pre_trusted: Collection[str] = (),
                params: Params = DEFAULT) -> dict[str, float]:
    """Reputation in 0..1 of every provider named in `evidence` (strangers: 0.5)."""
    t = trust(evidence, me, pre_trusted=pre_trusted, params=params)
    good: dict[str, float] = {}
    bad: dict[str, float] = {}
    for (rater, provider), tally in evidence.items():
        if provider == me or rater == provider:
            continue
        if rater == me:
            w, cap = 1.0, params.pair_cap
        else:
            w, cap = min(params.rater_cap, t.get(rater, 0.0) / t[me]), params.hearsay_cap
        good[provider] = good.get(provider, 0.0) + w * min(tally.good, cap)
        bad[provider] = bad.get(provider, 0.0) + w * min(tally.bad, cap)
    return {p: score(good[p], bad[p], params) for p in sorted(good)}
