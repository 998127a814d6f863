"""What @remote functions (remote.py) and classes (classes.py) share: the Requester their
calls run in, and how their code travels (cloudpickle, by value where the provider lacks
the module)."""

from __future__ import annotations

import pickle
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import cloudpickle

from node.api.requester import CURRENT, Requester
from node.requester.include import installed as installed


@asynccontextmanager
async def requester_for(settings: dict[str, Any]) -> AsyncIterator[Requester]:
    """The Requester open in this task; else the sync facade's for these settings (Options.
    session()); else a new one for the block."""
    open_now = CURRENT.get()
    if open_now is not None:
        yield open_now
        return
    from node.api.sync import session_for

    kept = await session_for(settings)
    if kept is not None:
        yield kept
        return
    async with Requester(**settings) as r:
        yield r




def pickle_function(fn: Callable[..., Any], payload: Any = None) -> bytes:
    """cloudpickle `fn` (or `payload`, with `fn`'s module treated alike); a function from
    an importable module (not __main__) travels by value, since the provider has only the
    runtime's packages."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    by_value = module is not None and module.__name__ != "__main__" and not installed(module)
    if by_value:
        assert module is not None
        cloudpickle.register_pickle_by_value(module)
    try:
        data: bytes = cloudpickle.dumps(fn if payload is None else payload,
                                        protocol=pickle.DEFAULT_PROTOCOL)
        return data
    finally:
        if by_value:
            assert module is not None
            cloudpickle.unregister_pickle_by_value(module)
