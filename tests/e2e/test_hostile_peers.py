"""A real provider process faced with malformed, forged, misaddressed and replayed requests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio

from node.net.client import open_client
from node.net.host import Host
from node.requester.exchange import JobRequest, run_job
from protocol import Identity, InputFile, JobSpec, Resources, sign, wire
from protocol.framing import HEADER
from tests.e2e.conftest import Network


def spec_for(requester: Identity, provider: str, script: Path, **changes: object) -> JobSpec:
    data = script.read_bytes()
    import hashlib

    fields: dict[str, object] = dict(
        requester=requester.peer_id, provider=provider, runtime="python3",
        entrypoint=script.name, args=(),
        inputs=(InputFile(name=script.name, sha256=hashlib.sha256(data).hexdigest(),
                          size=len(data)),),
        resources=Resources(max_seconds=30), max_price=None, verification="none",
        nonce=os.urandom(16), created_at=int(time.time() * 1000))
    fields.update(changes)
    return JobSpec(**fields)  # type: ignore[arg-type]


async def exchange(host: Host, peer: str, addrs: list[str], payload: bytes) -> wire.Frame:
    stream = await host.open_stream(peer, wire.JOB_PROTOCOL, addrs=addrs)
    try:
        await stream._raw.write(payload)
        return await stream.receive_within(10, "reply")
    finally:
        await stream.close()


def framed(frame: wire.Frame) -> bytes:
    return wire.encode(frame)


async def test_provider_names_each_bad_request_and_keeps_serving(network: Network) -> None:
    p = network.start_provider()
    script = network.root / "ok.py"
    script.write_text("print('still serving')\n")
    me = Identity.generate()
    other = Identity.generate()
    async with open_client(me, [p["addr"]]) as (host, _):
        peer, addrs = p["peer_id"], p["addrs"]

        cases: list[tuple[str, bytes, str]] = [
            ("garbage body", HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1", "bad_request"),
            ("oversize frame", HEADER.pack(64 * 1024 * 1024) + b"x" * 100, "too_large"),
            ("spec is not a spec", framed(wire.SubmitJob(spec=b"\x80")), "bad_request"),
            ("signed by someone else than the sender",
             framed(wire.SubmitJob(spec=sign(spec_for(other, peer, script), other).raw)),
             "bad_request"),
            ("a runtime nobody offers",
             framed(wire.SubmitJob(spec=sign(spec_for(me, peer, script, runtime="julia"),
                                             me).raw)), "bad_request"),
            ("addressed to another provider",
             framed(wire.SubmitJob(spec=sign(spec_for(me, other.peer_id, script), me).raw)),
             "wrong_provider"),
            ("created an hour ago",
             framed(wire.SubmitJob(spec=sign(spec_for(
                 me, peer, script, created_at=int(time.time() * 1000) - 3_600_000), me).raw)),
             "expired"),
        ]
        forged = bytearray(sign(spec_for(me, peer, script), me).raw)
        forged[-30] ^= 1  # inside the signature: the envelope ends with type and v
        cases.append(("flipped signature byte", framed(wire.SubmitJob(spec=bytes(forged))),
                      "bad_signature"))
        for label, payload, code in cases:
            reply = await exchange(host, peer, addrs, payload)
            assert isinstance(reply, wire.ErrorReply), label
            assert reply.code == code, f"{label}: {reply}"

        once = framed(wire.SubmitJob(spec=sign(spec_for(me, peer, script), me).raw))
        first = await exchange(host, peer, addrs, once)
        assert isinstance(first, wire.QuoteOffer)  # canary: the same bytes are quoted once
        again = await exchange(host, peer, addrs, once)
        assert isinstance(again, wire.ErrorReply) and again.code == "replayed"

        from tests.factories import dial_ad

        ad = dial_ad(peer, addrs, expires=int(time.time() * 1000) + 60_000)
        with trio.fail_after(60):
            outcome = await run_job(host, ad, JobRequest(script=script),
                                    network.root / "out")
        assert outcome.result.stdout == "still serving\n"
    assert p["proc"].poll() is None, "the provider died"


async def test_a_flood_of_idle_streams_gets_busy_at_once_and_leaves_the_provider_serving(
        network: Network) -> None:
    p = network.start_provider(extra=["--slots", "1", "--queue", "1"])
    script = network.root / "ok.py"
    script.write_text("print('still serving')\n")
    me = Identity.generate()
    async with open_client(me, [p["addr"]]) as (host, disc):
        idle = [await host.open_stream(p["peer_id"], wire.JOB_PROTOCOL, addrs=p["addrs"])
                for _ in range(8)]  # one peer's share of open job streams; they send nothing
        await trio.sleep(0.5)
        extra = await host.open_stream(p["peer_id"], wire.JOB_PROTOCOL, addrs=p["addrs"])
        with trio.fail_after(5):
            reply = await extra.receive()
        assert isinstance(reply, wire.ErrorReply) and reply.code == "busy"
        assert reply.message == "more than 8 open /offload/job/1.0.0 streams from you"
        assert reply.retry_after_s
        for s in [*idle, extra]:
            await s.reset()
        await trio.sleep(0.5)
        ads = await disc.require_ads()
        with trio.fail_after(60):
            outcome = await run_job(host, ads[0].message, JobRequest(script=script),
                                    network.root / "out")
        assert outcome.result.stdout == "still serving\n"


async def test_an_unaccepted_quote_holds_its_slot_only_briefly(network: Network) -> None:
    (network.root / "p.toml").write_text("[capacity]\nslots = 1\nqueue = 0\nquote_hold_s = 2\n")
    p = network.start_provider(extra=["--config", str(network.root / "p.toml")])
    script = network.root / "ok.py"
    script.write_text("print('after the hold')\n")
    me = Identity.generate()
    async with open_client(me, [p["addr"]]) as (host, disc):
        ad = (await disc.require_ads())[0].message
        hog = await host.open_stream(ad.peer_id, wire.JOB_PROTOCOL, addrs=ad.addrs)
        await hog.send(wire.SubmitJob(spec=sign(spec_for(me, ad.peer_id, script), me).raw))
        assert isinstance(await hog.receive_within(10, "quote"), wire.QuoteOffer)
        # the slot is reserved for the quote: another job is busy meanwhile
        other = await host.open_stream(ad.peer_id, wire.JOB_PROTOCOL, addrs=ad.addrs)
        await other.send(wire.SubmitJob(spec=sign(spec_for(me, ad.peer_id, script), me).raw))
        busy = await other.receive_within(10, "answer")
        assert isinstance(busy, wire.ErrorReply) and busy.code == "busy"
        await other.reset()
        await trio.sleep(2.5)  # the hold lapses without an acceptance
        with trio.fail_after(60):
            outcome = await run_job(host, ad, JobRequest(script=script), network.root / "o")
        assert outcome.result.stdout == "after the hold\n"
        await hog.reset()
