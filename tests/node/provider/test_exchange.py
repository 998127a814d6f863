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
from node.net.host import Stream
from node.net.memory import MemoryHost, memory_network
from node.provider.cache import InputCache
from node.provider.daemon import Provider, ProviderConfig
from node.provider.executor import ExecutorSetup, PlainExecutor
from node.provider.telemetry import Telemetry
from protocol import (
    Identity,
    InputFile,
    JobResult,
    JobSpec,
    Resources,
    Runtime,
    open_signed,
    sign,
    wire,
)


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
        phost.handle(wire.SETTLE_PROTOCOL, provider.handle_settle)
        yield provider, phost, rhost
        ledger.close()


def spec_for(me: Identity, provider: str, data: bytes = b"print('hi')\n") -> bytes:
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


BIG = 5 * 2**20
"""Outputs above wire.LANE_MIN_BYTES: the provider waits for `lane` or `fetch_outputs`."""
MAKES_BIG = f"import os\nos.makedirs('out', exist_ok=True)\n" \
            f"open('out/big.bin', 'wb').write(b'\\x05' * {BIG})\n".encode()


async def _to_result(phost: MemoryHost, rhost: MemoryHost) -> tuple[Stream, JobResult]:
    """A job whose script writes BIG bytes of output, driven to its `result` frame."""
    raw = spec_for(rhost.identity, phost.peer_id, MAKES_BIG)
    job_id = open_signed(raw, JobSpec).digest
    stream = await rhost.open_stream(phost.peer_id, wire.JOB_PROTOCOL)
    with trio.fail_after(30):
        await stream.send(wire.SubmitJob(spec=raw))
        assert isinstance(await stream.receive(), wire.QuoteOffer)
        await stream.send(wire.QuoteAccept(job_id=job_id))
        while isinstance(frame := await stream.receive(), wire.Queued):
            pass
        assert isinstance(frame, wire.Accepted) and len(frame.need) == 1
        await stream.send(wire.Chunk(name="main.py", offset=0, data=MAKES_BIG, final=True))
        while not isinstance(frame := await stream.receive(), wire.ResultReady):
            assert isinstance(frame, wire.Running | wire.Output), frame
    result = open_signed(frame.result, JobResult).message
    assert [(o.name, o.size) for o in result.outputs] == [("big.bin", BIG)]
    return stream, result


async def _fetch(host: MemoryHost, provider: str, job_id: str) -> bytes | wire.ErrorReply:
    """The outputs' bytes on a settle stream (declining the lane), or the error frame."""
    stream = await host.open_stream(provider, wire.SETTLE_PROTOCOL)
    got = b""
    with trio.fail_after(30):
        await stream.send(wire.FetchOutputs(job_id=job_id))
        await stream.send(wire.Lane(port=0, token=b"", cert=b""))
        while True:
            frame = await stream.receive()
            if isinstance(frame, wire.ErrorReply):
                return frame
            assert isinstance(frame, wire.Chunk) and frame.offset == len(got)
            got += frame.data
            if frame.final:
                return got


async def test_outputs_moved_off_the_job_stream_go_to_their_requester_only_once(
        pair: tuple[Provider, MemoryHost, MemoryHost]) -> None:
    provider, phost, rhost = pair
    stream, result = await _to_result(phost, rhost)
    await stream.send(wire.FetchOutputs(job_id=result.job_id))
    stranger = rhost.network.add()
    refused = await _fetch(stranger, phost.peer_id, result.job_id)
    assert isinstance(refused, wire.ErrorReply) and refused.code == "expired"
    unknown = await _fetch(rhost, phost.peer_id, "ab" * 32)
    assert isinstance(unknown, wire.ErrorReply) and unknown.code == "expired"
    got = await _fetch(rhost, phost.peer_id, result.job_id)  # canary: the requester gets them
    assert isinstance(got, bytes) and hashlib.sha256(got).hexdigest() == result.outputs[0].sha256
    again = await _fetch(rhost, phost.peer_id, result.job_id)
    assert isinstance(again, wire.ErrorReply) and again.code == "expired"
    with trio.fail_after(10):
        while provider.admission.in_use or len(provider.held_outputs):
            await trio.sleep(0.05)  # the job's slot went back once the fetch ended


async def test_outputs_moved_but_never_fetched_free_the_slot_after_the_wait(
        pair: tuple[Provider, MemoryHost, MemoryHost]) -> None:
    provider, phost, rhost = pair
    provider.held_outputs.start_s = 0.5
    stream, result = await _to_result(phost, rhost)
    await stream.send(wire.FetchOutputs(job_id=result.job_id))
    with trio.fail_after(10):
        while not len(provider.held_outputs):
            await trio.sleep(0.01)
        while provider.admission.in_use or len(provider.held_outputs):
            await trio.sleep(0.05)
    late = await _fetch(rhost, phost.peer_id, result.job_id)
    assert isinstance(late, wire.ErrorReply) and late.code == "expired"


async def test_fetch_outputs_naming_another_job_on_the_job_stream_is_refused(
        pair: tuple[Provider, MemoryHost, MemoryHost]) -> None:
    provider, phost, rhost = pair
    stream, _ = await _to_result(phost, rhost)
    await stream.send(wire.FetchOutputs(job_id="cd" * 32))
    with trio.fail_after(10):
        reply = await stream.receive()
    assert isinstance(reply, wire.ErrorReply) and reply.code == "bad_request"
    assert reply.message == "fetch_outputs names another job"
    assert not len(provider.held_outputs)


@pytest.mark.parametrize("ask, named", [
    (Resources(max_seconds=30, cpus=10_000), "cpus: the job asks for 10000"),
    (Resources(max_seconds=30, memory_mb=10**9), "memory: the job asks for"),
])
async def test_a_spec_beyond_the_machine_is_refused_as_too_large(
        pair: tuple[Provider, MemoryHost, MemoryHost], ask: Resources, named: str) -> None:
    provider, phost, rhost = pair
    me = rhost.identity
    data = b"print('hi')\n"
    spec = JobSpec(
        requester=me.peer_id, provider=phost.peer_id, runtime="python3", entrypoint="main.py",
        args=(), inputs=(InputFile(name="main.py", sha256=hashlib.sha256(data).hexdigest(),
                                   size=len(data)),),
        resources=ask, max_price=None, verification="none", nonce=os.urandom(16),
        created_at=int(time.time() * 1000))
    stream = await rhost.open_stream(phost.peer_id, wire.JOB_PROTOCOL)
    await stream.send(wire.SubmitJob(spec=sign(spec, me).raw))
    with trio.fail_after(5):
        reply = await stream.receive()
    assert isinstance(reply, wire.ErrorReply) and reply.code == "too_large"
    assert named in reply.message
    assert provider.admission.in_use == 0
    # canary: the same provider quotes a job within the machine (spec_for: 1 cpu)
    stream = await rhost.open_stream(phost.peer_id, wire.JOB_PROTOCOL)
    await stream.send(wire.SubmitJob(spec=spec_for(me, phost.peer_id)))
    with trio.fail_after(5):
        assert isinstance(await stream.receive(), wire.QuoteOffer)


def test_recent_results_stay_within_their_cap_and_prune_rarely(tmp_path: Path) -> None:
    from node.provider.results import RecentResults

    results = RecentResults(tmp_path, max_results=50)
    prunes = 0
    real = results.prune

    def counted() -> None:
        nonlocal prunes
        prunes += 1
        real()

    results.prune = counted  # type: ignore[method-assign]
    for i in range(500):
        results.put(f"{i:064x}", b"signed result")
        assert len(list(tmp_path.glob("*.result"))) <= 55
    assert 2 < prunes <= 500 // 5, prunes
    assert (tmp_path / f"{499:064x}.result").exists()
    assert not (tmp_path / f"{0:064x}.result").exists()


async def test_two_settles_that_crossed_on_the_way_both_leave_their_receipt(
        pair: tuple[Provider, MemoryHost, MemoryHost], tmp_path: Path) -> None:
    from protocol import Cheque

    provider, phost, rhost = pair
    payer = Ledger.open(tmp_path / "payer.db", rhost.identity)
    payer.deposit(10**6)
    pays = []
    for n in (1, 2, 3):
        job_id = hashlib.sha256(bytes([n])).hexdigest()
        payer.lock(job_id, phost.identity.peer_id, 1000)
        pays.append(payer.release(job_id, 400, result_digest="ab" * 32))

    async def settle(receipt: bytes, cheque: bytes) -> object:
        stream = await rhost.open_stream(phost.identity.peer_id, wire.SETTLE_PROTOCOL)
        with trio.fail_after(30):
            await stream.send(wire.Settle(receipt=receipt, cheque=cheque))
            return await stream.receive()

    assert isinstance(await settle(pays[1].receipt.raw, pays[1].cheque.raw), wire.SettleAck)
    assert isinstance(await settle(pays[0].receipt.raw, pays[0].cheque.raw), wire.SettleAck), \
        "the receipt that came with the older cheque was refused"
    assert provider.ledger.balance().earned == 800
    assert provider.ledger._store.query("SELECT COUNT(*) FROM receipts")[0][0] == 2
    # canary: an old serial that promises more than the cheque accepted is still refused
    greedy = sign(Cheque(payer=rhost.identity.peer_id, payee=phost.identity.peer_id,
                         channel=provider.ledger.backend.channel, cumulative=10**5, serial=1,
                         issued_at=int(time.time() * 1000)), rhost.identity)
    refused = await settle(pays[2].receipt.raw, greedy.raw)
    assert isinstance(refused, wire.ErrorReply) and "serial 1" in refused.message, refused
    assert provider.ledger.balance().earned == 800
    payer.close()
