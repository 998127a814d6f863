"""Vivaldi network coordinates (Dabek et al., SIGCOMM 2004): 2-D Euclidean plus height.

Every node keeps a `Coord` in milliseconds and nudges it after each RTT sample towards
(or away from) the peer it measured, with an adaptive timestep weighted by the two
nodes' error estimates (cc = ce = 0.25). `estimate_rtt_ms` predicts the RTT between two
coordinates; ads carry a coordinate as a 4-float tuple (`to_ad` / `from_ad`).
"""

from __future__ import annotations

import dataclasses
import math

CC = 0.25
"""Timestep constant: how far one sample moves a coordinate."""
CE = 0.25
"""Error-estimate smoothing constant."""
MAX_ERROR = 1.5
"""Error of a fresh coordinate, and the cap of every error estimate."""
MIN_ERROR = 1e-6
MIN_HEIGHT_MS = 0.01
MAX_ABS_MS = 1e6
"""Coordinates (and heights) from ads beyond this many ms are treated as garbage."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Coord:
    """A node's position: `x`, `y` and access-link `height` in ms, `error` relative (0..1.5)."""

    x: float = 0.0
    y: float = 0.0
    height: float = MIN_HEIGHT_MS
    error: float = MAX_ERROR


ORIGIN = Coord()
"""Where every node starts: no knowledge, maximal error."""


def estimate_rtt_ms(a: Coord, b: Coord) -> float:
    """Predicted RTT: the planar distance plus both heights."""
    return math.hypot(a.x - b.x, a.y - b.y) + a.height + b.height


def _direction(local: Coord, remote: Coord, rtt_ms: float) -> tuple[float, float]:
    """Unit vector from `remote` to `local`; a deterministic pseudo-random one if they coincide."""
    dx, dy = local.x - remote.x, local.y - remote.y
    norm = math.hypot(dx, dy)
    if norm > 1e-9:
        return dx / norm, dy / norm
    # Float hashes are not salted, so this stays pure yet spreads nodes out of the origin.
    seed = hash((local.x, local.y, local.height, remote.height, remote.error, rtt_ms))
    angle = (seed % 65_521) / 65_521 * 2.0 * math.pi
    return math.cos(angle), math.sin(angle)


def update(local: Coord, remote: Coord, rtt_ms: float) -> Coord:
    """The new local coordinate after measuring `rtt_ms` to a node at `remote`.

    Samples that are not positive finite numbers leave `local` unchanged.
    """
    if not (math.isfinite(rtt_ms) and rtt_ms > 0.0):
        return local
    total_error = max(local.error + remote.error, MIN_ERROR)
    weight = local.error / total_error
    dist = estimate_rtt_ms(local, remote)
    sample_error = abs(dist - rtt_ms) / rtt_ms
    error = sample_error * CE * weight + local.error * (1.0 - CE * weight)
    force = CC * weight * (rtt_ms - dist)
    ux, uy = _direction(local, remote, rtt_ms)
    planar = math.hypot(local.x - remote.x, local.y - remote.y)
    height = local.height
    if planar > 1e-9:
        height = local.height + force * (local.height + remote.height) / dist
    return Coord(x=local.x + force * ux, y=local.y + force * uy,
                 height=max(height, MIN_HEIGHT_MS),
                 error=min(max(error, MIN_ERROR), MAX_ERROR))


def to_ad(c: Coord) -> tuple[float, ...]:
    """The coordinate as an ad carries it: (x, y, height, error)."""
    return (c.x, c.y, c.height, c.error)


def from_ad(t: tuple[float, ...]) -> Coord | None:
    """The coordinate in an ad's `coords`, or None unless it is 4 sane finite floats."""
    if len(t) != 4:
        return None
    x, y, height, error = t
    for v in t:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
    if abs(x) > MAX_ABS_MS or abs(y) > MAX_ABS_MS or not 0.0 <= height <= MAX_ABS_MS:
        return None
    if error < 0.0:
        return None
    return Coord(x=float(x), y=float(y), height=max(float(height), MIN_HEIGHT_MS),
                 error=min(max(float(error), MIN_ERROR), MAX_ERROR))
