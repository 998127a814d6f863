"""Sessions against real provider processes: an object built once in a tier-A sandbox
serves many calls, streams generator items as they are made, ends at its idle timeout,
and settles what the signed session result says; a provider killed mid-stream is a
SessionLost within a bounded time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from node.api.classes import RemoteClass, idempotent
from node.api.remote import remote
from node.api.values import RemoteFunctionError
from node.errors import NoProviders, SessionLost
from tests.e2e.conftest import PRICED, REPO, Network, _env, priced_network
from tests.e2e.conftest import balance as ledger


class _Counter:
    def __init__(self, start: int) -> None:
        self.n = start
        self.pid = os.getpid()

    def add(self, k: int) -> int:
        self.n += k
        print("now", self.n)
        return self.n

    def where(self) -> int:
        return self.pid

    def count(self, n: int, pause: float = 0.0) -> Iterator[int]:
        for i in range(n):
            time.sleep(pause)
            yield i

    def fail(self) -> None:
        raise KeyError("nope")

    def leave_traces(self) -> list[str]:
        """Files this session writes where a later session on the provider would look."""
        import tempfile

        found = [p for p in ("trace.txt", f"{tempfile.gettempdir()}/trace.txt")
                 if os.path.exists(p)]
        for p in ("trace.txt", f"{tempfile.gettempdir()}/trace.txt"):
            with open(p, "w") as f:
                f.write("left by an earlier session")
        return found

    def stamped(self, n: int) -> Iterator[float]:
        for _ in range(n):
            yield time.time()  # when the provider made it (one clock: the same host)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with priced_network(tmp_path_factory.mktemp("sessions")) as network:
        yield network


def counter(net: Network, **lease: Any) -> RemoteClass[_Counter]:
    settings: dict[str, Any] = {"home": net.root / "req", "config": os.devnull,
                                "bootstrap": [net.providers[0]["addr"]], "echo": False}
    return remote(cpus=1, max_price=1.0, **settings, **lease)(_Counter)


def test_state_stays_on_the_provider_items_stream_in_order_and_the_lease_is_paid(
        net: Network) -> None:
    before, earned = ledger(net), ledger(net, "p1")["earned"]
    Counter = counter(net, idle_timeout=60, max_duration=300)
    with Counter.session(10) as c:
        assert c.add(1) == 11 and c.add(2) == 13  # one object, kept between calls
        assert c.where() != os.getpid()
        assert list(c.count(20)) == list(range(20))
        with pytest.raises(RemoteFunctionError) as caught:
            c.fail()
        assert isinstance(caught.value, KeyError)
        assert c.add(0) == 13  # an exception does not end the session
        final_calls = c.session.calls.transcript.calls
    signed = c.session.final
    assert signed is not None
    result = signed.message
    assert result.status == "closed" and result.calls == final_calls == 6
    assert result.transcript == c.session.calls.transcript.head
    assert 0 < result.price_charged <= c.session.quote.max_charge
    after = ledger(net)  # conservation: what left the account is what was charged
    charged = result.price_charged / 1e6
    assert round(before["available"] - after["available"], 6) == round(charged, 6)
    assert round(after["paid"] - before["paid"], 6) == round(charged, 6)
    assert after["escrow"] == before["escrow"] == 0.0
    deadline = time.monotonic() + 20  # the receipt and cheque reach the provider
    while ledger(net, "p1")["earned"] - earned < charged - 1e-9 and \
            time.monotonic() < deadline:
        time.sleep(0.5)
    assert round(ledger(net, "p1")["earned"] - earned, 6) == round(charged, 6)


def test_an_async_session_streams_items_as_they_are_made(net: Network) -> None:
    Counter = counter(net, idle_timeout=60, max_duration=300)

    async def go() -> list[float]:
        seen: list[float] = []
        async with Counter.session.aio(0) as c:
            assert await c.add.aio(5) == 5
            start = trio.current_time()
            async for _ in c.count.aio(4, 0.5):
                seen.append(trio.current_time() - start)
        return seen

    seen = trio.run(go)
    assert len(seen) == 4
    assert seen[0] < seen[-1] - 1.0  # the first item came before the generator finished


def test_a_slow_reader_holds_the_generator_back_within_its_window(net: Network) -> None:
    """The reader takes one item, then pauses: the generator makes at most its window
    (plus one credit batch) meanwhile, and the rest only once reading goes on."""
    from protocol.sessions import MAX_WINDOW

    Counter = counter(net, idle_timeout=60, max_duration=300)
    with Counter.session(0) as c:
        items = c.stamped(300)
        next(items)
        paused = time.time()
        time.sleep(3.0)
        resumed = time.time()
        rest = list(items)
    assert len(rest) == 299
    made_while_paused = [t for t in rest if paused + 0.5 < t < resumed]
    assert len(made_while_paused) <= MAX_WINDOW, len(made_while_paused)
    assert sum(1 for t in rest if t >= resumed) > 200  # canary: most came after the pause


def test_a_session_ends_at_its_maximum_duration_and_is_charged_within_its_quote(
        net: Network) -> None:
    Counter = counter(net, idle_timeout=60, max_duration=3)
    with Counter.session(1) as c:
        assert c.add(1) == 2
        time.sleep(5)
        with pytest.raises(SessionLost, match="expired"):
            c.add(1)
    final = c.session.final
    assert final is not None and final.message.status == "expired"
    assert 2.5 <= final.message.usage.wall_s <= 4.5
    assert final.message.price_charged <= c.session.quote.max_charge


class _Weights:
    def __init__(self, weights: Any, more: dict[str, Any]) -> None:
        import hashlib
        from pathlib import Path

        self.kind = type(weights).__name__
        self.digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
        self.same = more["again"][0] == weights

    def info(self) -> tuple[str, str, bool]:
        return self.kind, self.digest, self.same


def test_a_file_argument_moves_once_and_a_second_session_sends_nothing(
        net: Network) -> None:
    from node.api.classes import File
    from node.api.requester import Requester
    from node.requester import events

    data = os.urandom(6 * 2**20)  # above wire.LANE_MIN_BYTES: sessions' inputs take no lane
    path = net.root / "weights.bin"
    path.write_bytes(data)
    Weights = remote(cpus=1, idle_timeout=60, max_duration=300, echo=False, max_price=1.0)(
        _Weights)

    async def twice() -> list[tuple[list[str], tuple[str, str, bool]]]:
        seen: list[tuple[list[str], tuple[str, str, bool]]] = []
        async with Requester(home=net.root / "req", config=os.devnull,
                             bootstrap=[net.providers[0]["addr"]]) as r:
            for _ in range(2):
                sent: list[str] = []

                def uploads(ev: events.Event, sent: list[str] = sent) -> None:
                    if isinstance(ev, events.Uploading):
                        sent.append(ev.name)

                stop = r.subscribe(uploads)
                async with Weights.session.aio(File(path), {"again": [File(path)]}) as w:
                    seen.append((sent, await w.info.aio()))
                stop()
        return seen

    (first, info1), (second, info2) = trio.run(twice)
    import hashlib

    assert info1 == info2 == ("PosixPath", hashlib.sha256(data).hexdigest(), True)
    assert any(n.endswith("weights.bin") for n in first), first  # canary: it moved once
    assert not any(n.endswith("weights.bin") for n in second), second  # held there


def test_nothing_of_one_session_survives_into_the_next(net: Network) -> None:
    Counter = counter(net, idle_timeout=60, max_duration=300)
    with Counter.session(0) as c:
        assert c.leave_traces() == []
        assert len(c.leave_traces()) == 2  # canary: within a session the files are there
    with Counter.session(0) as c:
        assert c.leave_traces() == []  # a new sandbox: its folders start empty


def test_a_frozen_provider_is_a_session_lost_within_bounds(tmp_path: Any) -> None:
    from node.requester.sessions import SILENCE_S

    network = Network(tmp_path)
    p: dict[str, Any] = {}
    try:
        p = network.start_provider(extra=["--warm", "0"])
        Counter = remote(cpus=1, idle_timeout=120, max_duration=300, echo=False,
                         home=network.root / "req", config=os.devnull,
                         bootstrap=[p["addr"]])(_Counter)
        with pytest.raises(SessionLost), Counter.session(0) as c:
            for i in c.count(10_000, 0.05):
                if i == 3:
                    os.killpg(p["proc"].pid, signal.SIGSTOP)
                    frozen = time.monotonic()
        assert time.monotonic() - frozen < SILENCE_S + 30
    finally:
        if p:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p["proc"].pid, signal.SIGCONT)
        network.close()


CTRL_C = """
import os, sys, time
from node import remote

class Slow:
    def wait(self, s):
        time.sleep(s)
        return s

S = remote(cpus=1, idle_timeout=60, max_duration=300, echo=False, max_price=1.0)(Slow)
with S.session() as s:
    print("open", flush=True)
    s.wait(60)
"""


def test_ctrl_c_mid_call_closes_the_lease_and_settles(net: Network) -> None:
    env = _env() | {"OFFLOAD_HOME": str(net.root / "req"), "PYTHONPATH": str(REPO),
                    "OFFLOAD_BOOTSTRAP": net.providers[0]["addr"],
                    "OFFLOAD_REQUESTER_CONFIG": os.devnull}
    script = net.root / "ctrl_c.py"
    script.write_text(CTRL_C)
    before = {r["session_id"] for r in json.loads(net.offload(
        "sessions", "--json", home="req", check=True).stdout)}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=net.root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "open\n"
        time.sleep(1.0)  # the call is in flight
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and err.strip().endswith("KeyboardInterrupt"), err
    assert ledger(net)["escrow"] == 0.0  # nothing left locked
    rows = [r for r in json.loads(net.offload("sessions", "--json", home="req",
                                              check=True).stdout)
            if r["session_id"] not in before]
    assert len(rows) == 1 and rows[0]["status"] == "closed", rows


def test_the_chat_and_embedding_examples_match_running_here(net: Network) -> None:
    env = _env() | {"OFFLOAD_HOME": str(net.root / "req"), "PYTHONPATH": str(REPO),
                    "OFFLOAD_BOOTSTRAP": net.providers[0]["addr"]}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "chat.py"), "--train-s",
                           "1", "--tokens", "30"], cwd=net.root, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the streamed text matches generating here" in proc.stdout
    assert "2 calls on one loaded model" in proc.stderr
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "embed_service.py"),
                           "--batches", "200"], cwd=net.root, env=env, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "200 batches embedded; the last one matches computing it here" in proc.stdout


def test_a_session_left_idle_ends_on_the_provider_and_the_next_call_says_so(
        net: Network) -> None:
    Counter = counter(net, idle_timeout=2, max_duration=300)
    with Counter.session(1) as c:
        assert c.add(1) == 2
        time.sleep(5)
        with pytest.raises(SessionLost):
            c.add(1)
    final = c.session.final or c.session.checkpoint
    assert final is not None and final.message.status in ("idle", "open")


def test_a_provider_killed_mid_stream_is_a_session_lost_within_bounds(
        tmp_path: Any) -> None:
    network = Network(tmp_path)
    try:
        p = network.start_provider(extra=["--warm", "0"])
        Counter = remote(cpus=1, idle_timeout=60, max_duration=300, echo=False,
                         home=network.root / "req", config=os.devnull,
                         bootstrap=[p["addr"]])(_Counter)
        got: list[int] = []
        started = time.monotonic()
        with pytest.raises(SessionLost), Counter.session(0) as c:
            for i in c.count(1000, 0.05):
                got.append(i)
                if i == 5:
                    os.killpg(p["proc"].pid, signal.SIGKILL)
                    started = time.monotonic()
        assert got[:6] == list(range(6))
        assert time.monotonic() - started < 60
    finally:
        network.close()


async def test_hostile_session_frames_get_named_errors_and_the_provider_serves_on(
        net: Network) -> None:
    from node.net.client import open_client
    from protocol import Identity, wire
    from protocol.framing import HEADER

    p = net.providers[0]
    async with open_client(Identity.generate(), [p["addr"]]) as (host, _):
        cases = [
            (HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1", "bad_request"),
            (wire.encode(wire.MethodCall(id=1, method="add", args=b"", window=0)),
             "bad_request"),  # a call before any session opened
            (wire.encode(wire.SessionOpen(spec=b"\x80")), "bad_request"),
            (HEADER.pack(64 * 1024 * 1024) + b"x" * 100, "too_large"),
        ]
        for payload, code in cases:
            stream = await host.open_stream(p["peer_id"], wire.SESSION_PROTOCOL,
                                            addrs=p["addrs"])
            try:
                await stream._raw.write(payload)
                reply = await stream.receive_within(10, "reply")
            finally:
                await stream.close()
            assert isinstance(reply, wire.ErrorReply) and reply.code == code, (payload[:20],
                                                                                reply)
    Counter = counter(net, idle_timeout=60, max_duration=300)
    async with Counter.session.aio(3) as c:  # canary: a well-formed session is served
        assert await c.add.aio(1) == 4


def test_a_session_shows_in_status_while_open_then_in_sessions_jobs_and_verify(
        net: Network) -> None:
    def provider_status() -> dict[str, Any]:
        res = net.offload("status", "--json", home="p1", check=True)
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc

    ended_before = provider_status()["sessions"]["ended"]
    Counter = counter(net, idle_timeout=60, max_duration=300)
    with Counter.session(1) as c:
        assert c.add(1) == 2
        sid = c.session.session_id
        deadline = time.monotonic() + 20  # the status document is rewritten every 5 s
        while True:  # (one written while the object was being built says "starting")
            live = provider_status()["sessions"]["open"]
            mine = [s for s in live if s["id"] == sid]
            if (mine and mine[0]["calls"] >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(mine) == 1, live
        assert (mine[0]["requester"], mine[0]["status"]) == (c.session.requester, "open"), mine
        assert mine[0]["calls"] == 1 and mine[0]["age_s"] > 0
        text = net.offload("status", home="p1", check=True).stdout
        assert re.search(r"sessions:\s+[1-9]\d* open, \d+ ended", text), text
        during = json.loads(net.offload("sessions", "--json", home="req", check=True).stdout)
        assert [(d["session_id"], d["status"]) for d in during][:1] == [(sid, "open")]
    final = c.session.final
    assert final is not None
    doc = json.loads(net.offload("sessions", "--json", home="req", check=True).stdout)
    first = doc[0]
    assert first["session_id"] == sid and first["status"] == "closed"
    assert first["calls"] == 1 and first["provider"] == net.providers[0]["peer_id"]
    assert first["charge"] == f"{final.message.price_charged / 1e6:.6f}"
    res = net.offload("verify", first["file"], home="req")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == (f"valid: session {sid[:12]} signed by "
                                  f"{final.message.provider}, 1 call(s), status closed")
    with open(first["file"], "rb") as f:
        assert f.read() == final.raw
    jobs = json.loads(net.offload("jobs", "--json", home="req", check=True).stdout)
    assert [j["kind"] for j in jobs if j["job_id"] == sid] == ["session"]
    deadline = time.monotonic() + 20  # ended: off the open list, counted
    while True:
        after = provider_status()["sessions"]
        if (after["ended"] > ended_before and all(s["id"] != sid for s in after["open"])):
            break
        assert time.monotonic() < deadline, f"the ended session is still listed: {after}"
        time.sleep(0.5)


class _Restartable:
    def __init__(self) -> None:
        self.token = os.urandom(8).hex()  # one per constructor run
        self.n = 0

    @idempotent
    def slow_token(self, pause: float) -> str:
        time.sleep(pause)
        return self.token

    def slow_add(self, pause: float) -> int:
        time.sleep(pause)
        self.n += 1
        return self.n


def test_restart_reopens_a_lost_session_elsewhere_and_retries_only_idempotent_calls(
        tmp_path: Any) -> None:
    import threading

    network = Network(tmp_path)
    try:
        first = network.start_provider(extra=["--warm", "0"])
        for _ in range(2):
            network.start_provider(bootstrap=first["addr"], extra=["--warm", "0"])
        procs = {p["peer_id"]: p["proc"] for p in network.providers}
        R = remote(cpus=1, idle_timeout=60, max_duration=300, echo=False, restart=True,
                   home=network.root / "req", config=os.devnull,
                   bootstrap=[first["addr"]])(_Restartable)

        def kill_soon(peer: str) -> None:
            def kill() -> None:
                time.sleep(1.0)
                os.killpg(procs[peer].pid, signal.SIGKILL)
            threading.Thread(target=kill, daemon=True).start()

        # the block ends with the last loss: no provider was left to open it again
        with pytest.raises(NoProviders), R.session() as r:
            token = r.slow_token(0)
            one = r.session.ad.peer_id
            kill_soon(one)
            again = r.slow_token(3.0)  # in flight when its provider dies: run again
            two = r.session.ad.peer_id
            assert two != one and again != token and r.restarts == 1
            assert r.slow_add(0) == 1
            kill_soon(two)
            with pytest.raises(SessionLost, match="is not marked @idempotent"):
                r.slow_add(3.0)  # not safe to run twice: the caller decides
            three = r.session.ad.peer_id
            assert three not in (one, two) and r.restarts == 2
            assert r.slow_add(0) == 1  # a fresh object on the third provider
            kill_soon(three)
            with pytest.raises(NoProviders, match="no other provider"):
                r.slow_token(3.0)
    finally:
        network.close()


class _Pure:
    def __init__(self, k: int) -> None:
        self.k = k

    def times(self, x: int) -> int:
        return self.k * x


def test_sampled_verification_catches_a_provider_that_alters_replies(tmp_path: Any) -> None:
    """Two honest priced providers and a free one that lies (placement's first choice):
    the canary shows the lie goes through unchecked; with verify="sample" a second
    provider's session disagrees, a third settles it, and the liar is not paid."""
    from node.errors import ResultRejected

    network = Network(tmp_path)
    priced = network.root / "priced.toml"
    priced.write_text(PRICED)
    try:
        liar = network.start_provider(fault="lie", extra=["--warm", "0"])
        for _ in range(2):
            network.start_provider(bootstrap=liar["addr"],
                                   extra=["--warm", "0", "--config", str(priced)])
        network.offload("ledger", "deposit", "5", home="req", check=True)
        settings: dict[str, Any] = {"home": network.root / "req", "config": os.devnull,
                                    "bootstrap": [liar["addr"]], "echo": False,
                                    "max_price": 1.0, "idle_timeout": 60,
                                    "max_duration": 300}
        Plain = remote(cpus=1, **settings)(_Pure)
        with Plain.session(2) as c:  # canary: unchecked, the lie goes through
            assert c.session.ad.peer_id == liar["peer_id"]
            assert c.times(3) == 7
        Sampled = remote(cpus=1, verify="sample", sample=1.0, **settings)(_Pure)
        with Sampled.session(2) as c:
            assert c.session.ad.peer_id == liar["peer_id"]
            with pytest.raises(ResultRejected, match="outvoted by two other providers"):
                c.times(3)
            with pytest.raises(ResultRejected, match="takes no more calls"):
                c.times(4)
            sid = c.session.session_id
        rows = json.loads(network.offload("sessions", "--json", home="req",
                                          check=True).stdout)
        by_id = {r["session_id"]: r for r in rows}
        assert by_id[sid]["status"] == "rejected", by_id[sid]  # the liar: not paid
        honest = [r for r in rows if r["provider"] != liar["peer_id"]]
        assert len(honest) == 2 and all(r["status"] == "closed" for r in honest), honest
        assert all(float(r["charge"]) > 0 for r in honest)  # checker and referee: paid
    finally:
        network.close()
