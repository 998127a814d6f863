"""`split(..., stages=K)`: a model's contiguous blocks over K providers, one session each.

This node drives the chain (each activation comes back and goes on), so no provider needs
to reach another; a stage lost mid-call is opened again elsewhere and run again from the
input held here.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Sequence
from typing import Any

from node.api.blocks import Model, by_value, profile_here, run_remote, stage_room, weight_bytes
from node.errors import SessionLost, UserError
from scheduler.errors import SchedulerError
from scheduler.layers import partition

log = logging.getLogger(__name__)


def fewest_stages(blocks: Sequence[Any], memory_gb: float) -> int:
    """The fewest contiguous stages whose weights each fit `memory_gb` (1: the whole
    model fits one session)."""
    weights = [2 * weight_bytes(b) for b in blocks]
    for k in range(1, len(blocks) + 1):
        try:
            partition([1.0] * len(blocks), weights, k, stage_room(memory_gb))
            return k
        except SchedulerError:
            continue
    raise UserError(f"a block of {max(weights) // 2} bytes of weights does not fit one "
                    f"stage of memory_gb={memory_gb:g}; give stages more memory")


class Pipeline:
    """Contiguous blocks over `stages` providers, each stage a session holding its blocks;
    this node drives the chain (each activation comes back and goes on), so no provider
    reaches another. A stage lost mid-call is opened again on another provider with the
    same blocks and the call goes on from that stage's input, which this node holds: no
    output is lost or repeated. `bounds[i]` are stage i's blocks; `recovered` counts
    replaced stages."""

    def __init__(self, blocks: list[Any], example: Any, *, stages: int, passes: int,
                 options: dict[str, Any]) -> None:
        from node.api.remote import remote

        self.blocks = blocks
        self.profile = profile_here(blocks, example, passes)
        memory_gb = float(options.get("memory_gb", 2.0))
        room = stage_room(memory_gb)
        # a stage's weights arrive pickled, then live as tensors: twice their size at peak
        weights = [2 * weight_bytes(b) for b in blocks]
        try:
            self.bounds = partition([b.local_s for b in self.profile], weights, stages, room)
        except SchedulerError as exc:
            raise UserError(f"split(stages={stages}): {exc}; give each stage more memory "
                            "(memory_gb=) or use more stages") from None
        self._sessions: list[Any] = []
        self.instances: list[Any] = []
        atexit.register(self.close)
        try:
            for lo, hi in self.bounds:
                taken = [i.session.ad.peer_id for i in self.instances]
                where = options.get("where")
                if taken:
                    away = " and ".join(f'peer_id != "{t}"' for t in taken)
                    where = f"({where}) and {away}" if where else away
                rc = remote(**{**options, "where": where, "restart": True})(Model)
                rc.avoid = lambda: set(self.providers)
                session = rc.session(blocks[lo:hi])
                with by_value(blocks):
                    self.instances.append(session.__enter__())
                self._sessions.append(session)
        except BaseException:
            self.close()
            raise

    @property
    def recovered(self) -> int:
        """Stages opened again on another provider after theirs was lost."""
        return sum(i.restarts for i in self.instances)

    @property
    def providers(self) -> list[str]:
        return [i.session.ad.peer_id for i in self.instances]

    def __call__(self, x: Any) -> Any:
        for i, (_, hi) in enumerate(self.bounds):
            x = self._stage(i, x, self.profile[hi - 1].out_bytes)
        return x

    forward = __call__

    def _stage(self, i: int, x: Any, out_bytes: int) -> Any:
        inst = self.instances[i]
        for attempt in range(3):
            provider = inst.session.ad.peer_id
            try:
                return run_remote(inst, x, 0, out_bytes)
            except SessionLost as lost:
                # restart=True opened the stage again elsewhere (its constructor got the
                # same blocks); its input is still here: run the stage again from it
                if inst.session.ad.peer_id == provider or attempt == 2:
                    raise
                log.warning("pipeline stage %d: %s; running it again on %s", i, lost,
                            inst.session.ad.peer_id[:16])
        raise AssertionError("unreachable")

    def close(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.__exit__(None, None, None)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
