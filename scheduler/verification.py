"""Result verification: comparators, k-of-n quorum, canary jobs, adaptive replication.

Pure decision logic, no I/O. Randomness (`random.Random`) and time (`now`, seconds on any
monotonic clock) are passed in by the caller.

Adaptive replication follows BOINC: a provider's consecutive verified count `cv` grows
with each result that a quorum confirmed; below `threshold` every job is replicated, above
it a job is replicated with probability 1/cv (floored). A provider caught returning a
wrong result loses its count and is blacklisted with exponential backoff (15 s doubling
per repeat, capped at one day, like Petals' server bans).

Spot checks alone cannot stop a provider that behaves until trusted and then cheats: with
a check probability q it slips ~1/q wrong results per catch. `Escrow` closes that gap:
results accepted without replication are held unpaid for `hold_s`; when the provider is
caught, `seize` hands back every result of its still held, and the caller re-runs them
elsewhere and pays none of them. A result is only lost to a cheater that is not caught
within the hold.

What this module does NOT do: withhold payment, write ledger entries or report the peer.
`Verdict.disagreeing` names the providers a quorum outvoted; the caller rejects their
results (no receipt, no payment), calls `Policy.punish` and records the evidence.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

DAY_S = 86_400.0


def exact(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """True when two results name the same outputs with the same digests."""
    return len(a) == len(b) and all(name in b and b[name] == d for name, d in a.items())


def tolerance(rel: float, abs_: float) -> Callable[[Sequence[float], Sequence[float]], bool]:
    """A comparator for numeric vectors: same length, each pair within `rel` or `abs_`.

    NaN is never equal to anything (itself included); +inf equals only +inf.
    """
    if not (math.isfinite(rel) and math.isfinite(abs_)) or rel < 0 or abs_ < 0:
        raise ValueError(f"tolerance needs finite rel >= 0 and abs_ >= 0, got {rel}, {abs_}")

    def same(a: Sequence[float], b: Sequence[float]) -> bool:
        if len(a) != len(b):
            return False
        for x, y in zip(a, b, strict=True):
            if math.isnan(x) or math.isnan(y):
                return False
            if not math.isclose(x, y, rel_tol=rel, abs_tol=abs_):
                return False
        return True

    return same


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Verdict(Generic[T]):
    """The outcome of a quorum. `accepted` is None when more replicas are needed."""

    accepted: T | None
    agreeing: tuple[str, ...]
    disagreeing: tuple[str, ...]
    providers: tuple[str, ...]


def _groups(values: Sequence[T], same: Callable[[T, T], bool]) -> set[tuple[int, ...]]:
    """Mutually agreeing groups, one grown greedily from each seed (exact if `same` is
    transitive, as digest equality is)."""
    found: set[tuple[int, ...]] = set()
    for seed in range(len(values)):
        group = [seed]
        for j in range(len(values)):
            if j != seed and all(same(values[i], values[j]) for i in group):
                group.append(j)
        found.add(tuple(sorted(group)))
    return found


def quorum(results: Sequence[tuple[str, T]], *, k: int,
           same: Callable[[T, T], bool]) -> Verdict[T]:
    """k-of-n agreement over (provider, result) pairs.

    Accepts the largest group of >= k mutually agreeing results; a tie between largest
    groups, or no group of k, gives `accepted=None` (run more replicas) and blames no one.
    A provider listed twice counts once (its first result).
    """
    if k < 1:
        raise ValueError(f"quorum needs k >= 1, got {k}")
    seen: set[str] = set()
    unique: list[tuple[str, T]] = []
    for peer, value in results:
        if peer not in seen:
            seen.add(peer)
            unique.append((peer, value))
    providers = tuple(peer for peer, _ in unique)
    values = [value for _, value in unique]
    groups = _groups(values, same)
    best = max((len(g) for g in groups), default=0)
    top = [g for g in groups if len(g) == best]
    if best < k or len(top) != 1:
        return Verdict(accepted=None, agreeing=(), disagreeing=(), providers=providers)
    winners = set(top[0])
    return Verdict(
        accepted=values[top[0][0]],
        agreeing=tuple(p for i, p in enumerate(providers) if i in winners),
        disagreeing=tuple(p for i, p in enumerate(providers) if i not in winners),
        providers=providers,
    )


class CanaryBook:
    """Canary jobs: job kinds whose correct output digests we already know."""

    __slots__ = ("_known",)

    def __init__(self, known: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._known: dict[str, dict[str, str]] = {}
        for kind, digests in (known or {}).items():
            self.add(kind, digests)

    def add(self, kind: str, digests: Mapping[str, str]) -> None:
        """Record the expected output digests of a canary job kind."""
        self._known[kind] = dict(digests)

    def kinds(self) -> tuple[str, ...]:
        """The canary kinds known, sorted."""
        return tuple(sorted(self._known))

    def pick(self, rng: random.Random) -> str:
        """A canary kind chosen at random, to disguise among real jobs."""
        if not self._known:
            raise ValueError("no canaries known; add one with CanaryBook.add first")
        return rng.choice(self.kinds())

    def __contains__(self, kind: object) -> bool:
        return kind in self._known

    def check_canary(self, kind: str, digests: Mapping[str, str]) -> bool:
        """True when a provider's digests for a canary job are the expected ones."""
        if kind not in self._known:
            raise KeyError(f"no canary of kind {kind!r}; add it with CanaryBook.add first")
        return exact(self._known[kind], digests)


@dataclasses.dataclass(slots=True)
class _Trust:
    cv: int = 0
    strikes: int = 0
    banned_until: float = -math.inf


class TrustTracker:
    """Per-provider consecutive verified counts and blacklist, bounded by an LRU cap.

    Only results a quorum confirmed count as verified; unreplicated results leave `cv`
    unchanged. Evicting a peer (least recently recorded) forgets its count and its ban.
    """

    __slots__ = ("_peers", "base_ban_s", "capacity", "max_ban_s", "min_probability",
                 "threshold")

    def __init__(self, *, threshold: int = 10, min_probability: float = 0.05,
                 base_ban_s: float = 15.0, max_ban_s: float = DAY_S,
                 capacity: int = 100_000) -> None:
        if threshold < 1 or capacity < 1:
            raise ValueError("TrustTracker needs threshold >= 1 and capacity >= 1")
        if not 0.0 < min_probability <= 1.0:
            raise ValueError(f"min_probability must be in (0, 1], got {min_probability}")
        if base_ban_s < 0 or max_ban_s < base_ban_s:
            raise ValueError("TrustTracker needs 0 <= base_ban_s <= max_ban_s")
        self.threshold = threshold
        self.min_probability = min_probability
        self.base_ban_s = base_ban_s
        self.max_ban_s = max_ban_s
        self.capacity = capacity
        self._peers: OrderedDict[str, _Trust] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def _touch(self, peer: str) -> _Trust:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Trust()
            while len(self._peers) > self.capacity:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return state

    def cv(self, peer: str) -> int:
        """The peer's consecutive verified count (0 if unknown)."""
        state = self._peers.get(peer)
        return 0 if state is None else state.cv

    def strikes(self, peer: str) -> int:
        """How many times the peer was caught (0 if unknown)."""
        state = self._peers.get(peer)
        return 0 if state is None else state.strikes

    def replicate_probability(self, peer: str) -> float:
        """1.0 below the threshold, then 1/cv floored at `min_probability`."""
        cv = self.cv(peer)
        if cv < self.threshold:
            return 1.0
        return max(self.min_probability, 1.0 / cv)

    def should_replicate(self, peer: str, rng: random.Random) -> bool:
        """Draw whether this peer's next job gets a second replica."""
        return rng.random() < self.replicate_probability(peer)

    def record_agreement(self, peer: str) -> None:
        """A quorum confirmed one of the peer's results."""
        self._touch(peer).cv += 1

    def record_mismatch(self, peer: str, now: float) -> float:
        """A quorum outvoted the peer: reset its count and ban it; returns the ban's end."""
        state = self._touch(peer)
        state.cv = 0
        state.strikes += 1
        ban = min(self.max_ban_s, self.base_ban_s * 2.0 ** min(state.strikes - 1, 64))
        state.banned_until = max(state.banned_until, now + ban)
        return state.banned_until

    def banned_until(self, peer: str) -> float:
        """When the peer's ban ends (-inf if never banned)."""
        state = self._peers.get(peer)
        return -math.inf if state is None else state.banned_until

    def is_blacklisted(self, peer: str, now: float) -> bool:
        """True while the peer's ban lasts."""
        return now < self.banned_until(peer)


class Mode(enum.Enum):
    """How many replicas a job gets."""

    NONE = "none"
    REDUNDANCY = "redundancy"
    ADAPTIVE = "adaptive"


class Policy:
    """A verification policy: none, fixed k-redundancy, or adaptive replication.

    The caller runs `plan(...)` replicas, judges them with `judge`, and while
    `needs_more` runs one more replica. `judge` records agreements and punishes the
    outvoted; paying, refusing receipts and ledger reports stay with the caller.
    """

    __slots__ = ("k", "max_replicas", "mode", "tracker")

    def __init__(self, mode: Mode, *, k: int = 2, max_replicas: int = 5,
                 tracker: TrustTracker | None = None) -> None:
        if k < 1 or max_replicas < k:
            raise ValueError(f"Policy needs 1 <= k <= max_replicas, got {k}, {max_replicas}")
        self.mode = mode
        self.k = 1 if mode is Mode.NONE else k
        self.max_replicas = 1 if mode is Mode.NONE else max_replicas
        self.tracker = tracker if tracker is not None else TrustTracker()

    @classmethod
    def none(cls) -> Policy:
        """Trust every first result."""
        return cls(Mode.NONE)

    @classmethod
    def redundancy(cls, k: int = 2, *, max_replicas: int = 5) -> Policy:
        """Always run k replicas; more on disagreement, up to `max_replicas`."""
        return cls(Mode.REDUNDANCY, k=k, max_replicas=max_replicas)

    @classmethod
    def adaptive(cls, tracker: TrustTracker | None = None, *, k: int = 2,
                 max_replicas: int = 5) -> Policy:
        """Replicate by the first provider's trust (BOINC adaptive replication)."""
        return cls(Mode.ADAPTIVE, k=k, max_replicas=max_replicas, tracker=tracker)

    def plan(self, peer: str, rng: random.Random) -> int:
        """How many replicas to run for a job whose first provider is `peer`."""
        if self.mode is Mode.NONE:
            return 1
        if self.mode is Mode.REDUNDANCY:
            return self.k
        return self.k if self.tracker.should_replicate(peer, rng) else 1

    def quorum_size(self, planned: int) -> int:
        """The agreement needed: k for a replicated job, 1 for a single replica."""
        return 1 if planned <= 1 else self.k

    def needs_more(self, verdict: Verdict[T], ran: int) -> bool:
        """True when no result was accepted and another replica is allowed."""
        return verdict.accepted is None and ran < self.max_replicas

    def judge(self, results: Sequence[tuple[str, T]], *, planned: int,
              same: Callable[[T, T], bool], now: float) -> Verdict[T]:
        """Quorum over the results; confirmed providers gain trust, outvoted ones are
        punished. A single unreplicated result is accepted without changing trust."""
        verdict = quorum(results, k=self.quorum_size(planned), same=same)
        if verdict.accepted is not None and len(verdict.providers) >= 2:
            for peer in verdict.agreeing:
                self.tracker.record_agreement(peer)
            for peer in verdict.disagreeing:
                self.punish(peer, now)
        return verdict

    def punish(self, peer: str, now: float) -> float:
        """A provider returned a wrong result: reset its trust and blacklist it.

        Returns the ban's end. The caller also withholds payment and reports the peer.
        """
        return self.tracker.record_mismatch(peer, now)


class Escrow(Generic[T]):
    """Unreplicated results held unpaid until `hold_s` has passed, per provider.

    `hold` when a single result is accepted; `settle(now)` returns the results whose hold
    ended (pay them now); `seize(peer)` returns and forgets every held result of a caught
    provider (re-run them, pay none). A provider with `max_per_peer` results held gets
    its oldest settled early by `hold`, so memory stays bounded; keep it above the jobs a
    provider can take in `hold_s`.
    """

    __slots__ = ("_by_peer", "_next", "_queue", "hold_s", "max_per_peer")

    def __init__(self, *, hold_s: float, max_per_peer: int = 4096) -> None:
        if not (math.isfinite(hold_s) and hold_s >= 0) or max_per_peer < 1:
            raise ValueError("Escrow needs a finite hold_s >= 0 and max_per_peer >= 1")
        self.hold_s = hold_s
        self.max_per_peer = max_per_peer
        self._next = 0
        self._by_peer: dict[str, OrderedDict[int, T]] = {}
        self._queue: deque[tuple[float, str, int]] = deque()  # (settles at, peer, id)

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_peer.values())

    def held(self, peer: str) -> int:
        """How many of the peer's results are held."""
        return len(self._by_peer.get(peer, ()))

    def hold(self, peer: str, item: T, now: float) -> list[tuple[str, T]]:
        """Hold one result; returns results settled early to respect `max_per_peer`.

        `now` must not go backwards between calls.
        """
        items = self._by_peer.setdefault(peer, OrderedDict())
        items[self._next] = item
        self._queue.append((now + self.hold_s, peer, self._next))
        self._next += 1
        early: list[tuple[str, T]] = []
        while len(items) > self.max_per_peer:
            early.append((peer, items.popitem(last=False)[1]))
        return early

    def settle(self, now: float) -> list[tuple[str, T]]:
        """Results whose hold ended by `now`, oldest first: pay them."""
        out: list[tuple[str, T]] = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            _, peer, key = queue.popleft()
            items = self._by_peer.get(peer)
            if items is not None and key in items:
                out.append((peer, items.pop(key)))
                if not items:
                    del self._by_peer[peer]
        return out

    def seize(self, peer: str) -> list[T]:
        """Every held result of a caught provider, oldest first; none will settle."""
        items = self._by_peer.pop(peer, None)
        return [] if items is None else list(items.values())
