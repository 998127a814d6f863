"""The synchronous facade: one trio loop in a helper thread serves every blocking call.

`square.remote(7)` in a plain script or a notebook cell blocks until the value is back;
underneath, the call runs in a trio loop on a daemon thread ("offload-trio") that this
module starts on first use.

Why a helper thread rather than `trio.run` per call: a session (libp2p host, DHT
bootstrap, ledger) takes a second or more to open, and the thread keeps one open per
(home, bootstrap, config, out) for the life of the process, so only the first call pays
for it. It also works where the calling thread already runs an event loop (Jupyter's
asyncio), since the caller only waits on a queue. Sessions close at interpreter exit
(atexit, registered when the first loop starts, not at import) or on `close()`. Ctrl-C
in the caller cancels the call in the loop.

Inside trio code a blocking call would stall the loop, so it is refused: there use
`await square.remote.aio(7)` and `async with Requester(...)`.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import trio

from node.api.requester import Job, Offer, Requester, Result
from node.errors import RemoteError, UserError
from node.requester.events import Emit
from scheduler.decide import Plan

log = logging.getLogger(__name__)
T = TypeVar("T")
Key = tuple[Any, ...]
CLOSE_TIMEOUT_S = 30.0


def _key(kwargs: dict[str, Any]) -> Key:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in kwargs.items()))


class Portal:
    """A trio loop on a daemon thread, its kept sessions, and blocking calls into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._sessions: dict[Key, Requester] = {}
        self._opening: dict[Key, trio.Lock] = {}

    def start(self) -> trio.lowlevel.TrioToken:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                _close_at_exit()
                ready = threading.Event()
                self._thread = threading.Thread(target=self._thread_main, args=(ready,),
                                                name="offload-trio", daemon=True)
                self._thread.start()
                ready.wait()
            assert self._token is not None
            return self._token

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            trio.run(self._main, ready)
        except BaseException:  # the loop must never take the process down
            log.exception("the offload helper loop stopped")
        finally:
            self._token = None
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            ready.set()
            await self._stop.wait()
        self._sessions.clear()

    def in_loop(self) -> bool:
        """True when called from a task of this portal's loop."""
        try:
            return self._token is not None and (
                trio.lowlevel.current_trio_token() == self._token)
        except RuntimeError:
            return False

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)` in the helper loop, blocking this thread until it is done."""
        _refuse_in_async()
        token = self.start()
        scopes: list[trio.CancelScope] = []

        async def call() -> T:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                return await fn(*args)
            raise KeyboardInterrupt  # cancelled: the caller is already gone

        try:
            return trio.from_thread.run(call, trio_token=token)
        except KeyboardInterrupt:
            if scopes:
                try:
                    trio.from_thread.run_sync(scopes[0].cancel, trio_token=token)
                except trio.RunFinishedError:
                    pass
            raise

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `fn(*args)` as a task of the loop, from inside it, for as long as it takes
        (a session held open across blocking calls); it must not raise."""
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def session(self, kwargs: dict[str, Any]) -> Requester:
        """The kept Requester for these settings, opened on first use (in the loop)."""
        key = _key(kwargs)
        lock = self._opening.setdefault(key, trio.Lock())
        async with lock:
            kept = self._sessions.get(key)
            if kept is None:
                assert self._nursery is not None and self._stop is not None
                opened: Requester = await self._nursery.start(self._hold, kwargs, self._stop)
                self._sessions[key] = kept = opened
                self._nursery.start_soon(self._forget_when_closed, key, kept)
        return kept

    async def _forget_when_closed(self, key: Key, requester: Requester) -> None:
        await requester.closed.wait()
        if self._sessions.get(key) is requester:
            del self._sessions[key]

    async def open(self, kwargs: dict[str, Any], stop: trio.Event) -> Requester:
        """A Requester held open by a task of the loop until `stop` is set."""
        assert self._nursery is not None
        held: Requester = await self._nursery.start(self._hold, kwargs, stop)
        return held

    @staticmethod
    async def _hold(kwargs: dict[str, Any], stop: trio.Event,
                    task_status: Any = trio.TASK_STATUS_IGNORED
                    ) -> None:
        started = False
        r = Requester(**kwargs)
        try:
            async with r:
                task_status.started(r)
                started = True
                await stop.wait()
        except Exception as exc:
            if not started:
                raise
            log.warning("an offload session closed with an error: %s", exc)
        finally:
            r.closed.set()

    def close(self) -> None:
        """Close every session and stop the loop (also run at interpreter exit)."""
        token, stop, thread = self._token, self._stop, self._thread
        if token is None or stop is None or thread is None or not thread.is_alive():
            return
        try:
            trio.from_thread.run_sync(stop.set, trio_token=token)
        except trio.RunFinishedError:
            return
        thread.join(CLOSE_TIMEOUT_S)


def _refuse_in_async() -> None:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    raise UserError("a blocking offload call inside trio code would stall it; use "
                    "`await f.remote.aio(...)` / `.call.aio` / `.map.aio`, or "
                    "`async with Requester(...)`")


_PORTAL: Portal | None = None
_PORTAL_LOCK = threading.Lock()


def portal() -> Portal:
    """The process's portal (created, not started, on first use)."""
    global _PORTAL
    with _PORTAL_LOCK:
        if _PORTAL is None or os.getpid() != _PORTAL_PID:
            _set_portal(Portal())
        assert _PORTAL is not None
        return _PORTAL


_PORTAL_PID = os.getpid()


def _set_portal(p: Portal) -> None:
    global _PORTAL, _PORTAL_PID
    _PORTAL, _PORTAL_PID = p, os.getpid()


def close() -> None:
    """Close the sync facade's sessions now (they also close at exit)."""
    if _PORTAL is not None and os.getpid() == _PORTAL_PID:
        _PORTAL.close()


_AT_EXIT: list[bool] = []


def _close_at_exit() -> None:
    """Register `close` with atexit once, when the first helper loop starts."""
    if not _AT_EXIT:
        _AT_EXIT.append(True)
        atexit.register(close)


async def session_for(kwargs: dict[str, Any]) -> Requester | None:
    """Inside the sync facade's loop: its kept session for these settings; else None."""
    p = _PORTAL
    if p is None or not p.in_loop():
        return None
    return await p.session(kwargs)


class SyncRequester:
    """`Requester` for plain scripts: the same methods, blocking.

        with SyncRequester(bootstrap=[...]) as r:
            print(r.submit(Job("examples/square.py", args=["7"])).stdout)
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._stop: trio.Event | None = None
        self._r: Requester | None = None

    def __enter__(self) -> SyncRequester:
        p = portal()
        p.start()

        async def enter() -> tuple[trio.Event, Requester]:
            stop = trio.Event()
            return stop, await p.open(self._kwargs, stop)

        self._stop, self._r = p.run(enter)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        r, stop = self._r, self._stop
        self._r = None
        if r is None or stop is None:
            return

        async def leave() -> None:
            stop.set()
            await r.closed.wait()

        portal().run(leave)

    @property
    def requester(self) -> Requester:
        if self._r is None:
            raise UserError("use SyncRequester in a `with` block")
        return self._r

    def _run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        return portal().run(functools.partial(fn, *args, **kwargs))

    def subscribe(self, listener: Emit) -> Callable[[], None]:
        """Listeners run on the helper thread; keep them short and thread-safe."""
        return self.requester.subscribe(listener)

    def offers(self, where: str | None = None, **kwargs: Any) -> list[Offer]:
        return self._run(self.requester.offers, where, **kwargs)

    def plan(self, job: Job, *, items: int = 1) -> Plan:
        return self._run(self.requester.plan, job, items=items)

    def submit(self, job: Job | str | os.PathLike[str]) -> Result:
        return self._run(self.requester.submit, job)

    def map(self, jobs: Iterable[Job], *, workers: int | None = None,
            return_exceptions: bool = False) -> list[Result | RemoteError]:
        return self._run(self.requester.map, list(jobs), workers=workers,
                         return_exceptions=return_exceptions)
