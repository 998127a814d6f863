"""A real node process that misbehaves on purpose (the tests' cheater and quitter).

    python -m tests.e2e.faulty cheat|die|mute|stay  <offload arguments...>

cheat: every digit of a job's stdout is shifted by one before the result is signed.
die:   the process exits the moment a job's outputs are collected (before the result).
mute:  receipts it is given are not gossiped on (only their requester's gossip spreads them).
lie:   a session provider that adds one to every small int its sessions' methods return,
       before the transcript (so its signed results stay self-consistent).
stay:  a requester that never waits for a direct connection: outputs of any size follow a
       relayed job stream (as before `fetch_outputs`).
"""

from __future__ import annotations

import os
import sys

import node.provider.exchange as provider
from node.cli.main import main


def _shift(text: str) -> str:
    return "".join(str((int(c) + 1) % 10) if c.isdigit() else c for c in text)


def _install(fault: str) -> None:
    if fault == "cheat":
        real = provider.clip_text

        def tampered(text: str) -> tuple[str, bool]:
            out, clipped = real(text)
            return _shift(out), clipped

        provider.clip_text = tampered  # type: ignore[assignment]
    elif fault == "die":
        def vanish(*_: object) -> object:
            os._exit(17)

        provider.collect_outputs = vanish  # type: ignore[assignment]
    elif fault == "mute":
        from node.net.gossip import Gossip

        async def silent(*_: object) -> None:
            return None

        Gossip.publish = silent  # type: ignore[method-assign]
    elif fault == "lie":
        import dataclasses

        import node.provider.sessions as sessions

        real_next = sessions.HostReader.next

        async def next_lying(self: sessions.HostReader) -> object:
            ev = await real_next(self)
            if isinstance(ev, sessions.Ended) and not ev.error and ev.value \
                    and ev.value[-1] < 0x7F:
                ev = dataclasses.replace(ev, value=ev.value[:-1] + bytes([ev.value[-1] + 1]))
            return ev

        sessions.HostReader.next = next_lying  # type: ignore[assignment,method-assign]
    elif fault == "stay":
        import node.requester.exchange as requester

        requester.RELAY_BULK_BYTES = 2**62
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    _install(sys.argv[1])
    main(sys.argv[2:])
