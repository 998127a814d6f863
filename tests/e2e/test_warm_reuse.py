"""A requester's next job runs in the warm sandbox its last job used, emptied; another
requester's job never does (real provider process, tier-A sandbox, CLI requesters)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e.conftest import Network

PROBE = """\
import os, subprocess
print('sandbox', os.stat('.').st_dev)
print('left', sorted(f for f in os.listdir('.') if not f.startswith('.')))
open('leftover.txt', 'w').write('x')
subprocess.Popen(['sleep', '600'], start_new_session=True)
"""


def provider_status(network: Network, home: str) -> dict[str, int]:
    res = network.offload("status", "--json", home=home, check=True)
    doc: dict[str, int] = json.loads(res.stdout)
    return doc


def run(network: Network, addr: str, script: Path, home: str) -> dict[str, str]:
    res = network.offload("submit", str(script), "--bootstrap", addr, "--json", home=home,
                          check=True)
    doc = json.loads(res.stdout)
    assert doc["status"] == "ok", doc
    lines = dict(line.split(" ", 1) for line in doc["stdout"].splitlines())
    return lines


def test_a_requesters_jobs_share_its_emptied_sandbox_and_nobody_elses(
        network: Network) -> None:
    p = network.start_provider(extra=["--warm", "1", "--slots", "1"], tag="prov")
    probe = network.root / "probe.py"
    probe.write_text(PROBE)
    deadline = time.monotonic() + 90
    while provider_status(network, "prov").get("warm_ready", 0) < 1:  # torch preloads
        assert time.monotonic() < deadline, "no warm worker after 90 s"
        time.sleep(0.5)
    first = run(network, p["addr"], probe, "alice")
    second = run(network, p["addr"], probe, "alice")
    assert first["sandbox"] == second["sandbox"], "alice's second job got a new sandbox"
    assert second["left"] == "['out', 'probe.py']", second  # not leftover.txt
    other = run(network, p["addr"], probe, "bob")
    assert other["sandbox"] != first["sandbox"], "bob's job ran in alice's sandbox"
    deadline = time.monotonic() + 30  # the status file is rewritten every few seconds
    while provider_status(network, "prov").get("warm_reuses", 0) < 1:
        assert time.monotonic() < deadline, "status never counted the reuse"
        time.sleep(0.5)
