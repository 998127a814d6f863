"""A real provider process against hostile peers on the network: forged gossip, stream and
connection floods, a burst of jobs. After each, the provider is alive and serves a job."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

from node.net.client import open_client
from node.net.gossip import RECEIPTS_TOPIC, open_gossip
from node.net.host import Host, open_host
from node.requester.exchange import JobRequest, run_job
from protocol import Identity, Receipt, wire
from protocol.codec import pack
from protocol.signing import VERSION
from tests.e2e.conftest import Network
from tests.e2e.test_hostile_peers import spec_for


def forged_receipt(requester: Identity, provider: str, **body: Any) -> bytes:
    """A receipt whose signature is valid over fields our schema must refuse."""
    honest = Receipt(job_id=hashlib.sha256(os.urandom(8)).hexdigest(),
                     requester=requester.peer_id, provider=provider, outcome="accepted",
                     reason="", charge=1, result_digest=hashlib.sha256(b"r").hexdigest(),
                     issued_at=int(time.time() * 1000))
    doc = honest.to_wire() | body
    sig = requester.sign(Receipt.domain() + pack(doc))
    return pack({"v": VERSION, "type": Receipt.type_name, "body": doc, "sig": sig})


def receipts_held(home: Path) -> set[str]:
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT job_id FROM receipts")}
    finally:
        db.close()


def peer_errors(p: dict[str, Any]) -> dict[str, float]:
    status = json.loads((home_of(p) / "status.json").read_text())
    text = urllib.request.urlopen(status["metrics_url"], timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("offload_peer_errors_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


async def serves_a_job(host: Host, p: dict[str, Any], root: Path, tag: str) -> None:
    script = root / f"{tag}.py"
    script.write_text(f"print('{tag}')\n")
    from tests.factories import dial_ad

    ad = dial_ad(p["peer_id"], p["addrs"], expires=int(time.time() * 1000) + 60_000)
    with trio.fail_after(90):
        outcome = await run_job(host, ad, JobRequest(script=script), root / f"out-{tag}")
    assert outcome.result.stdout == f"{tag}\n"
    assert p["proc"].poll() is None, "the provider died"


def home_of(p: dict[str, Any]) -> Path:
    """A provider's home: its log `pN.log` lies beside it (tests/e2e/conftest.py)."""
    log = Path(p["log"])
    return log.with_name(log.stem)


def configured(network: Network, toml: str) -> dict[str, Any]:
    """A provider started with `toml` as its provider.toml."""
    (network.root / "p.toml").write_text(toml)
    return network.start_provider(extra=["--config", str(network.root / "p.toml")])


@pytest.fixture
def provider(network: Network) -> dict[str, Any]:
    return network.start_provider()


async def test_a_forged_receipt_with_an_overflowing_charge_is_dropped_on_gossip(
        network: Network, provider: dict[str, Any]) -> None:
    p = provider
    attacker = Identity.generate()
    async with open_client(attacker, [p["addr"]]) as (host, _), open_gossip(host) as gossip:
        # the attacker's own node would drop it before sending: send it anyway
        gossip._pubsub.remove_topic_validator(RECEIPTS_TOPIC)
        await trio.sleep(2)  # the provider hears our subscription, meshes form
        canary = forged_receipt(attacker, p["peer_id"])  # nothing wrong with this one
        await gossip.publish(canary)
        with trio.fail_after(30):
            while len(receipts_held(home_of(p))) < 1:
                await trio.sleep(0.2)  # canary: this path reaches the provider's ledger
        for body in ({"charge": 2**63}, {"charge": 2**64 - 1}, {"issued_at": 2**63},
                     {"charge": 10**15 + 1}):
            await gossip.publish(forged_receipt(attacker, p["peer_id"], **body))
        with trio.fail_after(30):
            while peer_errors(p).get("protocol", 0) < 4:
                await trio.sleep(0.2)
        assert len(receipts_held(home_of(p))) == 1
        assert peer_errors(p).get("unexpected", 0) == 0
        await serves_a_job(host, p, network.root, "after_forgery")


async def test_two_hundred_silent_streams_from_one_peer_lock_nobody_else_out(
        network: Network) -> None:
    p = network.start_provider(extra=["--slots", "1", "--queue", "1"])
    attacker, honest = Identity.generate(), Identity.generate()
    async with open_client(attacker, [p["addr"]]) as (bad, _), \
            open_client(honest, [p["addr"]]) as (good, _):
        opened = [await bad.open_stream(p["peer_id"], wire.JOB_PROTOCOL, addrs=p["addrs"])
                  for _ in range(200)]
        # while the attacker's share is held, an honest requester is served
        await serves_a_job(good, p, network.root, "while_flooded")
        codes: list[str] = []

        async def answer(s: Any) -> None:
            reply = await s.receive_within(30, "an answer")
            assert isinstance(reply, wire.ErrorReply), reply
            codes.append(reply.code)
            if reply.code == "busy":
                assert "open /offload/job/1.0.0 streams from you" in reply.message
                assert reply.retry_after_s

        async with trio.open_nursery() as nursery:
            for s in opened:
                nursery.start_soon(answer, s)
        # beyond its share (8) each stream was told busy; the 8 silent ones timed out
        assert codes.count("busy") == 192 and codes.count("timeout") == 8, codes
        for s in opened:
            await s.reset()
        assert peer_errors(p)["limit"] >= 192
        await serves_a_job(good, p, network.root, "after_flood")


async def test_a_connection_flood_from_fresh_identities_leaves_no_descriptors(
        network: Network) -> None:
    p = configured(network, "[limits]\nconnections_per_ip = 8\nexempt = []\n")
    pid = p["proc"].pid

    def fds(which: int | str) -> int:
        return len(os.listdir(f"/proc/{which}/fd"))

    await trio.sleep(2)
    base_provider, base_self = fds(pid), fds("self")
    peak = 0
    async with trio.open_nursery() as nursery:
        done = trio.Event()
        connected = 0

        async def fresh() -> None:
            nonlocal connected
            async with open_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) as h:
                try:
                    await h.connect(p["addr"])
                except Exception:
                    pass
                connected += 1
                await done.wait()

        for _ in range(50):
            nursery.start_soon(fresh)
        with trio.fail_after(60):
            while connected < 50:
                await trio.sleep(0.1)
        await trio.sleep(2)
        peak = fds(pid)
        done.set()
    # while all 50 were up, the provider kept at most its per-IP share of them
    assert peak <= base_provider + 8 + 6, (base_provider, peak)
    with trio.fail_after(30):
        while fds(pid) > base_provider + 1 or fds("self") > base_self + 1:
            await trio.sleep(0.5)
    assert peer_errors(p)["limit"] >= 40
    async with open_client(Identity.generate(), [p["addr"]]) as (host, _):
        await serves_a_job(host, p, network.root, "after_flood")


async def test_a_burst_of_jobs_at_a_one_slot_provider_ends_in_results_or_busy(
        network: Network) -> None:
    p = configured(network, "[capacity]\nslots = 1\nqueue = 2\n[limits]\njobs_per_peer = 16\n")
    script = network.root / "burst.py"
    script.write_text("import time; time.sleep(0.5); print('done')\n")
    outcomes: list[str] = []
    async with open_client(Identity.generate(), [p["addr"]]) as (host, _):
        me = host.identity

        async def one(i: int) -> None:
            stream = await host.open_stream(p["peer_id"], wire.JOB_PROTOCOL, addrs=p["addrs"])
            try:
                spec = spec_for(me, p["peer_id"], script)
                from protocol import sign

                signed = sign(spec, me)
                await stream.send(wire.SubmitJob(spec=signed.raw))
                reply = await stream.receive_within(30, "quote")
                if isinstance(reply, wire.ErrorReply):
                    outcomes.append(reply.code)
                    assert reply.code != "busy" or reply.retry_after_s
                    return
                assert isinstance(reply, wire.QuoteOffer)
                await stream.send(wire.QuoteAccept(job_id=signed.digest))
                while True:  # quoted: a slot must follow, never a reset or a late busy
                    frame = await stream.receive_within(60, "slot")
                    if not isinstance(frame, wire.Queued):
                        break
                assert isinstance(frame, wire.Accepted), frame
                from node.net.transfer import send_file

                if frame.need:
                    await send_file(stream, script.name, script)
                while True:
                    frame = await stream.receive_within(60, "result")
                    if isinstance(frame, wire.ResultReady):
                        outcomes.append("result")
                        return
                    assert isinstance(frame, wire.Running | wire.Output), frame
            finally:
                await stream.close()

        with trio.fail_after(240):
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(one, i)
        assert len(outcomes) == 12 and set(outcomes) <= {"result", "busy"}, outcomes
        assert outcomes.count("result") >= 3
        assert peer_errors(p).get("unexpected", 0) == 0
        await serves_a_job(host, p, network.root, "after_burst")
    log = Path(p["log"]).read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


async def test_a_spec_whose_quote_would_overflow_the_ledger_is_refused_by_name(
        network: Network) -> None:
    p = configured(network, "[price]\nper_cpu_second = 10000000000000\n")
    script = network.root / "huge.py"
    script.write_text("print('never')\n")
    from protocol import Resources, sign

    async with open_client(Identity.generate(), [p["addr"]]) as (host, _):
        me = host.identity
        # an hour at ten million credits a cpu-second is beyond any ledger (a machine-sized
        # spec: a spec beyond the machine is refused before pricing, as too_large)
        for seconds, code in ((3600, "price"), (1, "quote")):  # canary: one second
            spec = spec_for(me, p["peer_id"], script,
                            resources=Resources(max_seconds=seconds))
            stream = await host.open_stream(p["peer_id"], wire.JOB_PROTOCOL,
                                            addrs=p["addrs"])
            try:
                await stream.send(wire.SubmitJob(spec=sign(spec, me).raw))
                reply = await stream.receive_within(30, "a quote or a refusal")
            finally:
                await stream.close()
            if code == "price":
                assert isinstance(reply, wire.ErrorReply) and reply.code == "price", reply
                assert "could cost more than any ledger holds" in reply.message
            else:
                assert isinstance(reply, wire.QuoteOffer), reply
        assert peer_errors(p).get("unexpected", 0) == 0
        assert p["proc"].poll() is None


async def test_the_settle_protocol_names_what_it_refuses(
        network: Network, provider: dict[str, Any]) -> None:
    from protocol.framing import HEADER

    p = provider
    async with open_client(Identity.generate(), [p["addr"]]) as (host, _):
        async def ask(payload: bytes) -> wire.Frame:
            stream = await host.open_stream(p["peer_id"], wire.SETTLE_PROTOCOL,
                                            addrs=p["addrs"])
            try:
                await stream._raw.write(payload)
                return await stream.receive_within(15, "a settle answer")
            finally:
                await stream.close()

        big = await ask(HEADER.pack(64 * 1024 * 1024) + b"x" * 100)
        assert isinstance(big, wire.ErrorReply) and big.code == "too_large", big
        junk = await ask(wire.encode(wire.Settle(receipt=b"\x80", cheque=b"")))
        assert isinstance(junk, wire.ErrorReply) and junk.code == "payment", junk
        assert peer_errors(p).get("unexpected", 0) == 0
        await serves_a_job(host, p, network.root, "after_settle_junk")
