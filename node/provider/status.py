"""The provider's status file: the daemon writes it, `offload status` reads it, no network needed.

The document is whatever the daemon's `build()` returns (its peer id, tier, addresses and
`ProviderMetrics.snapshot()`), plus `pid` and `updated_at`; readers add `running`, and
`offload status` (`shown`) `draining` and `earnings` (credits, a decimal string).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from node.errors import StatusMissing as StatusMissing
from node.home import Home, atomic_write_json
from protocol.limits import MICRO

log = logging.getLogger(__name__)

STATUS_FILE: Final = "status.json"


def write_status(home: Path, doc: dict[str, Any]) -> None:
    """Replace `home/status.json` atomically (a reader sees the old or the new doc), mode 0644."""
    atomic_write_json(Home(home).status, doc, sort_keys=True, indent=1, newline=True)


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return False
    return True


def read_status(home: Path, *, now: float, stale_after_s: float = 30.0) -> dict[str, Any]:
    """The last status the provider wrote, plus `running`: its pid is alive and it is fresh."""
    path = Home(home).status
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StatusMissing(f"no provider has run with home {home}; start one with "
                            f"`{provide_command(home)}`") from None
    except (OSError, ValueError) as exc:
        raise StatusMissing(_unreadable(path, home, str(exc))) from None
    if not isinstance(doc, dict):
        raise StatusMissing(_unreadable(path, home, "not a JSON object"))
    updated = doc.get("updated_at")
    fresh = (isinstance(updated, int | float) and not isinstance(updated, bool)
             and abs(now - updated) <= stale_after_s)
    return {**doc, "running": fresh and pid_alive(doc.get("pid"))}


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """What `offload status` prints, as text or --json alike: `draining` only while it
    runs, `earnings` in credits like the ledger's."""
    return {**doc, "draining": bool(doc.get("running")) and doc.get("draining") is True,
            "earnings": _credits(_int(doc, "earnings_microcredits"))}


def provide_command(home: Path) -> str:
    """The command that starts a provider on `home` (--home is a global flag: first)."""
    import shlex

    return f"offload --home {shlex.quote(str(home))} provide"


def _unreadable(path: Path, home: Path, why: str) -> str:
    return (f"unreadable status file {path} ({why}); start the provider again with "
            f"`{provide_command(home)}` to rewrite it")


async def publish_forever(home: Path, build: Callable[[], dict[str, Any]], *,
                          interval_s: float = 5.0, clock: Callable[[], float]) -> None:
    """Write build() plus pid and updated_at every `interval_s` until cancelled.

    A failed write is logged and retried at the next tick: status is never worth a crash.
    """
    pid = os.getpid()
    while True:
        doc = build() | {"pid": pid, "updated_at": clock()}
        try:
            await trio.to_thread.run_sync(write_status, home, doc)
        except OSError as exc:
            log.warning("could not write %s: %s", Home(home).status, exc)
        await trio.sleep(interval_s)


def _credits(microcredits: int) -> str:
    sign = "-" if microcredits < 0 else ""
    whole, frac = divmod(abs(microcredits), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n} B ({value:.1f} {unit})"
        value /= 1024
    raise AssertionError("unreachable")


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _reach(doc: dict[str, Any]) -> str:
    relays = doc.get("relays")
    relays = [str(r)[:16] for r in relays] if isinstance(relays, list) else []
    via = f" via relay {', '.join(relays)}" if relays else ""
    return (f"{doc.get('reachability')}{via}, "
            f"{_int(doc, 'direct_upgrades')} direct upgrade(s)")


def _sessions(doc: Any) -> str:
    live = doc.get("open") if isinstance(doc, dict) else None
    ended = _int(doc, "ended") if isinstance(doc, dict) else 0
    return f"{len(live) if isinstance(live, list) else 0} open, {ended} ended"


def format_status(doc: dict[str, Any]) -> str:
    """A human-readable summary of a `read_status` document."""
    state = (f"{'draining' if doc.get('draining') else 'running'} (pid {doc.get('pid')})"
             if doc.get("running")
             else "stopped" + (f" (last pid {doc['pid']})" if "pid" in doc else ""))
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict):
        jobs = {}
    counts = {str(k): int(v) for k, v in jobs.items() if isinstance(v, int | float)}
    total = sum(counts.values())
    by_outcome = ", ".join(f"{n} {o}" for o, n in counts.items() if n) or "none"
    updated = doc.get("updated_at")
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(updated))
            if isinstance(updated, int | float) and not isinstance(updated, bool) else "never")
    addrs = doc.get("addrs")
    lines = [
        f"provider {doc.get('peer_id', '?')}: {state}",
        f"  sandbox tier: {doc.get('tier', '?')}",
        *([f"  listening:    {' '.join(map(str, addrs))}"] if isinstance(addrs, list) and addrs
          else []),
        *([f"  reachable:    {_reach(doc)}"] if "reachability" in doc else []),
        f"  slots:        {_int(doc, 'slots_in_use')}/{_int(doc, 'slots_total')} in use, "
        f"{_int(doc, 'warm_ready')} warm worker(s) ready"
        + (f", {_int(doc, 'warm_parked')} kept for their requester"
           if _int(doc, "warm_parked") else ""),
        *([f"  reused:       {_int(doc, 'warm_reuses')} job(s) ran in their requester's "
           "last sandbox"] if _int(doc, "warm_reuses") else []),
        f"  queue:        {_int(doc, 'queue_depth')} waiting",
        f"  jobs:         {total} ({by_outcome})",
        *([f"  sessions:     {_sessions(doc['sessions'])}"] if "sessions" in doc else []),
        f"  bytes in:     {_size(_int(doc, 'bytes_in'))}",
        f"  bytes out:    {_size(_int(doc, 'bytes_out'))}",
        f"  earnings:     {_credits(_int(doc, 'earnings_microcredits'))} credits",
        f"  updated:      {when}",
    ]
    return "\n".join(lines)
