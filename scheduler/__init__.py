"""Pure decision logic: which offers meet a job's needs, which to try first, where to run.

No I/O, no clock reads: time and randomness come in as arguments (tests/test_layout.py).

errors.py        the error tree: SchedulerError, FilterError
requirements.py  a job's hard needs (runtime, cpus, memory, gpus, tiers) and `meets`
filters.py       the --where expression language over ad fields, parsed without eval
pricing.py       linear prices: quotes (the most a job can cost), charges, caps, credits as text
scoring.py       offer scoring: cost, completion time, reputation, locality, RTT (pluggable);
                 per-ad reference and the same formula over numpy feature columns
                 (numpy imported only there: a small rank is scored per ad)
book.py          the offer book: one ad per peer (newest seq) in columns, ranked with numpy
decide.py        the offload decision: here, one provider, or split; explained as a Plan
layers.py        where to cut one model between here and a provider: every cut priced
mapping.py       a distributed map's state machine: queues, steals, retries, stragglers
verification.py  comparators, k-of-n quorum, canaries, adaptive replication, blacklists
vivaldi.py       Vivaldi network coordinates carried in ads
"""

from __future__ import annotations

from scheduler.errors import SchedulerError
from scheduler.filters import FIELDS, Filter, FilterError, parse
from scheduler.requirements import Requirements, meets

__all__ = ["FIELDS", "Filter", "FilterError", "Requirements", "SchedulerError", "meets",
           "parse"]
