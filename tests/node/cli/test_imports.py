"""The submit path stays lean: a fresh process that loads every module `offload submit`
imports, shows plain progress and ranks a few offers never imports numpy, rich or the
packages node.net.lean defers; the CLI itself (`--help`, every verb before it opens a
host) imports neither libp2p nor the lane certificates' cryptography.x509."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.conftest import REPO
from tests.node.net.test_lean import HEAVY

PROBE = """
import io, sys
import node.cli.main, node.cli.jobs, node.net.client, node.net.host, node.requester.session
import node.requester.placement, node.requester.plan
import libp2p
from node.cli.progress import Reporter
from node.requester import events
from scheduler.scoring import JobEstimate, Observations, rank
from protocol import Resources
from tests.factories import plain_ad

with Reporter(err=io.StringIO()) as show:
    show(events.Quoted(job_id="ab" * 32, provider="12D3KooWProvider", max_charge=5))
ads = [plain_ad() for _ in range(3)]
assert len(rank(ads, JobEstimate(resources=Resources()), Observations(), now_ms=0)) == 3
print(*[m for m in {heavy} if m in sys.modules])
"""


def test_the_submit_path_imports_none_of_the_heavy_packages() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_the_probe_can_see_them() -> None:
    code = PROBE.format(heavy=HEAVY).replace("import io, sys", "import io, sys, numpy, rich")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.split() == ["numpy", "rich"]


def test_the_cli_imports_no_libp2p_before_it_opens_a_host() -> None:
    code = ("import sys, node.cli.main\n"
            "print(*[m for m in ('libp2p', 'cryptography.x509') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""
