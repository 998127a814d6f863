"""A job from the Python API gossips its receipt exactly like one from the CLI."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import trio

from node.api.requester import Job, Requester
from tests.e2e.conftest import REPO, Network

SQUARE = REPO / "examples" / "square.py"
PRICED = "[price]\nstart = 1000\nper_cpu_second = 20\nminimum = 1000\n"


def _receipts(p: dict[str, Any]) -> dict[str, str]:
    """job id -> outcome of the receipts a provider keeps (its home lies beside its log)."""
    log = Path(p["log"])
    db = sqlite3.connect(f"file:{log.with_name(log.stem) / 'ledger.db'}?mode=ro", uri=True)
    try:
        return {r[0]: r[1] for r in db.execute("SELECT job_id, outcome FROM receipts")}
    except sqlite3.OperationalError:  # no ledger yet
        return {}
    finally:
        db.close()


async def test_a_provider_records_the_gossiped_receipt_of_a_job_from_the_api(
        network: Network, tmp_path: Path) -> None:
    priced = tmp_path / "priced.toml"
    priced.write_text(PRICED)
    ran = network.start_provider(extra=["--config", str(priced)], fault="mute")
    other = network.start_provider(bootstrap=ran["addr"], extra=["--config", str(priced)])
    network.offload("ledger", "deposit", "5", home="api", check=True)

    async with Requester(home=network.root / "api", bootstrap=[ran["addr"]],
                         config=os.devnull, out=tmp_path / "out") as r:
        result = await r.submit(Job(SQUARE, args=["6"], timeout=60, provider=ran["peer_id"]))
        assert result.ok and result.stdout == "36\n" and result.charged > 0
        # The provider that ran it does not gossip receipts on (fault "mute"), so the
        # other one learns of the job only through the requester's gossip.
        with trio.move_on_after(20):
            while result.job_id not in _receipts(other):
                await trio.sleep(0.25)
    assert _receipts(other).get(result.job_id) == "accepted"
    assert _receipts(ran).get(result.job_id) == "accepted"
