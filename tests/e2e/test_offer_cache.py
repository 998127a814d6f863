"""The offer cache over real processes: a 10-provider chain is found whole every time, a
fresh `offers` process answers from the home's cache without a search, --fresh searches,
and a provider that stopped answering is dropped once a submit notices it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from node.localnet import stop
from tests.e2e.conftest import Network

PROVIDERS = 10


def offers(network: Network, boot: str, *extra: str) -> tuple[set[str], str]:
    """Peer ids `offload offers --json` printed, and its stderr (logs at info)."""
    cmd = network.net.command(network.root / "requester", "offers", "--bootstrap", boot,
                              "--json", *extra)
    proc: subprocess.Popen[str] = network.net.spawn(
        cmd, env={"OFFLOAD_LOG": "info"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return {d["peer_id"] for d in json.loads(out)}, err


def test_offers_find_all_ten_then_answer_from_the_cache_and_drop_the_vanished(
        network: Network, tmp_path: Path) -> None:
    providers: list[dict[str, Any]] = []
    for _ in range(PROVIDERS):
        providers.append(network.start_provider(
            bootstrap=providers[-1]["addr"] if providers else None))
    ids = {p["peer_id"] for p in providers}
    boot = providers[0]["addr"]
    for _ in range(3):
        found, err = offers(network, boot, "--fresh")
        assert found == ids, f"{len(found & ids)} of {PROVIDERS}:\n{err}"
        assert "searching the DHT for offers" in err and "from the offer cache" not in err

    found, err = offers(network, boot)  # a fresh process, a warm home
    assert found == ids
    assert "offers from the offer cache" in err and "searching the DHT" not in err

    gone = providers[4]
    stop(gone["proc"], grace_s=0)
    script = tmp_path / "job.py"
    script.write_text("print('hi')\n")
    job = network.offload("submit", str(script), "--bootstrap", boot, "--provider",
                          gone["peer_id"], "--timeout", "30", "--deadline", "60", "--json")
    assert job.returncode != 0
    found, err = offers(network, boot)
    assert "offers from the offer cache" in err
    assert found == ids - {gone["peer_id"]}, err
