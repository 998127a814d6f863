"""Pure decision logic: which offers meet a job's needs and which to try first.

select.py   requirement filters and offer ranking (first valid offer, least loaded)
pricing.py  linear prices: quotes (the most a job can cost), charges, caps
"""

from __future__ import annotations

from scheduler.select import Requirements, meets, rank_offers

__all__ = ["Requirements", "meets", "rank_offers"]
