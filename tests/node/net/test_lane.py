"""The fast lane on real loopback TCP: files arrive whole and resume, certificates must be
bound to the stream's peer id (each refusal has its canary), the token must match, a lane
that cannot open falls back to chunks on the stream, and memory stays a few chunks."""

from __future__ import annotations

import datetime
import hashlib
import os
import random
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import LaneRefused, TransferFailed, TransferTimeout
from node.net import lane
from node.net.host import Stream
from node.net.memory import stream_pair
from node.net.transfer import CHUNK, receive_file, send_file
from protocol import BadSignature, Expired, Identity, MalformedMessage, lanecert, wire

PROTO = "/test/lane/1.0.0"
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[3]


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Stream, Identity, Stream, Identity]]:
    """(sender stream, its identity, receiver stream, its identity) over memory hosts."""
    async with stream_pair(PROTO) as (a, sender, b, receiver):
        yield sender, a.identity, receiver, b.identity


def blob(path: Path, size: int) -> Path:
    path.write_bytes(random.Random(size).randbytes(size))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Partial:
    """A resumable download into a file that already holds a prefix."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size

    @property
    def offset(self) -> int:
        return self.path.stat().st_size

    def write(self, offset: int, data: bytes) -> None:
        assert offset == self.offset
        with self.path.open("ab") as f:
            f.write(data)


async def move(tmp_path: Path, src: Path, *, sender_id: bool = True,
               receiver_id: bool = True) -> tuple[bool, bool, Path]:
    """Send `src` from one memory host to the other by the phase functions; returns
    (the sender used the lane, the receiver did, the received file)."""
    dest = tmp_path / "got" / src.name
    sink = lane.DestFile(dest, src.stat().st_size, sha(src))
    used: list[bool] = []
    async with pair() as (tx, a, rx, b):
        async def by_stream_in(s: Stream) -> None:
            await receive_file(s, name=src.name, size=sink.size, sha256=sha(src), dest=dest)

        async def by_stream_out(s: Stream) -> None:
            await send_file(s, src.name, src)

        async def receive() -> None:
            used.append(await lane.receive_phase(rx, b if receiver_id else None,
                                                 [(src.name, sink)], fallback=by_stream_in))
            if used[-1]:
                sink.finish()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            sent = await lane.send_phase(tx, a if sender_id else None, [(src.name, src, 0)],
                                         fallback=by_stream_out)
    return sent, used[0], dest


async def test_a_big_file_takes_the_lane_and_arrives_with_its_digest(tmp_path: Path) -> None:
    src = blob(tmp_path / "big.bin", 6 * MiB + 123)
    sent, received, dest = await move(tmp_path, src)
    assert (sent, received) == (True, True)
    assert sha(dest) == sha(src)


async def test_a_small_file_stays_on_the_stream(tmp_path: Path) -> None:
    src = blob(tmp_path / "small.bin", wire.LANE_MIN_BYTES - 1)
    assert (await move(tmp_path, src))[:2] == (False, False)
    assert sha(tmp_path / "got" / "small.bin") == sha(src)


@pytest.mark.parametrize("side", ["sender", "receiver", "env"])
async def test_a_side_without_a_lane_falls_back_to_chunks(tmp_path: Path, side: str,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    if side == "env":
        monkeypatch.setenv("OFFLOAD_LANE", "off")
    src = blob(tmp_path / "big.bin", 5 * MiB)
    sent, received, dest = await move(tmp_path, src, sender_id=side != "sender",
                                      receiver_id=side != "receiver")
    assert (sent, received) == (False, False)
    assert sha(dest) == sha(src)


async def test_a_lane_that_cannot_be_dialled_falls_back_to_the_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def refused(*_: object) -> None:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(lane, "connect", refused)
    monkeypatch.setattr(lane, "CONNECT_S", 1.0)  # the receiver waits this long for it
    src = blob(tmp_path / "big.bin", 5 * MiB)
    sent, received, dest = await move(tmp_path, src)
    assert (sent, received) == (False, False)
    assert sha(dest) == sha(src)
    assert "could not be opened" in caplog.text


async def test_resuming_over_the_lane_sends_only_the_rest(tmp_path: Path) -> None:
    src = blob(tmp_path / "big.bin", 9 * MiB + 5)
    held = tmp_path / "partial.bin"
    held.write_bytes(src.read_bytes()[:3 * MiB + 7])
    part = Partial(held, src.stat().st_size)
    async with pair() as (tx, a, rx, b):
        async def by_stream(s: Stream) -> None:
            raise AssertionError("the lane should carry it")

        async def receive() -> None:
            assert await lane.receive_phase(rx, b, [("big.bin", part)], fallback=by_stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            assert await lane.send_phase(tx, a, [("big.bin", src, part.offset)],
                                         fallback=by_stream)
    assert sha(held) == sha(src)


NOW = datetime.datetime.now(datetime.UTC)


def cert(identity: Identity, extension: bytes | None = None) -> bytes:
    return lanecert.make_certificate(identity, now=NOW, extension=extension)[0]


def test_a_certificate_is_bound_to_its_identity_and_nothing_else() -> None:
    me, other = Identity.generate(), Identity.generate()
    assert lanecert.certificate_peer(cert(me), now=NOW) == me.peer_id  # the canary
    assert lane.certificate_peer(cert(me)) == me.peer_id
    spki = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    # the extension names `me` but is signed by `other`
    forged = lanecert._der(0x30, lanecert._der(0x04, lanecert.ED25519_PB + me.public_key)
                           + lanecert._der(0x04, other.sign(lanecert.SIGNATURE_PREFIX + spki)))
    with pytest.raises(BadSignature, match="not signed by its identity"):
        lanecert.certificate_peer(cert(me, forged), now=NOW)
    with pytest.raises(LaneRefused, match="not signed by its identity"):
        lane.certificate_peer(cert(me, forged))
    # a SignedKey copied from another certificate (it signs that one's key, not this)
    with pytest.raises(BadSignature):
        lanecert.certificate_peer(cert(me, lanecert.signed_key(me, spki)), now=NOW)
    with pytest.raises(MalformedMessage, match="no libp2p key extension"):
        lanecert.certificate_peer(cert(me, b""), now=NOW)
    with pytest.raises(MalformedMessage, match="not DER"):
        lanecert.certificate_peer(cert(me, b"\x04\x00"), now=NOW)
    with pytest.raises(MalformedMessage, match="does not parse"):
        lanecert.certificate_peer(b"\x30\x03junk", now=NOW)
    with pytest.raises(Expired):
        lanecert.certificate_peer(cert(me), now=NOW + datetime.timedelta(days=365))


async def handshake(client_cert: lane.LaneCert, client_peer: str, announced: bytes,
                    server: Identity, *, token: bytes = b"t" * 32,
                    sent_token: bytes = b"t" * 32) -> tuple[object, object]:
    """Run accept() and connect() against each other on loopback; each outcome is the
    lane or the exception it raised. The server pins `announced` as the client's cert."""
    own = lane.lane_cert(server)
    listener = lane.listen("127.0.0.1")
    out: dict[str, object] = {}

    def run(key: str, fn: object, *args: object) -> None:
        try:
            out[key] = fn(*args)  # type: ignore[operator]
        except Exception as exc:
            out[key] = exc

    with listener:
        port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, run, "server", lane.accept, listener,
                               own, announced, client_peer, token)
            await trio.to_thread.run_sync(run, "client", lane.connect, "127.0.0.1", port,
                                          client_cert, own.der, server.peer_id, sent_token)
    for v in out.values():
        if hasattr(v, "close"):
            v.close()
    return out["server"], out["client"]


async def test_the_lane_takes_a_peer_that_proves_the_stream_identity() -> None:
    client, server = Identity.generate(), Identity.generate()
    mine = lane.lane_cert(client)
    s, c = await handshake(mine, client.peer_id, mine.der, server)
    assert not isinstance(s, Exception) and not isinstance(c, Exception)  # the canary


async def test_the_lane_refuses_a_certificate_bound_to_another_peer_id() -> None:
    client, impostor, server = Identity.generate(), Identity.generate(), Identity.generate()
    theirs = lane.lane_cert(impostor)  # a valid lane cert, but of another identity
    s, c = await handshake(theirs, client.peer_id, theirs.der, server)
    assert isinstance(s, LaneRefused) and "not bound to peer" in str(s)
    assert isinstance(c, Exception)


async def test_the_lane_refuses_a_certificate_other_than_the_announced_one() -> None:
    client, server = Identity.generate(), Identity.generate()
    announced = cert(client)  # bound to `client` too, but not the one it uses
    s, c = await handshake(lane.lane_cert(client), client.peer_id, announced, server)
    assert isinstance(s, Exception) and isinstance(c, Exception)


async def test_the_lane_refuses_a_certificate_without_the_extension(tmp_path: Path) -> None:
    client, server = Identity.generate(), Identity.generate()
    der, key = lanecert.make_certificate(client, now=NOW, extension=b"")
    chain = tmp_path / "bare.pem"
    chain.write_bytes(key + ssl.DER_cert_to_PEM_cert(der).encode())
    bare = lane.LaneCert(der=der, chain_path=str(chain), made=0.0)
    s, c = await handshake(bare, client.peer_id, der, server)
    assert isinstance(s, LaneRefused) and "no libp2p key extension" in str(s)
    assert isinstance(c, Exception)


async def test_the_lane_refuses_a_wrong_token() -> None:
    client, server = Identity.generate(), Identity.generate()
    mine = lane.lane_cert(client)
    s, c = await handshake(mine, client.peer_id, mine.der, server, sent_token=b"x" * 32)
    assert isinstance(s, LaneRefused) and "token" in str(s)
    assert isinstance(c, Exception)


async def test_a_receiver_refuses_a_sender_answer_bound_to_someone_else(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The sender's `lane` answer carries another identity's cert: no lane, chunks flow."""
    src = blob(tmp_path / "big.bin", 5 * MiB)
    dest = tmp_path / "got.bin"
    sink = lane.DestFile(dest, src.stat().st_size, sha(src))
    async with pair() as (tx, _, rx, b):
        async def by_stream(s: Stream) -> None:
            await receive_file(s, name="big.bin", size=sink.size, sha256=sha(src), dest=dest)

        async def receive() -> None:
            assert not await lane.receive_phase(rx, b, [("big.bin", sink)],
                                                fallback=by_stream)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            offer = wire.expect(await tx.receive_within(10, "offer"), wire.Lane)
            assert offer.port and lane.certificate_peer(offer.cert) == b.peer_id
            other = lane.lane_cert(Identity.generate())
            await tx.send(wire.Lane(port=0, token=b"", cert=other.der))
            await send_file(tx, "big.bin", src)
    assert sha(dest) == sha(src)
    assert "refused or failed" in caplog.text


async def test_a_lane_peer_that_stops_reading_is_cut(tmp_path: Path) -> None:
    client, server = Identity.generate(), Identity.generate()
    mine, own = lane.lane_cert(client), lane.lane_cert(server)
    src = blob(tmp_path / "big.bin", 64 * MiB)
    listener = lane.listen("127.0.0.1")
    with listener:
        port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            held: list[object] = []

            def serve() -> None:
                held.append(lane.accept(listener, own, mine.der, client.peer_id, b"t" * 32))

            nursery.start_soon(trio.to_thread.run_sync, serve)
            sock = await trio.to_thread.run_sync(lane.connect, "127.0.0.1", port, mine,
                                                 own.der, server.peer_id, b"t" * 32)
        with sock, pytest.raises(TransferTimeout, match=r"took no data of big\.bin"):
            await trio.to_thread.run_sync(
                lambda: lane.send_files(sock, [("big.bin", src, 0)], peer=server.peer_id,
                                        stall_s=0.5))


def test_a_dest_file_refuses_a_wrong_digest_and_deletes_it(tmp_path: Path) -> None:
    dest = tmp_path / "x.bin"
    sink = lane.DestFile(dest, 3, hashlib.sha256(b"abc").hexdigest())
    sink.write(0, b"abd")
    with pytest.raises(TransferFailed, match="does not match its digest"):
        sink.finish()
    assert not dest.exists()
    ok = lane.DestFile(dest, 3, hashlib.sha256(b"abc").hexdigest())
    ok.write(0, b"abc")
    ok.finish()  # the canary
    assert dest.read_bytes() == b"abc"


MEMORY_PROBE = textwrap.dedent("""
    import hashlib, sys, trio
    from pathlib import Path
    from node.net import lane
    from protocol import Identity

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    src, dest, digest = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    a, b = Identity.generate(), Identity.generate()
    ca, cb = lane.lane_cert(a), lane.lane_cert(b)
    listener = lane.listen("127.0.0.1")
    port = listener.getsockname()[1]
    sink = lane.DestFile(dest, src.stat().st_size, digest)

    async def main():
        async with trio.open_nursery() as n:
            async def server():
                s = await trio.to_thread.run_sync(lane.accept, listener, cb, ca.der,
                                                  a.peer_id, b"t" * 32)
                with s:
                    await trio.to_thread.run_sync(lambda: lane.receive_files(
                        s, [("big", sink)]))
            n.start_soon(server)
            c = await trio.to_thread.run_sync(lane.connect, "127.0.0.1", port, ca, cb.der,
                                              b.peer_id, b"t" * 32)
            before = hwm()
            with c:
                await trio.to_thread.run_sync(lambda: lane.send_files(c, [("big", src, 0)]))
        sink.finish()
        after = hwm()
        canary = bytearray(64 << 20)  # the probe sees a real allocation of 64 MiB
        canary[::4096] = b"x" * len(canary[::4096])
        print(before, after, hwm())
    trio.run(main)
""")


def test_a_large_lane_transfer_holds_a_few_chunks_in_memory(tmp_path: Path) -> None:
    size = 256 * MiB
    src = tmp_path / "big.bin"
    with src.open("wb") as f:  # incompressible head, sparse tail: fast to make
        f.write(os.urandom(8 * MiB))
        f.truncate(size)
    h = hashlib.sha256()
    with src.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src),
                           str(tmp_path / "got.bin"), h.hexdigest()],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    before, after, canary = map(int, done.stdout.split())
    assert canary - after >= 48 * MiB, "the probe does not see allocations"
    assert (tmp_path / "got.bin").stat().st_size == size
    assert after - before < 40 * MiB, f"peak RSS grew {(after - before) / MiB:.0f} MiB"
