"""Per-peer and per-IP shares, and how peer failures are named and counted."""

from __future__ import annotations

import pytest

from node.errors import PeerGone, PeerTimeout, UserError
from node.net.limits import ConnectionShares, Limits, PeerErrors, StreamShares, kind_of
from protocol import FrameTooLarge, MalformedMessage


def test_a_peer_gets_its_share_of_streams_per_protocol_and_gives_it_back() -> None:
    shares = StreamShares(Limits(streams_per_peer=2, exempt=()))
    assert shares.try_open("/job", "A", "10.0.0.1") is None
    assert shares.try_open("/job", "A", "10.0.0.1") is None
    assert shares.try_open("/job", "A", "10.0.0.1") == "more than 2 open /job streams from you"
    assert shares.try_open("/settle", "A", "10.0.0.1") is None  # another protocol
    assert shares.try_open("/job", "B", "10.0.0.2") is None  # another peer
    shares.close("/job", "A", "10.0.0.1")
    assert shares.try_open("/job", "A", "10.0.0.1") is None
    for _ in range(3):
        shares.close("/job", "A", "10.0.0.1")
    assert shares.open_count("/job", "A") == 0


def test_fresh_identities_share_their_ip_but_loopback_is_exempt_by_default() -> None:
    shares = StreamShares(Limits(streams_per_peer=8, streams_per_ip=3, exempt=()))
    for i in range(3):
        assert shares.try_open("/job", f"fresh{i}", "203.0.113.9") is None
    assert shares.try_open("/job", "fresh3", "203.0.113.9") == \
        "more than 3 open /job streams from 203.0.113.9"
    assert shares.try_open("/job", "fresh3", "203.0.113.10") is None
    local = StreamShares(Limits(streams_per_peer=8, streams_per_ip=3))
    assert all(local.try_open("/job", f"p{i}", "127.0.0.1") is None for i in range(10))
    assert local.try_open("/job", "p0", "127.0.0.1") is None  # 2nd of p0: still its share


def test_connections_per_ip() -> None:
    conns = ConnectionShares(Limits(connections_per_ip=2, exempt=("10.0.0.0/8",)))
    assert conns.admit("192.0.2.1") and conns.admit("192.0.2.1")
    assert not conns.admit("192.0.2.1")
    conns.release("192.0.2.1")
    assert conns.admit("192.0.2.1") and conns.count("192.0.2.1") == 2
    assert all(conns.admit("10.1.2.3") for _ in range(5)) and conns.count("10.1.2.3") == 0
    assert conns.admit("") and conns.count("") == 0  # a transport that names no IP


@pytest.mark.parametrize(("kw", "message"), [
    ({"streams_per_peer": 0}, "limits.streams_per_peer must be between 1 and 100000"),
    ({"connections_per_ip": 10**6}, "limits.connections_per_ip must be between 1 and 100000"),
    ({"exempt": ("localhost",)},
     "limits.exempt: 'localhost' is not a network such as 127.0.0.0/8"),
])
def test_limits_refuse_nonsense(kw: dict[str, object], message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}$"):
        Limits(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "kind"), [
    (FrameTooLarge("x"), "too_large"), (MalformedMessage("x"), "protocol"),
    (PeerTimeout("x"), "timeout"), (PeerGone("x"), "gone"), (KeyError("x"), "unexpected"),
    (OverflowError("Python int too large to convert to SQLite INTEGER"), "unexpected"),
    (ExceptionGroup("g", [ExceptionGroup("h", [PeerGone("x")])]), "gone"),
    (ExceptionGroup("g", [PeerGone("x"), KeyError("x")]), "unexpected"),
])
def test_failures_are_named(exc: BaseException, kind: str) -> None:
    assert kind_of(exc) == kind


def test_peer_errors_count_and_log_bugs_with_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    errors = PeerErrors()
    errors.on_count = seen.append
    errors.failed("job exchange", "12D3KooWpeer", MalformedMessage("bad"))
    errors.failed("job exchange", "12D3KooWpeer", OverflowError("boom"))
    assert seen == ["protocol", "unexpected"] and errors.counts["unexpected"] == 1
    bug = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(bug) == 1 and "12D3KooWpeer" in bug[0].getMessage()
