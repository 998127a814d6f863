"""Discovery under load: real provider processes, bursts of concurrent `offload offers`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import trio

from node.net.discovery import open_discovery, rendezvous_key
from node.net.host import libp2p_host, open_host
from protocol import Identity
from tests.e2e.conftest import REPO, Network, _env

BURST = 24
PROVIDERS = 4


def _collect(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        out.append((proc.returncode, stdout, stderr))
    return out


def test_a_burst_of_offers_gets_every_provider_of_a_chain(network: Network) -> None:
    """Before: py-libp2p's DHT served 12 inbound streams and reset the rest, and discovery
    neither retried nor fetched ads from the providers themselves; 24 concurrent `offers`
    against 4 providers got 1 complete answer and 23 empty ones."""
    chain = [network.start_provider()]
    for _ in range(PROVIDERS - 1):
        chain.append(network.start_provider(bootstrap=chain[-1]["addr"]))
    everyone = {p["peer_id"] for p in chain}
    procs = [network.offload_async("offers", "--bootstrap", chain[i % PROVIDERS]["addr"],
                                   "--json", home=f"r{i}") for i in range(BURST)]
    answers = _collect(procs, timeout=300)
    for code, stdout, stderr in answers:
        assert code == 0, stderr
        assert {o["peer_id"] for o in json.loads(stdout)} == everyone, stderr
        assert "offload: warning" not in stderr
    for p in chain:  # and every provider still serves
        assert p["proc"].poll() is None


async def test_offers_says_how_many_providers_it_could_not_reach(network: Network) -> None:
    """A provider named in the DHT whose every DHT request resets (overloaded or hostile):
    `offers` still lists the others, and says on stderr that one could not be reached."""
    from libp2p.custom_types import TProtocol
    from libp2p.kad_dht.common import PROTOCOL_ID
    from libp2p.peer.id import ID

    p1 = network.start_provider()
    hostile = Identity.generate()

    async def reset_all(stream: Any) -> None:
        await stream.reset()

    async with open_host(hostile, ["/ip4/127.0.0.1/tcp/0"]) as host, \
            open_discovery(host, server=True, clock=time.time) as disc:
        await disc.bootstrap([p1["addr"]])
        await disc.dht.provide(rendezvous_key("cpu"))  # p1 now names it as a provider
        libp2p_host(host).set_stream_handler(TProtocol(PROTOCOL_ID), reset_all)
        assert ID.from_base58(p1["peer_id"]) in libp2p_host(host).get_network().connections
        cmd = [sys.executable, "-m", "node", "--home", str(network.root / "req"), "offers",
               "--bootstrap", p1["addr"], "--json"]
        with trio.fail_after(120):
            done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True,
                                          check=False, cwd=REPO, env=_env())
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert [o["peer_id"] for o in json.loads(done.stdout)] == [p1["peer_id"]]
    warning = [line for line in stderr.splitlines() if line.startswith("offload: warning:")]
    assert len(warning) == 1, stderr
    assert warning[0].startswith("offload: warning: 1 of 2 providers found in the DHT could "
                                 "not be reached (their ads could not be fetched); ")
    assert warning[0].endswith("; offers may be missing, try again")
