"""`@remote(keep_warm=S)`: a function's calls served by one session kept open on a provider.

The first call opens a session whose object is the function (a `types.SimpleNamespace`
with `call`, so the sandbox needs nothing of node/); later calls within S seconds of the
last one go to it as session calls (a few milliseconds instead of a job's fresh sandbox),
and it closes S seconds after its last call, or when its Requester closes. A lost session
is opened again on another provider and a call in flight is run again there, as a job's
placement runs it again after a provider's failure. `.call()` always runs a job.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from node.api.classes import CallMethod, RemoteClass, RemoteInstance
from node.api.shared import pickle_function
from node.errors import RemoteError, UserError

if TYPE_CHECKING:
    from node.api.remote import Options
    from node.api.requester import Requester

log = logging.getLogger(__name__)
MARGIN_S = 30
"""The provider's idle timeout is this much longer than keep_warm: the requester ends it."""


class _Function(RemoteClass[Any]):
    """A RemoteClass whose object, built on the provider, is the function."""

    def __init__(self, fn: Callable[..., Any], options: Options, *, keep_warm: int,
                 concurrency: int, sample: float) -> None:
        shim = type(getattr(fn, "__name__", "function"), (),
                    {"call": staticmethod(fn), "__module__": fn.__module__,
                     "__qualname__": getattr(fn, "__qualname__", "function")})
        super().__init__(shim, options, idle_timeout=keep_warm + MARGIN_S,
                         max_duration=max(3600, keep_warm * 4), concurrency=concurrency,
                         restart=True, sample=sample)
        self.fn = fn

    def payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        return pickle_function(self.fn, (types.SimpleNamespace, (), {"call": self.fn}))


@dataclasses.dataclass(eq=False)
class _Held:
    instance: RemoteInstance
    stop: trio.Event
    last: float
    busy: int = 0
    closed: bool = False


class WarmSessions:
    """The kept-warm sessions of one Requester, one per function; a task of the
    Requester's nursery holds each."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._held: dict[object, _Held] = {}
        self._locks: dict[object, trio.Lock] = {}
        self.opened = 0

    @asynccontextmanager
    async def use(self, key: object, rc: RemoteClass[Any], keep_s: float
                  ) -> AsyncIterator[RemoteInstance]:
        """The warm session of `key`, opened if none is; kept while the caller uses it."""
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            found = self._held.get(key)
            held: _Held = found if found is not None and not found.closed else \
                await self._nursery.start(self._hold, key, rc, keep_s)
            held.busy += 1
        try:
            yield held.instance
        finally:
            held.busy -= 1
            held.last = trio.current_time()

    def close_all(self) -> None:
        for held in self._held.values():
            held.stop.set()

    async def _hold(self, key: object, rc: RemoteClass[Any], keep_s: float,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        held: _Held | None = None
        try:
            async with rc._open((), {}) as instance:
                held = _Held(instance, trio.Event(), trio.current_time())
                self._held[key] = held
                self.opened += 1
                task_status.started(held)
                while not held.stop.is_set():
                    left = held.last + keep_s - trio.current_time()
                    if left <= 0 and held.busy == 0:
                        break
                    with trio.move_on_after(max(left, 0.05)):
                        await held.stop.wait()
                held.closed = True
        except (RemoteError, UserError) as exc:
            if held is None:
                raise
            log.warning("the warm session of %s ended: %s", rc.cls.__qualname__, exc)
        finally:
            if held is not None:
                held.closed = True
                if self._held.get(key) is held:
                    del self._held[key]


_OF: weakref.WeakKeyDictionary[Requester, WarmSessions] = weakref.WeakKeyDictionary()


def sessions_of(r: Requester) -> WarmSessions:
    """The kept-warm sessions of `r` (an open Requester), made on first use."""
    found = _OF.get(r)
    if found is None:
        if r.background is None:
            raise UserError("the Requester is not open")
        found = _OF[r] = WarmSessions(r.background)
        r.at_close.append(found.close_all)
    return found


def function_class(fn: Callable[..., Any], options: Options, *, keep_warm: int,
                   concurrency: int, sample: float) -> RemoteClass[Any]:
    return _Function(fn, options, keep_warm=keep_warm, concurrency=concurrency,
                     sample=sample)


async def call(r: Requester, key: object, rc: RemoteClass[Any], keep_s: float,
               args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One call of a kept-warm function: its value, or the remote exception raised."""
    async with sessions_of(r).use(key, rc, keep_s) as instance:
        return await CallMethod(instance, "call", True).aio(*args, **kwargs)
