"""`serve` builds everything before it serves, and says so through `nursery.start`."""

from __future__ import annotations

from pathlib import Path

import trio

from ledger import Ledger
from node.home import HomeLock
from node.net.client import open_client
from node.provider.cache import InputCache
from node.provider.daemon import Provider, ProviderConfig, serve
from node.provider.telemetry import Telemetry
from protocol import Identity, wire
from protocol.identity import sha256_hex


async def test_started_means_ledger_built_and_handlers_answering(tmp_path: Path) -> None:
    me = Identity.generate()
    config = ProviderConfig(home=tmp_path / "home", unsafe_no_sandbox=True,
                            benchmark_interval_s=None, metrics_listen="",
                            ready_file=tmp_path / "ready.json")
    config.home.mkdir()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            provider = await nursery.start(serve, config, me)
        assert isinstance(provider, Provider)
        assert isinstance(provider.ledger, Ledger)
        assert isinstance(provider.cache, InputCache)
        assert isinstance(provider.telemetry, Telemetry)
        assert provider.gossip is not None
        assert (tmp_path / "ready.json").exists()  # written by the time started() returns
        addr = f"{provider.addrs[0]}"
        async with open_client(Identity.generate(), [addr]) as (host, _):
            # no sleep, no ready file: the settle handler answers at once
            stream = await host.open_stream(me.peer_id, wire.SETTLE_PROTOCOL)
            try:
                await stream.send(wire.ResultQuery(job_id=sha256_hex(b"no such job")))
                reply = await stream.receive_within(10, "an answer")
            finally:
                await stream.close()
        assert isinstance(reply, wire.ErrorReply) and reply.code == "expired"
        assert provider.ledger.peer_id == me.peer_id
        nursery.cancel_scope.cancel()


async def test_a_cancelled_serve_lets_go_of_its_home(tmp_path: Path) -> None:
    me = Identity.generate()
    config = ProviderConfig(home=tmp_path, unsafe_no_sandbox=True, benchmark_interval_s=None,
                            metrics_listen="")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(60):
            await nursery.start(serve, config, me)
        nursery.cancel_scope.cancel()
    with HomeLock(tmp_path):  # free again at once
        pass
