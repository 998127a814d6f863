"""Provider metrics: the private registry, and the loopback HTTP endpoint under real clients."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from prometheus_client import REGISTRY

from node.provider import metrics as m
from node.provider.metrics import ProviderMetrics, answer, check_loopback, serve_metrics


def busy_metrics() -> ProviderMetrics:
    pm = ProviderMetrics()
    pm.jobs_total.labels(outcome="ok").inc(5)
    pm.jobs_total.labels(outcome="failed").inc(2)
    pm.queue_depth.set(3)
    pm.slots_in_use.set(1)
    pm.slots_total.set(2)
    pm.bytes_in_total.inc(1_048_576)
    pm.bytes_out_total.inc(2048)
    pm.earnings_total.inc(1_234_567)
    pm.job_seconds.observe(0.2)
    pm.job_seconds.observe(1800.0)
    pm.warm_ready.set(1)
    pm.warm_parked.set(2)
    pm.warm_reuses.set(7)
    pm.info.info({"peer_id": "12D3KooWtest", "tier": "A", "version": "0.1.0"})
    return pm


def test_render_shows_every_metric() -> None:
    text = busy_metrics().render().decode()
    for line in ['offload_jobs_total{outcome="ok"} 5.0', 'offload_jobs_total{outcome="failed"} 2.0',
                 'offload_jobs_total{outcome="price"} 0.0', "offload_queue_depth 3.0",
                 "offload_slots_in_use 1.0", "offload_slots_total 2.0",
                 "offload_bytes_in_total 1.048576e+06", "offload_bytes_out_total 2048.0",
                 "offload_earnings_microcredits_total 1.234567e+06",
                 'offload_job_seconds_bucket{le="0.01"} 0.0',
                 'offload_job_seconds_bucket{le="0.25"} 1.0',
                 'offload_job_seconds_bucket{le="3600.0"} 2.0', "offload_job_seconds_count 2.0",
                 "offload_warm_workers_ready 1.0", "offload_warm_workers_parked 2.0",
                 "offload_warm_reuses 7.0",
                 'offload_provider_info{peer_id="12D3KooWtest",tier="A",version="0.1.0"} 1.0']:
        assert line + "\n" in text, line


def test_snapshot_is_plain_numbers() -> None:
    assert busy_metrics().snapshot() == {
        "jobs": {"ok": 5, "failed": 2, "timeout": 0, "killed": 0, "error": 0, "refused": 0,
                 "busy": 0, "price": 0},
        "queue_depth": 3, "slots_in_use": 1, "slots_total": 2, "bytes_in": 1_048_576,
        "bytes_out": 2048, "earnings_microcredits": 1_234_567, "warm_ready": 1,
        "warm_parked": 2, "warm_reuses": 7}


def test_registries_are_private() -> None:
    a, b = busy_metrics(), ProviderMetrics()
    assert b.snapshot()["jobs"]["ok"] == 0
    assert a.registry is not b.registry
    assert REGISTRY.get_sample_value("offload_jobs_total", {"outcome": "ok"}) is None


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"200 OK"),
    (b"GET /metrics?x=1 HTTP/1.0\n\n", b"200 OK"),
    (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"200 OK"),
    (b"GET / HTTP/1.1\r\n\r\n", b"200 OK"),
    (b"GET /other HTTP/1.1\r\n\r\n", b"404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
    (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
    (b"GET metrics HTTP/1.1\r\n\r\n", b"400 Bad Request"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", b"400 Bad Request"),
    (b"GET /\xff HTTP/1.1\r\n\r\n", b"400 Bad Request"),
    (b"\r\n\r\n", b"400 Bad Request"),
])
def test_answer(head: bytes, status: bytes) -> None:
    reply = answer(ProviderMetrics(), head)
    assert reply.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert b"Connection: close\r\n" in reply
    body = reply.split(b"\r\n\r\n", 1)[1]
    assert (b"offload_jobs_total" in body) == (status == b"200 OK" and b"/metrics" in head
                                               and not head.startswith(b"HEAD"))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.5", "example.com"])
async def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match=rf"refusing to serve metrics on {host!r}: only a "
                       r"loopback address \(127\.0\.0\.1, ::1 or localhost\) may be bound"):
        await serve_metrics(ProviderMetrics(), host, 0)


def test_loopback_hosts_pass() -> None:
    assert check_loopback("localhost") == "127.0.0.1"
    assert check_loopback("127.0.0.2") == "127.0.0.2"
    assert check_loopback("::1") == "::1"


def test_client_limits() -> None:
    assert m.CLIENT_TIMEOUT_S == 5.0
    assert m.MAX_CONNECTIONS == 16
    assert m.MAX_HEADER_BYTES == 8192


@asynccontextmanager
async def served(pm: ProviderMetrics, **kw: Any) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_metrics(
            pm, "127.0.0.1", 0, task_status=task_status, **kw))
        yield port
        nursery.cancel_scope.cancel()


def fetch(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


async def get(port: int, path: str) -> tuple[int, str, bytes]:
    return await trio.to_thread.run_sync(fetch, f"http://127.0.0.1:{port}{path}")


async def raw(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                reply += chunk
    return reply


async def test_http_client_scrapes_metrics() -> None:
    pm = busy_metrics()
    async with served(pm) as port:
        assert port > 0
        status, ctype, body = await get(port, "/metrics")
        assert (status, ctype) == (200, "text/plain; version=0.0.4; charset=utf-8")
        assert b'offload_jobs_total{outcome="ok"} 5.0\n' in body
        pm.jobs_total.labels(outcome="ok").inc()
        assert b'offload_jobs_total{outcome="ok"} 6.0\n' in (await get(port, "/metrics"))[2]
        assert (await get(port, "/"))[:2] == (200, "text/plain; charset=utf-8")
        assert (await get(port, "/nope"))[0] == 404


async def test_bad_and_oversized_requests_get_400() -> None:
    async with served(ProviderMetrics()) as port:
        assert (await raw(port, b"BLAH\r\n\r\n")).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        big = b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
        reply = await raw(port, big)
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert reply.endswith(b"\r\n\r\nrequest head too large\n")
        assert (await get(port, "/metrics"))[0] == 200


async def test_slow_client_is_dropped() -> None:
    async with served(ProviderMetrics(), client_timeout_s=0.5) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)

        async def trickle() -> None:
            try:
                await stream.send_all(b"GET /metrics HTTP/1.1\r\n")
                while True:  # headers forever, a byte at a time, never the blank line
                    await trio.sleep(0.05)
                    await stream.send_all(b"X")
            except trio.BrokenResourceError:
                pass  # dropped by the server

        start = trio.current_time()
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            with trio.fail_after(3):
                try:
                    assert await stream.receive_some() == b""
                except trio.BrokenResourceError:
                    pass  # the server's close raced our next byte: reset
            nursery.cancel_scope.cancel()
        assert 0.4 < trio.current_time() - start < 1.5
        assert (await get(port, "/metrics"))[0] == 200


async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async with served(ProviderMetrics(), client_timeout_s=1.5) as port:
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        closed_at_once = 0

        async def watch(stream: trio.SocketStream) -> None:
            nonlocal closed_at_once
            with trio.move_on_after(0.5):
                assert await stream.receive_some() == b""
                closed_at_once += 1

        async with trio.open_nursery() as nursery:
            for s in idle:
                nursery.start_soon(watch, s)
        assert closed_at_once == 4  # the 16 held ones are still open
        with trio.fail_after(3):  # ... until their timeout drops them
            for s in idle:
                assert await s.receive_some() == b""
        for s in idle:
            await s.aclose()
        status, _, body = await get(port, "/metrics")
        assert status == 200 and b"offload_jobs_total" in body
