"""The requester's waits for a direct connection fit inside what the provider waits for."""

from __future__ import annotations

from node.net.transfer import STALL_S
from node.requester import exchange
from protocol import wire


def test_outputs_wait_for_a_direct_connection_while_the_provider_still_waits_for_us() -> None:
    # the provider waits STALL_S for our `lane` or `fetch_outputs` once the result is out;
    # we answer after at most DIRECT_WAIT_S plus the move's two frames
    assert exchange.DIRECT_WAIT_S + 10.0 <= STALL_S
    # outputs the provider sends at once (no lane offer awaited) can never be moved
    assert exchange.RELAY_BULK_BYTES >= wire.LANE_MIN_BYTES
