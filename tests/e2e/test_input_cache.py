"""Inputs a provider already holds are not sent again; a broken upload resumes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import trio

from node.net.client import open_client
from node.net.host import Host
from node.requester.exchange import JobRequest, run_job
from protocol import CapacityAd, Identity, wire
from tests.e2e.conftest import Network
from tests.e2e.test_hostile_peers import spec_for

MiB = 1 << 20
CHECK = "import hashlib\nprint(hashlib.sha256(open('data.bin', 'rb').read()).hexdigest())\n"


async def accepted_for(host: Host, ad: CapacityAd, me: Identity, script: Path,
                       data: Path, *, send_bytes: int = 0) -> wire.Accepted:
    """Submit by hand up to Accepted; optionally upload a prefix of data.bin, then drop."""
    from protocol import InputFile, sign

    blob = data.read_bytes()
    spec = spec_for(me, ad.peer_id, script)
    spec = dataclasses.replace(spec, inputs=(*spec.inputs, InputFile(
        name="data.bin", sha256=hashlib.sha256(blob).hexdigest(), size=len(blob))))
    signed = sign(spec, me)
    stream = await host.open_stream(ad.peer_id, wire.JOB_PROTOCOL, addrs=ad.addrs)
    try:
        await stream.send(wire.SubmitJob(spec=signed.raw))
        offer = await stream.receive_within(10, "quote")
        assert isinstance(offer, wire.QuoteOffer), offer
        await stream.send(wire.QuoteAccept(job_id=signed.digest))
        accepted = wire.expect(await stream.receive_within(10, "accepted"), wire.Accepted)
        digest = hashlib.sha256(blob).hexdigest()
        if send_bytes and digest in accepted.need:
            script_digest = hashlib.sha256(script.read_bytes()).hexdigest()
            for d in accepted.need:
                if d == script_digest:
                    await stream.send(wire.Chunk(name=script.name, offset=0,
                                                 data=script.read_bytes(), final=True))
            for offset in range(0, send_bytes, MiB):
                await stream.send(wire.Chunk(name="data.bin", offset=offset,
                                             data=blob[offset:offset + MiB], final=False))
            await trio.sleep(0.5)  # let the provider write what it got
        return accepted
    finally:
        await stream.reset()


async def test_cached_inputs_are_not_resent_and_uploads_resume(network: Network) -> None:
    p = network.start_provider()
    me = Identity.generate()
    data = network.root / "data.bin"
    data.write_bytes(os.urandom(3 * MiB))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    async with open_client(me, [p["addr"]]) as (host, disc):
        ad = (await disc.require_ads())[0].message
        first = network.root / "first.py"
        first.write_text(CHECK)
        with trio.fail_after(60):
            outcome = await run_job(host, ad, JobRequest(script=first, files=(data,)),
                                    network.root / "o1")
        assert outcome.result.stdout.strip() == digest

        second = network.root / "second.py"
        second.write_text(CHECK + "# another script\n")
        accepted = await accepted_for(host, ad, me, second, data)
        assert digest not in accepted.need, "the provider asked again for what it holds"
        assert accepted.need == (hashlib.sha256(second.read_bytes()).hexdigest(),)

        with trio.fail_after(30):
            while True:  # the ad's summary of cached inputs follows
                ads = await disc.find_ads()
                if ads and digest in ads[0].message.cached:
                    break
                await trio.sleep(0.5)

        fresh = network.root / "fresh.bin"
        fresh.write_bytes(os.urandom(4 * MiB))
        fresh_digest = hashlib.sha256(fresh.read_bytes()).hexdigest()
        fresh.rename(data)
        broken = await accepted_for(host, ad, me, second, data, send_bytes=2 * MiB)
        assert fresh_digest in broken.need and broken.resume == {}
        again = await accepted_for(host, ad, me, second, data)
        assert again.resume == {fresh_digest: 2 * MiB}, "the upload did not resume"

        third = network.root / "third.py"
        third.write_text(CHECK + "# third\n")
        with trio.fail_after(60):
            done = await run_job(host, ad, JobRequest(script=third, files=(data,)),
                                 network.root / "o3")
        assert done.result.stdout.strip() == fresh_digest
    assert "resuming 1 input(s) already partly held" in p["log"].read_text()
