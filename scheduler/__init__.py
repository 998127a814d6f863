"""Pure decision logic: which offers meet a job's needs and which to try first.

select.py   requirement checks and offer ranking (first valid offer, least loaded)
filters.py  the --where expression language over ad fields, parsed without eval
pricing.py  linear prices: quotes (the most a job can cost), charges, caps
verification.py  comparators, k-of-n quorum, canaries, adaptive replication, blacklists
scoring.py  offer scoring: cost, completion time, reputation, locality, RTT (pluggable);
            per-ad reference and the same formula over numpy feature columns
book.py     the offer book: one ad per peer (newest seq) in columns, ranked with numpy
vivaldi.py  Vivaldi network coordinates carried in ads
"""

from __future__ import annotations

from scheduler.filters import FIELDS, Filter, FilterError, parse
from scheduler.select import Requirements, meets, rank_offers

__all__ = ["FIELDS", "Filter", "FilterError", "Requirements", "meets", "parse", "rank_offers"]
