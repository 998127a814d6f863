"""A fast lane for bulk data: a direct TCP connection with TLS 1.3 beside a job stream.

The side that will receive a phase of at least `wire.LANE_MIN_BYTES` offers a lane over
the authenticated job stream (a `lane` frame: port, one-time token, its certificate); the
other side answers with its own certificate, dials the peer's stream IP and both run TLS
1.3 (OpenSSL through `ssl`), each pinning the other's certificate as its only trust
anchor. A certificate is the libp2p TLS one (libp2p/specs tls/tls.md): a fresh P-256 key,
self-signed, with extension 1.3.6.1.4.1.53594.1.1 carrying SignedKey{the Ed25519 identity
key, its signature over "libp2p-tls-handshake:" + the certificate's SubjectPublicKeyInfo};
it must name exactly the stream's peer id, and the token must match, or the lane is
refused (`LaneRefused`). Whatever fails before data moves falls back to chunks on the
stream; `OFFLOAD_LANE=off` turns lanes off. Files move in the agreed order from their
agreed offsets, under transfer.py's deadlines, at most a few chunks in memory.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import trio

from node.config import resolve
from node.errors import LaneRefused, PeerGone, PeerRefused, TransferFailed, TransferTimeout
from node.net.host import SEND_STALL_S, Stream
from node.net.transfer import CHUNK, STALL_S, PartialFile, Progress, no_progress
from protocol import wire
from protocol.errors import ProtocolError
from protocol.identity import Identity

log = logging.getLogger(__name__)

CONNECT_S = 10.0
"""The longest a lane may take to open (dial, TLS handshake, token); then the stream."""
_OK = b"\x01"
_HEADER = struct.Struct(">QQ")  # before each file: offset, bytes that follow
PIPELINE = 4
"""Chunks queued between the receiving thread and the writer (memory: a few chunks)."""


def enabled() -> bool:
    """Whether lanes are on (OFFLOAD_LANE=off|0|no turns them off)."""
    return resolve(None, "OFFLOAD_LANE", None, "on").lower() not in ("off", "0", "no")


# --- this node's certificate, bound to its libp2p identity ------------------------------


def certificate_peer(der: bytes) -> str:
    """The peer id a lane certificate is bound to (protocol.lanecert), now; LaneRefused
    when it is not a valid one."""
    from protocol import lanecert  # cryptography.x509: only a process that uses a lane

    try:
        return lanecert.certificate_peer(der, now=datetime.datetime.now(datetime.UTC))
    except ProtocolError as exc:
        raise LaneRefused(f"lane certificate refused: {exc}") from None


@dataclass(frozen=True, slots=True)
class LaneCert:
    """This node's lane certificate and where OpenSSL reads it with its key (a memfd)."""

    der: bytes
    chain_path: str
    made: float


_certs: dict[str, LaneCert] = {}
_certs_lock = threading.Lock()


def lane_cert(identity: Identity) -> LaneCert:
    """`identity`'s lane certificate, made once a process (again before it gets old)."""
    from protocol import lanecert

    with _certs_lock:
        held = _certs.get(identity.peer_id)
        if held is not None and time.monotonic() - held.made < 86400 * (lanecert.CERT_DAYS - 1):
            return held
        der, key_pem = lanecert.make_certificate(identity,
                                                 now=datetime.datetime.now(datetime.UTC))
        cert_pem = ssl.DER_cert_to_PEM_cert(der).encode()
        fd = os.memfd_create("offload-lane", os.MFD_CLOEXEC)
        os.write(fd, key_pem + cert_pem)
        held = LaneCert(der=der, chain_path=f"/proc/self/fd/{fd}", made=time.monotonic())
        _certs[identity.peer_id] = held
        return held


def context(own: LaneCert, peer_der: bytes, *, server: bool) -> ssl.SSLContext:
    """TLS 1.3 only, our certificate, the peer's pinned one as the only trust anchor."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(own.chain_path)
    ctx.load_verify_locations(cadata=peer_der)
    return ctx


def check_peer(lane: ssl.SSLSocket, peer_der: bytes, peer: str) -> None:
    """The handshake's peer certificate is exactly the pinned one, bound to `peer`."""
    got = lane.getpeercert(binary_form=True)
    if not isinstance(got, bytes) or not hmac.compare_digest(got, peer_der):
        raise LaneRefused("the lane peer presented another certificate than it announced")
    if certificate_peer(got) != peer:
        raise LaneRefused(f"the lane certificate is not bound to peer {peer[:16]}")


# --- opening a lane (blocking, in a worker thread: OpenSSL runs without the GIL) --------

_FAILED = (LaneRefused, OSError, TransferFailed)


def _bind_host(peer_ip: str) -> str:
    ip = ipaddress.ip_address(peer_ip)
    if ip.is_loopback:
        return "::1" if ip.version == 6 else "127.0.0.1"
    return "::" if ip.version == 6 else "0.0.0.0"


_NATTED = tuple(ipaddress.ip_network(n) for n in
                ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))


def _natted(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(addr in n for n in _NATTED if n.version == addr.version)


def behind_nat_from(peer_ip: str) -> bool:
    """Whether a dial from `peer_ip` would likely meet our NAT: we leave by a private
    (RFC 1918 or carrier-grade NAT) address while the peer is outside those ranges. The
    lane's listener is then not offered, so the sender falls back at once instead of
    waiting CONNECT_S for a connection the NAT drops."""
    try:
        peer = ipaddress.ip_address(peer_ip)
        if peer.is_loopback or peer.is_link_local or _natted(peer_ip):
            return False
        with socket.socket(socket.AF_INET6 if peer.version == 6 else socket.AF_INET,
                           socket.SOCK_DGRAM) as probe:
            probe.connect((peer_ip, 9))  # picks the route; sends nothing
            local = str(probe.getsockname()[0])
    except (OSError, ValueError):
        return False
    return _natted(local)


def listen(peer_ip: str) -> socket.socket:
    """A one-connection TCP listener reachable from `peer_ip` (loopback stays loopback)."""
    host = _bind_host(peer_ip)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, 0))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    parts: list[bytes] = []
    while n:
        data = sock.recv(n)
        if not data:
            raise PeerGone("the lane closed early")
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def accept(listener: socket.socket, own: LaneCert, peer_der: bytes, peer: str,
           token: bytes) -> ssl.SSLSocket:
    """The first connection within CONNECT_S, if it proves `peer` and knows `token`."""
    listener.settimeout(CONNECT_S)
    raw, _ = listener.accept()
    raw.settimeout(CONNECT_S)
    try:
        lane = context(own, peer_der, server=True).wrap_socket(raw, server_side=True)
    except BaseException:
        raw.close()
        raise
    try:
        check_peer(lane, peer_der, peer)
        if not hmac.compare_digest(_recv_exact(lane, len(token)), token):
            raise LaneRefused("the lane peer does not know the token")
        lane.sendall(_OK)
    except BaseException:
        lane.close()
        raise
    return lane


def connect(ip: str, port: int, own: LaneCert, peer_der: bytes, peer: str,
            token: bytes) -> ssl.SSLSocket:
    """Dial the lane, prove who we are, and wait for the peer's word that it took us."""
    raw = socket.create_connection((ip, port), timeout=CONNECT_S)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        lane = context(own, peer_der, server=False).wrap_socket(raw, server_side=False)
    except BaseException:
        raw.close()
        raise
    try:
        check_peer(lane, peer_der, peer)
        lane.sendall(token)
        if _recv_exact(lane, 1) != _OK:
            raise LaneRefused("the lane peer did not accept")
    except BaseException:
        lane.close()
        raise
    return lane


# --- moving files over an open lane ------------------------------------------------------

class _Watchdog:
    """Ends a blocking transfer that makes no progress for `stall_s`: the lane is shut
    (the blocked read or write fails at once) and `stalled` says why. The socket itself
    blocks without a timeout, so OpenSSL reads and writes without a poll() per record."""

    def __init__(self, lane: ssl.SSLSocket, stall_s: float) -> None:
        self.lane, self.stall_s = lane, stall_s
        self.last, self.stalled = time.monotonic(), False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lane-watchdog", daemon=True)

    def tick(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.stall_s / 4)):
            if time.monotonic() - self.last > self.stall_s:
                self.stalled = True
                with contextlib.suppress(OSError):
                    self.lane.shutdown(socket.SHUT_RDWR)
                return

    def __enter__(self) -> _Watchdog:
        self.lane.settimeout(None)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def send_files(lane: ssl.SSLSocket, files: Sequence[tuple[str, Path, int]], *,
               peer: str = "", stall_s: float = STALL_S,
               progress: Progress = no_progress) -> None:
    """Each (name, path, offset) as a header and its bytes, one chunk buffer; then the
    peer's acknowledgement; `progress` is called from this thread. Blocking: run it
    through `run_blocking`."""
    view = memoryview(bytearray(CHUNK))
    name, at = "the end", 0
    with _Watchdog(lane, stall_s) as dog:
        try:
            for name, path, offset in files:
                with path.open("rb") as f:
                    n = os.fstat(f.fileno()).st_size - offset
                    if n < 0 or offset < 0:
                        raise TransferFailed(f"the peer asked for {name} from byte {offset}")
                    lane.sendall(_HEADER.pack(offset, n))
                    f.seek(offset)
                    at = offset
                    while n:
                        k = f.readinto(view[:min(CHUNK, n)])
                        if not k:
                            raise TransferFailed(f"{name} shrank while it was being sent")
                        lane.sendall(view[:k])
                        n, at = n - k, at + k
                        dog.tick()
                        progress(name, at)
            name = "the end"
            if _recv_exact(lane, 1) != _OK:
                raise TransferFailed("the lane peer did not confirm the transfer")
        except OSError as exc:
            if dog.stalled:
                raise TransferTimeout(f"peer {peer[:16]} took no data of {name} for "
                                      f"{stall_s:.0f} s (at byte {at}, on the lane)") from None
            raise PeerGone(f"the lane to peer {peer[:16]} broke in {name}: {exc}") from None


def receive_files(lane: ssl.SSLSocket, items: Sequence[tuple[str, PartialFile]], *,
                  peer: str = "", stall_s: float = STALL_S,
                  stop: threading.Event | None = None, progress: Progress = no_progress) -> int:
    """Each file into its PartialFile from its offset on; returns the bytes received. A
    writer thread hashes and writes while this one decrypts into one reused buffer,
    PIPELINE chunks between them. Blocking: run it through `run_blocking`."""
    total, name = 0, "the first file"
    view = memoryview(bytearray(CHUNK))
    queue_: queue.Queue[tuple[PartialFile, int, bytes] | None] = queue.Queue(PIPELINE)
    failed: list[BaseException] = []

    def writer() -> None:
        while (item := queue_.get()) is not None:
            if not failed:
                try:
                    item[0].write(item[1], item[2])
                except BaseException as exc:
                    failed.append(exc)

    thread = threading.Thread(target=writer, name="lane-writer", daemon=True)
    thread.start()
    with _Watchdog(lane, stall_s) as dog:
        try:
            for name, partial in items:
                offset, n = _HEADER.unpack(_recv_exact(lane, _HEADER.size))
                if offset != partial.offset or offset + n != partial.size:
                    raise TransferFailed(f"the lane sent {name} bytes {offset}+{n}, not "
                                         f"{partial.offset}..{partial.size}")
                while n:
                    data = _recv_chunk(lane, view[:min(CHUNK, n)], name)
                    if failed:
                        raise failed[0]
                    if stop is not None and stop.is_set():
                        raise TransferFailed("the transfer was cancelled")
                    queue_.put((partial, offset, data))
                    dog.tick()
                    offset, n, total = offset + len(data), n - len(data), total + len(data)
                    progress(name, offset)
            queue_.put(None)
            thread.join()
            if failed:
                raise failed[0]
            lane.sendall(_OK)
        except OSError as exc:
            if failed and exc is failed[0]:
                raise  # the disk, not the peer
            if dog.stalled:
                raise TransferTimeout(f"peer {peer[:16]} sent no data of {name} for "
                                      f"{stall_s:.0f} s (on the lane)") from None
            raise PeerGone(f"the lane from peer {peer[:16]} broke in {name}: {exc}") from None
        finally:
            if thread.is_alive():
                queue_.put(None)
                thread.join()
    return total


def _recv_chunk(lane: ssl.SSLSocket, view: memoryview, name: str) -> bytes:
    """`view` filled from the lane (one TLS record a call), as bytes of its own."""
    got, want, recv_into = 0, len(view), lane.recv_into
    while got < want:
        k = recv_into(view[got:])
        if not k:
            raise PeerGone(f"the lane closed in the middle of {name}")
        got += k
    return bytes(view)


T = TypeVar("T")


async def run_blocking(lane: socket.socket, fn: Callable[[threading.Event], T]) -> T:
    """`fn(stop)` in a worker thread; cancelled, the lane is shut so the thread ends."""
    stop = threading.Event()
    try:
        return await trio.to_thread.run_sync(  # type: ignore[call-arg]
            partial(fn, stop), abandon_on_cancel=True)
    except trio.Cancelled:
        stop.set()
        with contextlib.suppress(OSError):
            lane.shutdown(socket.SHUT_RDWR)
        raise


class DestFile:
    """A PartialFile that writes a fresh `dest` from byte 0 (opened at the first byte);
    `finish` checks its size and digest (else it is deleted: TransferFailed); `abandon`
    deletes what it wrote if it did not finish."""

    def __init__(self, dest: Path, size: int, sha256: str) -> None:
        self.dest, self._size, self._sha256 = dest, size, sha256
        self._hash = hashlib.sha256()
        self._offset = 0
        self._file: BinaryIO | None = None
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def offset(self) -> int:
        return self._offset

    def write(self, offset: int, data: bytes) -> None:
        if offset != self._offset or offset + len(data) > self._size:
            raise TransferFailed(f"{self.dest.name}: a write at {offset} of {len(data)} "
                                 f"bytes does not follow {self._offset} of {self._size}")
        if self._file is None:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.dest.open("wb")
        self._file.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def finish(self) -> None:
        if self._file is None:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.dest.open("wb")
        self._file.close()
        self._done = True
        if self._offset != self._size or self._hash.hexdigest() != self._sha256:
            self.dest.unlink(missing_ok=True)
            raise TransferFailed(f"{self.dest.name} does not match its digest; discarded")

    def abandon(self) -> None:
        if self._file is not None and not self._done:
            self._file.close()
            self.dest.unlink(missing_ok=True)


# --- negotiating a lane over the job stream ---------------------------------------------


class Replay:
    """A Stream whose first frame is one already taken off `inner`."""

    def __init__(self, inner: Stream, first: wire.Frame) -> None:
        self.inner, self._first = inner, [first]
        self.remote_peer, self.remote_ip = inner.remote_peer, inner.remote_ip

    async def send(self, frame: wire.Frame, *, stall_s: float = SEND_STALL_S) -> None:
        await self.inner.send(frame, stall_s=stall_s)

    async def receive(self) -> wire.Frame:
        return self._first.pop() if self._first else await self.inner.receive()

    async def receive_within(self, seconds: float, what: str) -> wire.Frame:
        if self._first:
            return self._first.pop()
        return await self.inner.receive_within(seconds, what)

    async def close(self) -> None:
        await self.inner.close()

    async def reset(self) -> None:
        await self.inner.reset()


Fallback = Callable[[Stream], Awaitable[None]]


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def receive_phase(stream: Stream, identity: Identity | None,
                        items: Sequence[tuple[str, PartialFile]], *,
                        fallback: Fallback, on_lane: Callable[[], object] = lambda: None,
                        progress: Progress = no_progress) -> bool:
    """Receive `items` (already agreed, in order) over a lane when they are big enough and
    one opens, else by `fallback(stream)` (chunks on the stream); `on_lane()` is called when
one opened, before data moves; `progress` hears the lane's bytes (from its thread). True:
    the lane took them."""
    if sum(p.size - p.offset for _, p in items) < wire.LANE_MIN_BYTES:
        await fallback(stream)
        return False
    listener: socket.socket | None = None
    if identity is not None and enabled() and stream.remote_ip \
            and not behind_nat_from(stream.remote_ip):
        try:
            listener = listen(stream.remote_ip)
        except (OSError, ValueError) as exc:
            log.warning("lane: cannot listen (%s); the stream carries the data", _why(exc))
    if listener is None:
        await stream.send(wire.Lane(port=0, token=b"", cert=b""))
        await fallback(stream)
        return False
    lane: ssl.SSLSocket | None = None
    with listener:
        own = await trio.to_thread.run_sync(lane_cert, identity)
        token = secrets.token_bytes(32)
        await stream.send(wire.Lane(port=listener.getsockname()[1], token=token, cert=own.der))
        frame = await stream.receive_within(STALL_S, "a lane answer or data")
        if not isinstance(frame, wire.Lane):
            await fallback(Replay(stream, frame))
            return False
        try:
            if frame.port or certificate_peer(frame.cert) != stream.remote_peer:
                raise LaneRefused(f"the lane certificate is not bound to peer "
                                  f"{stream.remote_peer[:16]}")
            lane = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                partial(accept, listener, own, frame.cert, stream.remote_peer, token),
                abandon_on_cancel=True)
        except _FAILED as exc:
            log.warning("lane from %s refused or failed (%s); the stream carries the data",
                        stream.remote_peer[:16], _why(exc))
    if lane is None:
        await fallback(stream)
        return False
    on_lane()
    with lane:
        got = await run_blocking(lane, partial(_receive, lane, items, stream.remote_peer,
                                               progress))
    log.info("lane: received %d bytes from %s over TLS 1.3", got, stream.remote_peer[:16])
    return True


def _receive(lane: ssl.SSLSocket, items: Sequence[tuple[str, PartialFile]], peer: str,
             progress: Progress, stop: threading.Event) -> int:
    return receive_files(lane, items, peer=peer, stop=stop, progress=progress)


async def send_phase(stream: Stream, identity: Identity | None,
                     files: Sequence[tuple[str, Path, int]], *, fallback: Fallback,
                     on_lane: Callable[[], object] = lambda: None,
                     progress: Progress = no_progress) -> bool:
    """Send `files` (name, path, offset: agreed, in order) over the lane the receiver
    offers when they are big enough, else by `fallback(stream)`; `on_lane()` and
    `progress` as in `receive_phase`. True: the lane took them."""
    if sum(path.stat().st_size - offset for _, path, offset in files) < wire.LANE_MIN_BYTES:
        await fallback(stream)
        return False
    frame = await stream.receive_within(STALL_S, "a lane offer")
    if isinstance(frame, wire.ErrorReply):
        raise PeerRefused(frame.code, frame.message, frame.retry_after_s)
    offer = wire.expect(frame, wire.Lane)
    lane = await _dial(stream, identity, offer)
    if lane is None:
        await fallback(stream)
        return False
    on_lane()
    with lane:
        await run_blocking(lane, lambda _: send_files(lane, files, peer=stream.remote_peer,
                                                      progress=progress))
    log.info("lane: sent %d file(s) to %s over TLS 1.3", len(files), stream.remote_peer[:16])
    return True


async def _dial(stream: Stream, identity: Identity | None,
                offer: wire.Lane) -> ssl.SSLSocket | None:
    if not offer.port:
        log.info("lane: %s offers none; the stream carries the data", stream.remote_peer[:16])
        return None
    if identity is None or not enabled() or not stream.remote_ip:
        return None
    try:
        if certificate_peer(offer.cert) != stream.remote_peer:
            raise LaneRefused(f"the lane certificate is not bound to peer "
                              f"{stream.remote_peer[:16]}")
    except LaneRefused as exc:
        log.warning("lane to %s refused (%s); the stream carries the data",
                    stream.remote_peer[:16], exc)
        return None
    own = await trio.to_thread.run_sync(lane_cert, identity)
    await stream.send(wire.Lane(port=0, token=b"", cert=own.der))
    try:
        return await trio.to_thread.run_sync(  # type: ignore[call-arg]
            partial(connect, stream.remote_ip, offer.port, own, offer.cert,
                    stream.remote_peer, offer.token), abandon_on_cancel=True)
    except _FAILED as exc:
        log.warning("lane to %s could not be opened (%s); the stream carries the data",
                    stream.remote_peer[:16], _why(exc))
        return None
