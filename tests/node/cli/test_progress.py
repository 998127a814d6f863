"""The plain progress lines say which way a job and its outputs went."""

from __future__ import annotations

from node.cli.progress import describe
from node.requester import events

P, J = "12D3KooWProviderXYZ", "ab" * 32


def route(route: str, what: str, waited_s: float = 0.0) -> str | None:
    return describe(events.Route(job_id=J, provider=P, route=route, waited_s=waited_s,
                                 what=what))


def test_routes_are_told_when_they_are_not_plainly_direct() -> None:
    assert route("direct", "job") is None
    assert route("relayed", "job", 10.2) == ("12D3KooWProvider: reached through a relay (no "
                                             "direct connection within 10 s)")
    assert route("direct", "outputs", 1.5) == ("12D3KooWProvider: outputs of job abababababab"
                                               " on a direct connection")
    assert route("relayed", "outputs", 10.0) == (
        "12D3KooWProvider: outputs of job abababababab through the relay (no direct "
        "connection within 10 s)")
