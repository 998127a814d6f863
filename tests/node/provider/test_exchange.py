"""The provider's job exchange is driven by protocol/exchange.py: frames out of order are
refused by the table, in a named error frame (in-memory hosts, no sockets)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from ledger import Ledger
from node.net.gossip import Gossip
from node.net.memory import MemoryHost, memory_network
from node.provider.cache import InputCache
from node.provider.daemon import Provider, ProviderConfig
from node.provider.executor import ExecutorSetup, PlainExecutor
from node.provider.telemetry import Telemetry
from protocol import Identity, InputFile, JobSpec, Resources, Runtime, sign, wire


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Provider, MemoryHost, MemoryHost]]:
    async with memory_network() as net:
        phost, rhost = net.add(), net.add()
        setup = ExecutorSetup(executor=PlainExecutor(tmp_path / "jobs"), report=None,
                              runtime=Runtime(name="python3", version="3", packages={},
                                              digest=""), reason="test")
        ledger = Ledger.open(tmp_path / "ledger.db", phost.identity)
        provider = Provider(ProviderConfig(home=tmp_path), phost.identity, clock=time.time,
                            setup=setup, ledger=ledger,
                            cache=InputCache(tmp_path / "cache", max_bytes=10**6),
                            telemetry=Telemetry(), gossip=Gossip(None, time.time))
        phost.handle(wire.JOB_PROTOCOL, provider.handle_job)
        yield provider, phost, rhost
        ledger.close()


def spec_for(me: Identity, provider: str) -> bytes:
    data = b"print('hi')\n"
    spec = JobSpec(
        requester=me.peer_id, provider=provider, runtime="python3", entrypoint="main.py",
        args=(), inputs=(InputFile(name="main.py", sha256=hashlib.sha256(data).hexdigest(),
                                   size=len(data)),),
        resources=Resources(max_seconds=30), max_price=None, verification="none",
        nonce=os.urandom(16), created_at=int(time.time() * 1000))
    return sign(spec, me).raw


async def test_a_first_frame_other_than_submit_is_refused_by_the_table(
        pair: tuple[Provider, MemoryHost, MemoryHost]) -> None:
    _, phost, rhost = pair
    stream = await rhost.open_stream(phost.peer_id, wire.JOB_PROTOCOL)
    await stream.send(wire.QuoteAccept(job_id="ab" * 32))
    with trio.fail_after(5):
        reply = await stream.receive()
    assert isinstance(reply, wire.ErrorReply) and reply.code == "bad_request"
    assert reply.message == ("frame 'quote_accept' from the requester is out of order: in "
                             "state 'start' of the job exchange the requester may send "
                             "'submit', 'error'")


async def test_a_chunk_instead_of_the_quote_acceptance_is_refused_by_the_table(
        pair: tuple[Provider, MemoryHost, MemoryHost]) -> None:
    provider, phost, rhost = pair
    stream = await rhost.open_stream(phost.peer_id, wire.JOB_PROTOCOL)
    await stream.send(wire.SubmitJob(spec=spec_for(rhost.identity, phost.peer_id)))
    with trio.fail_after(5):
        assert isinstance(await stream.receive(), wire.QuoteOffer)  # canary: in order
        await stream.send(wire.Chunk(name="main.py", offset=0, data=b"x", final=True))
        reply = await stream.receive()
    assert isinstance(reply, wire.ErrorReply) and reply.code == "bad_request"
    assert re.match(r"^frame 'chunk' from the requester is out of order: in state 'quoted' ",
                    reply.message)
    assert provider.admission.in_use == 0  # the held slot went back
