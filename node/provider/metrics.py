"""Provider metrics: a private Prometheus registry and a tiny loopback-only HTTP endpoint.

The daemon updates `ProviderMetrics` as jobs come and go; `serve_metrics` answers
`GET /metrics` for a local scraper (reach it from elsewhere through an SSH tunnel or a
reverse proxy), and `snapshot()` feeds the status file that `offload status` reads.
"""

from __future__ import annotations

import ipaddress
import logging
from functools import partial
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from node.net.limits import KINDS as PEER_ERROR_KINDS

log = logging.getLogger(__name__)

OUTCOMES: Final = ("ok", "failed", "timeout", "killed", "error", "refused", "busy", "price")
JOB_SECONDS_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                              60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)

MAX_HEADER_BYTES: Final = 8 * 1024
CLIENT_TIMEOUT_S: Final = 5.0
MAX_CONNECTIONS: Final = 16
LINGER_BYTES: Final = 64 * 1024


class ProviderMetrics:
    """Every metric of one provider, in its own registry (never prometheus_client's global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_total = Counter("offload_jobs", "Jobs by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.jobs_total.labels(outcome=outcome)
        self.queue_depth = Gauge("offload_queue_depth", "Jobs waiting for a slot", registry=r)
        self.slots_in_use = Gauge("offload_slots_in_use", "Job slots running a job", registry=r)
        self.slots_total = Gauge("offload_slots_total", "Job slots configured", registry=r)
        self.bytes_in_total = Counter("offload_bytes_in", "Input bytes received from requesters",
                                      registry=r)
        self.bytes_out_total = Counter("offload_bytes_out", "Output bytes sent to requesters",
                                       registry=r)
        self.earnings_total = Counter("offload_earnings_microcredits",
                                      "Micro-credits charged for finished jobs", registry=r)
        self.job_seconds = Histogram("offload_job_seconds", "Wall-clock seconds per job",
                                     buckets=JOB_SECONDS_BUCKETS, registry=r)
        self.warm_ready = Gauge("offload_warm_workers_ready",
                                "Pre-started sandboxed interpreters ready for a job", registry=r)
        self.warm_parked = Gauge("offload_warm_workers_parked",
                                 "Warm workers kept for the next job of the requester they "
                                 "served", registry=r)
        self.warm_reuses = Gauge("offload_warm_reuses",
                                 "Jobs since start that ran in a sandbox their requester's "
                                 "previous job had used", registry=r)
        self.info = Info("offload_provider", "Provider identity (peer_id, tier, version)",
                         registry=r)
        self.peer_errors_total = Counter(
            "offload_peer_errors", "Refused or failed exchanges with peers, by kind "
            "(unexpected: a bug of ours, logged with the peer id)", ["kind"], registry=r)
        for kind in PEER_ERROR_KINDS:
            self.peer_errors_total.labels(kind=kind)

    def count_peer_error(self, kind: str) -> None:
        self.peer_errors_total.labels(
            kind=kind if kind in PEER_ERROR_KINDS else "unexpected").inc()

    def render(self) -> bytes:
        """Everything in the Prometheus text exposition format 0.0.4."""
        return generate_latest(self.registry)

    def _value(self, name: str, labels: dict[str, str] | None = None) -> int:
        value = self.registry.get_sample_value(name, labels)
        return int(value) if value is not None else 0

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers for the status file and `offload status --json`."""
        return {
            "jobs": {o: self._value("offload_jobs_total", {"outcome": o}) for o in OUTCOMES},
            "queue_depth": self._value("offload_queue_depth"),
            "slots_in_use": self._value("offload_slots_in_use"),
            "slots_total": self._value("offload_slots_total"),
            "bytes_in": self._value("offload_bytes_in_total"),
            "bytes_out": self._value("offload_bytes_out_total"),
            "earnings_microcredits": self._value("offload_earnings_microcredits_total"),
            "warm_ready": self._value("offload_warm_workers_ready"),
            "warm_parked": self._value("offload_warm_workers_parked"),
            "warm_reuses": self._value("offload_warm_reuses"),
        }


def check_loopback(host: str) -> str:
    """The address to bind for `host`, or ValueError unless it is a loopback address."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"refusing to serve metrics on {host!r}: only a loopback address "
                     "(127.0.0.1, ::1 or localhost) may be bound; reach it from elsewhere "
                     "through an SSH tunnel or a local reverse proxy")


_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(status: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8",
              head: bool = False, extra: str = "") -> bytes:
    header = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
              f"Content-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\n"
              f"{extra}Connection: close\r\n\r\n")
    return header.encode("ascii") + (b"" if head else body)


def _header_end(buf: bytearray) -> int:
    """Index just past the blank line that ends the request head, or -1."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := buf.find(sep)) >= 0]
    return min(ends) if ends else -1


def answer(metrics: ProviderMetrics, head: bytes) -> bytes:
    """The whole response to one request head (request line and headers), sans-I/O."""
    try:
        request_line = head.split(b"\n", 1)[0].decode("ascii").strip()
    except UnicodeDecodeError:
        return _response(400, b"bad request\n")
    parts = request_line.split()
    if (len(parts) != 3 or not parts[1].startswith("/")
            or parts[2] not in ("HTTP/1.0", "HTTP/1.1")):
        return _response(400, b"bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response(405, b"only GET is served here\n", extra="Allow: GET, HEAD\r\n")
    is_head = method == "HEAD"
    if target == "/metrics":
        return _response(200, metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4,
                         head=is_head)
    if target == "/":
        return _response(200, b"offload provider metrics: GET /metrics\n", head=is_head)
    return _response(404, b"not found; try /metrics\n", head=is_head)


async def _read_head(stream: trio.SocketStream, limit: int) -> bytes | None:
    """The request head, None if the client went away, b"" if it exceeded `limit` bytes."""
    buf = bytearray()
    while (end := _header_end(buf)) < 0:
        if len(buf) >= limit:
            return b""
        data = await stream.receive_some(limit - len(buf))
        if not data:
            return None
        buf += data
    return bytes(buf[:end])


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then read what the client still sends (a little), so closing does not
    reset the connection before the client has read our answer."""
    await stream.send_eof()
    drained = 0
    while drained < LINGER_BYTES and (data := await stream.receive_some(LINGER_BYTES)):
        drained += len(data)


async def serve_metrics(metrics: ProviderMetrics, host: str, port: int, *,
                        client_timeout_s: float = CLIENT_TIMEOUT_S,
                        max_connections: int = MAX_CONNECTIONS,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Answer `GET /metrics` on a loopback address until cancelled; started(port) once bound.

    One request per connection. Each client gets `client_timeout_s` in all to send its
    request head (at most 8 KiB) and read the answer; connections beyond `max_connections`
    are closed at once, so slow or hostile clients cannot pile up.
    """
    bind = check_loopback(host)
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= max_connections:
            log.debug("metrics: %d connections open; closing a new one", active)
            await stream.aclose()
            return
        active += 1
        try:
            with trio.move_on_after(client_timeout_s) as scope:
                head = await _read_head(stream, MAX_HEADER_BYTES)
                if head is not None:
                    reply = (answer(metrics, head) if head
                             else _response(400, b"request head too large\n"))
                    await stream.send_all(reply)
                    await _linger(stream)
            if scope.cancelled_caught:
                log.debug("metrics: client timed out after %.1f s", client_timeout_s)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("metrics: client connection failed: %s", exc)
        finally:
            active -= 1
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, port, host=bind))
        actual = listeners[0].socket.getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", f"[{bind}]" if ":" in bind else bind, actual)
        task_status.started(actual)
