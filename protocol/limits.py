"""The ranges of every integer on the wire, in one place (SPEC.md states them too).

Each bound fits where the value ends up: SQLite INTEGER columns are signed 64-bit, JSON
readers lose precision above 2**53, and counters must still be able to grow by one.
protocol/ owns these numbers; ledger/ imports MAX_AMOUNT from here.
"""

from __future__ import annotations

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
"""SQLite's INTEGER: the default range of an int field that declares none."""

MAX_AMOUNT = 10**15
"""Micro-credits: a billion credits, far above any real balance and far below INT64_MAX,
so the sum of many amounts still fits. Prices, charges, cheques and every ledger
balance stay within 0..MAX_AMOUNT."""

MICRO = 1_000_000
"""Micro-credits per credit: the wire carries micro-credits, people read credits."""

MAX_SAFE = 2**53 - 1
"""The largest integer a double (and so JSON) holds exactly."""

MAX_TIME_MS = MAX_SAFE
"""Unix times in milliseconds (created_at, issued_at, finished_at, expires)."""

MAX_SERIAL = MAX_SAFE
"""Counters that only rise (ad seq, cheque serial); ledger rows store them."""

MAX_FILE_SIZE = 2**40
"""Bytes of one file (sizes, chunk offsets, resume offsets): 1 TiB."""

MAX_MB = 2**31 - 1
"""Megabytes of memory or disk (about 2 PiB)."""

MAX_COUNT = 2**31 - 1
"""Small counts and positions (pids limits, queue positions)."""

MAX_CPUS = 2**16
MAX_GPUS = 1024
MAX_DEVICES = 64
"""Devices of one kind in one ad entry."""

MAX_JOB_SECONDS = 7 * 24 * 3600
"""One week: the longest wall limit a job may ask for."""

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
"""Process exit codes (negative: killed by that signal)."""
