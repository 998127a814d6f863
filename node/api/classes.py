"""`@remote` on a class: one object built on a provider, its methods called there.

    @remote(gpus=1, idle_timeout=300, max_duration=3600)
    class Chat:
        def __init__(self, model: str) -> None: ...
        def reply(self, text: str) -> str: ...
        def stream(self, text: str) -> Iterator[str]: ...   # a generator: streamed

    with Chat.session("small") as chat:            # the sync facade (node.api.sync)
        chat.reply("hi")                           # runs on the provider, state kept
        for token in chat.stream("tell me"):       # items as they are yielded
            print(token)
    async with Chat.session.aio("small") as chat:  # in trio code
        await chat.reply.aio("hi")
        async for token in chat.stream.aio("x"): ...

A `File(path)` among the constructor's arguments moves as one of the session's inputs,
through the provider's content-addressed cache (a provider that holds it is sent nothing,
and placement counts that locality); in the sandbox it arrives as a `pathlib.Path` to the
file. The class and the other arguments are cloudpickled into CLASS_FILE, which only
the session's sandbox unpickles; node.api.session_host.HOST serves the calls there. Values
come back as strict msgpack (node.api.values), never as pickles; a remote exception is
raised here as RemoteFunctionError (mixed with its built-in type). The provider is chosen
as for @remote functions (the best candidate); the session runs on node.requester.sessions.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import operator
import os
import pickle
import random
import shutil
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import cloudpickle
import trio

from node.api.session_host import host_bytes
from node.api.shared import pickle_function, requester_for
from node.api.values import ReturnValueRejected, decode_return_bytes, remote_error
from node.errors import (
    CallRaised,
    NoProviders,
    RemoteError,
    ResultRejected,
    SessionLost,
    UserError,
    sole_error,
)
from node.requester.sessions import RemoteSession, SessionRequest, open_session
from protocol.sessions import CLASS_FILE, HOST_FILE, MAX_CONCURRENCY, MAX_IDLE_S

if TYPE_CHECKING:
    from node.api.remote import Options

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A session's own settings, besides the @remote ones."""

    idle_timeout: int = 300
    max_duration: int = 3600
    concurrency: int = 1
    restart: bool = False
    sample: float = 0.25
    """verify="sample": the share of calls replayed on a second provider's session."""

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise UserError("@remote: sample is a share of calls, above 0 and at most 1")
        if not 1 <= self.idle_timeout <= MAX_IDLE_S:
            raise UserError(f"@remote: idle_timeout must be 1 .. {MAX_IDLE_S} s")
        if self.max_duration < 1:
            raise UserError("@remote: max_duration must be at least 1 s")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UserError(f"@remote: concurrency must be 1 .. {MAX_CONCURRENCY}")


class File(os.PathLike[str]):
    """A local file for a session's constructor: sent once (content-addressed, cached on
    the provider), received there as a `pathlib.Path`; here it is a path like any other."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"File({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)


def _take_files(value: Any, folder: Path, found: dict[Path, Path]) -> Any:
    """`value` with each File (in lists, tuples and dict values too) replaced by the Path
    it will have in the sandbox; each file linked into `folder` under a unique name."""
    if isinstance(value, File):
        src = value.path.resolve()
        if not src.is_file():
            raise UserError(f"{value.path} is not a readable file")
        if src not in found:
            stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in src.name)
            link = folder / f"file{len(found)}-{stem}"[:120]
            link.symlink_to(src)
            found[src] = link
        return Path(found[src].name)
    if isinstance(value, list | tuple):
        items = [_take_files(v, folder, found) for v in value]
        return type(value)(items) if type(value) in (list, tuple) else value
    if isinstance(value, dict):
        return {k: _take_files(v, folder, found) for k, v in value.items()}
    return value


class RemoteClass(Generic[T]):
    """A class whose `.session(...)` builds one instance on a provider; calling the class
    itself (or `.local`) builds one here."""

    def __init__(self, cls: type[T], options: Options, *, idle_timeout: int = 300,
                 max_duration: int = 3600, concurrency: int = 1,
                 restart: bool = False, sample: float = 0.25) -> None:
        self.cls = cls
        self.options = options
        self.lease = Lease(idle_timeout, max_duration, concurrency, restart, sample)
        self.session = _Opener(self)
        self.avoid: Callable[[], set[str]] = set
        """Providers a session is not opened on (a pipeline's other stages), when others
        can hold it."""
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.cls(*args, **kwargs)

    def local(self, *args: Any, **kwargs: Any) -> T:
        """An instance here, in this process."""
        return self.cls(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside the sandbox the class is the plain class: node/ is not installed there.
        return (operator.itemgetter(0), ((self.cls,),))

    def __repr__(self) -> str:
        return f"<remote class {self.cls.__qualname__!r}>"

    def payload(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """CLASS_FILE's bytes: what the sandbox builds the object from."""
        return pickle_function(self.cls, (self.cls, args, kwargs))

    @asynccontextmanager
    async def _open(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                    ) -> AsyncIterator[RemoteInstance]:
        """A session on the best provider for the class's needs."""
        folder = Path(tempfile.mkdtemp(prefix="offload-session-"))
        try:
            class_file, host_file = folder / CLASS_FILE, folder / HOST_FILE
            found: dict[Path, Path] = {}
            args = _take_files(args, folder, found)
            kwargs = _take_files(kwargs, folder, found)
            try:
                class_file.write_bytes(self.payload(args, kwargs))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise UserError(f"cannot send {self.cls.__qualname__} and its arguments to "
                                f"a provider: {exc}; keep them picklable") from None
            host_file.write_bytes(host_bytes())
            files = tuple(found.values())
            job = dataclasses.replace(self.options.job, script=class_file, files=files,
                                      timeout=self.lease.max_duration)
            async with requester_for(self.options.session()) as r:
                ranked = await r.candidates(job)
                if not ranked:
                    raise NoProviders(f"no provider can hold a session of "
                                      f"{self.cls.__qualname__}; see `offload offers`")
                jr = r.request(job)
                request = SessionRequest(
                    class_file=class_file, host_file=host_file, files=files,
                    resources=jr.resources,
                    idle_timeout_s=self.lease.idle_timeout,
                    concurrency=self.lease.concurrency, max_price=jr.max_price,
                    runtime=jr.runtime, caps=jr.caps)
                tried: set[str] = set()

                def attempt() -> AbstractAsyncContextManager[RemoteSession]:
                    ads = [ad for ad, _ in ranked if ad.peer_id not in tried]
                    avoid = self.avoid()
                    ads = [ad for ad in ads if ad.peer_id not in avoid] or ads
                    if not ads:
                        raise NoProviders(f"no other provider can hold a session of "
                                          f"{self.cls.__qualname__}")
                    tried.add(ads[0].peer_id)
                    return open_session(r.core.host, ads[0], request,
                                        payments=r.core.payments, emit=r.emit,
                                        home=r.core.home,
                                        echo=_echo if self.options.echo else None)

                async with RemoteInstance.held(self.cls, attempt,
                                               restart=self.lease.restart) as instance:
                    if self.options.job.verify != "sample":
                        yield instance
                        return
                    async with RemoteInstance.held(self.cls, attempt,
                                                   restart=False) as checker:
                        instance.sampling = Sampling(
                            checker, attempt, self.lease.sample, self.options.job.tolerance)
                        yield instance
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _echo(stream: Literal["stdout", "stderr"], text: str) -> None:
    (sys.stdout if stream == "stdout" else sys.stderr).write(text)


class _Opener(Generic[T]):
    """`Chat.session(...)` (a `with` block) and `Chat.session.aio(...)` (`async with`)."""

    def __init__(self, rc: RemoteClass[T]) -> None:
        self._rc = rc

    def __call__(self, *args: Any, **kwargs: Any) -> SyncSession:
        return SyncSession(self._rc, args, kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> AbstractAsyncContextManager[RemoteInstance]:
        return self._rc._open(args, kwargs)


def idempotent(fn: F) -> F:
    """Mark a method safe to run twice: with `restart=True`, a call of it that was in
    flight when its session was lost runs again on the new session."""
    fn.__offload_idempotent__ = True  # type: ignore[attr-defined]
    return fn


Attempt = Callable[[], AbstractAsyncContextManager[RemoteSession]]


class RemoteInstance:
    """The object on the provider: each public method of the class, with `.aio`; a
    generator method's call iterates over its items as they come. With `restart`, a lost
    session is opened again on another provider (its constructor runs again) when a call
    meets the loss. The sessions are held by one task of their own (`held`), so a call
    can ask for the next one while the block goes on."""

    def __init__(self, cls: type, attempt: Attempt, *, restart: bool) -> None:
        self._cls = cls
        self._attempt = attempt
        self._restart = restart
        self._wake = trio.Event()
        self._next = trio.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self.restarts = 0
        self._abandoned = False
        self.sampling: Sampling | None = None
        self.caught = ""
        """Why this session takes no more calls: its provider was outvoted."""

    @classmethod
    @asynccontextmanager
    async def held(cls, of: type, attempt: Attempt, *,
                   restart: bool) -> AsyncIterator[RemoteInstance]:
        self = cls(of, attempt, restart=restart)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep)
                await self._next.wait()
                if self._error is None:
                    try:
                        yield self
                    except BaseException:
                        self.abandon()
                        raise
                    finally:
                        self._stopping = True
                        self._wake.set()
        except BaseExceptionGroup as group:
            err = sole_error(group)
            if err is None:
                raise
            raise err from None
        if self._error is not None:
            raise self._error

    async def _keep(self) -> None:
        """Hold one session at a time until the block ends; open the next when asked."""
        while True:
            self._wake = trio.Event()
            entered = False
            try:
                async with self._attempt() as session:
                    entered = True
                    self.session = session
                    self._next.set()
                    await self._wake.wait()
                    if self._abandoned:
                        with trio.CancelScope(shield=True):
                            await session.close(abandon=True)
            except (RemoteError, UserError) as exc:
                # a lost session's own end is expected when it is replaced; not opening
                # one, or the last one's end, is the block's error
                if self._stopping or not entered or not self._restart:
                    self._error = exc
            if self._stopping or self._error is not None:
                self._next.set()
                return

    def abandon(self) -> None:
        """The block ends on an error (Ctrl-C, say): the session ends at once, its calls
        in flight cut, and settles."""
        self._abandoned = True

    async def reopen(self, lost: SessionLost, session: RemoteSession) -> None:
        """`session` was lost: settled (at most its last checkpoint paid), a new one open
        (unless another call opened it already)."""
        if not self._restart:
            raise lost
        if session is self.session and not self._wake.is_set():
            log.warning("%s; opening the session again on another provider", lost)
            self._next = trio.Event()
            self._wake.set()
            self.restarts += 1
        await self._next.wait()
        if self._error is not None:
            raise self._error

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = getattr(self._cls, name, None)
        if not callable(fn):
            raise AttributeError(f"{self._cls.__qualname__} has no method {name!r}")
        if inspect.isgeneratorfunction(fn):
            return _StreamMethod(self, name)
        return CallMethod(self, name, getattr(fn, "__offload_idempotent__", False))


def _args(args: tuple[Any, ...], kwargs: dict[str, Any], method: str) -> bytes:
    try:
        data: bytes = cloudpickle.dumps((tuple(args), dict(kwargs)),
                                        protocol=pickle.DEFAULT_PROTOCOL)
        return data
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise UserError(f"cannot send the arguments of {method} to a provider: {exc}; "
                        "pass picklable values") from None


def _value(session: RemoteSession, data: bytes, error: bool) -> Any:
    returned = decode_return_bytes(data)
    if error or not returned.ok:
        if returned.ok:  # an error flag on a value: still an error
            raise ResultRejected("the provider flagged a returned value as an error")
        raise remote_error(returned, job_id=session.session_id, provider=session.ad.peer_id)
    return returned.value


class CallMethod:
    def __init__(self, instance: RemoteInstance, name: str, idempotent: bool) -> None:
        self._instance = instance
        self._name = name
        self._idempotent = idempotent

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from node.api.sync import portal

        return portal().run(functools.partial(self.aio, *args, **kwargs))

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        payload = _args(args, kwargs, self._name)
        inst = self._instance
        session = inst.session
        sent = session.calls.last_id
        if inst.caught:
            raise ResultRejected(inst.caught)
        try:
            data, error = await session.call(self._name, payload)
        except SessionLost as lost:
            await inst.reopen(lost, session)
            in_flight = session.calls.last_id != sent
            if in_flight and not self._idempotent:
                raise SessionLost(f"{lost}; the session was opened again on provider "
                                  f"{inst.session.ad.peer_id[:16]}, but {self._name} "
                                  "is not marked @idempotent, so it was not run "
                                  "again") from lost
            session = inst.session
            data, error = await session.call(self._name, payload)
        if inst.sampling is not None:
            await inst.sampling.check(inst, self._name, payload, data, error)
        return _value(session, data, error)


class Sampling:
    """verify="sample": a share of calls replayed on a second provider's session built
    with the same arguments (sound only for methods whose result depends on the
    constructor's and the call's arguments). A disagreement is settled by a third
    session, as a quorum would: the outvoted provider is not paid (its result goes back
    rejected) and, when it is the session's own, the session refuses further calls."""

    def __init__(self, checker: RemoteInstance, attempt: Attempt, share: float,
                 tolerance: float | None) -> None:
        self.checker: RemoteInstance | None = checker
        self.attempt = attempt
        self.share = share
        self.tolerance = tolerance
        self.rng = random.Random()
        self.checked = 0

    async def check(self, inst: RemoteInstance, method: str, payload: bytes, data: bytes,
                    error: bool) -> None:
        checker = self.checker
        if checker is None or self.rng.random() >= self.share:
            return
        try:
            other = await checker.session.call(method, payload)
        except SessionLost as exc:
            log.warning("the checking session was lost (%s); calls are no longer sampled",
                        exc)
            self.checker = None
            return
        self.checked += 1
        mine = (data, error)
        if _agree(mine, other, self.tolerance):
            return
        async with RemoteInstance.held(inst._cls, self.attempt, restart=False) as referee:
            third = await referee.session.call(method, payload)
            who = {"session": inst.session.ad.peer_id, "checker": checker.session.ad.peer_id,
                   "referee": referee.session.ad.peer_id}
            why = f"{method} disagreed between providers {who['session'][:16]} and " \
                  f"{who['checker'][:16]}; "
            if _agree(third, mine, self.tolerance):
                checker.session.outvote(why + "outvoted by a third provider")
                log.warning("%s: the checker was outvoted, not paid", why)
                self.checker = None
                return
            if _agree(third, other, self.tolerance):
                inst.session.outvote(why + "outvoted by a third provider")
                inst.caught = (f"provider {who['session'][:16]} returned a wrong result for "
                               f"{method} (outvoted by two other providers); it is not paid "
                               "and this session takes no more calls")
                raise ResultRejected(inst.caught)
            for s in (inst.session, checker.session, referee.session):
                s.outvote(why + "and a third provider agreed with neither")
            inst.caught = (f"three providers disagree on {method}; none is paid and this "
                           "session takes no more calls")
            raise ResultRejected(inst.caught)


def _agree(a: tuple[bytes, bool], b: tuple[bytes, bool], tolerance: float | None) -> bool:
    """Two replies alike: the same bytes, or within `tolerance` on every number."""
    if a == b:
        return True
    if tolerance is None or a[1] != b[1]:
        return False
    try:
        x, y = decode_return_bytes(a[0]), decode_return_bytes(b[0])
    except ReturnValueRejected:
        return False
    return x.ok == y.ok and x.ok and _close(x.value, y.value, tolerance)


def _close(x: Any, y: Any, tol: float) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y
    if isinstance(x, int | float) and isinstance(y, int | float):
        return math.isclose(x, y, rel_tol=tol, abs_tol=tol)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(_close(a, b, tol) for a, b in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k], tol) for k in x)
    if hasattr(x, "shape") and hasattr(y, "shape"):  # numpy arrays and torch tensors
        import numpy as np

        ax, ay = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        return ax.shape == ay.shape and bool(np.allclose(ax, ay, rtol=tol, atol=tol))
    return bool(x == y)


class _StreamMethod:
    def __init__(self, instance: RemoteInstance, name: str) -> None:
        self._instance = instance
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        from node.api.sync import portal

        items = self.aio(*args, **kwargs)
        p = portal()
        try:
            while True:
                try:
                    yield p.run(items.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            p.run(items.aclose)

    async def aio(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """Items as they come; a session lost mid-stream is not resumed (items already
        given cannot be taken back), a later call opens it again with `restart`."""
        payload = _args(args, kwargs, self._name)
        session = self._instance.session
        async with aclosing(session.stream(self._name, payload)) as items:
            try:
                async for data in items:
                    yield _value(session, data, False)
            except CallRaised as exc:
                _value(session, exc.value, True)


class SyncSession:
    """`with Chat.session(...) as chat:`: the session is held open by a task of the sync
    facade's loop until the block ends; errors of the close are raised from `__exit__`."""

    def __init__(self, rc: RemoteClass[Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self._rc = rc
        self._args = args
        self._kwargs = kwargs
        self._stop: trio.Event | None = None
        self._done: trio.Event | None = None
        self._error: list[BaseException] = []
        self._opened: list[RemoteInstance] = []

    def __enter__(self) -> RemoteInstance:
        from node.api.sync import portal

        p = portal()
        p.start()
        opened: list[RemoteInstance] = []

        async def enter() -> None:
            self._stop, self._done, ready = trio.Event(), trio.Event(), trio.Event()
            p.spawn(self._hold, ready, opened)
            await ready.wait()

        p.run(enter)
        if not opened:
            raise self._error[0]
        self._opened = opened
        return opened[0]

    async def _hold(self, ready: trio.Event, opened: list[RemoteInstance]) -> None:
        assert self._stop is not None and self._done is not None
        try:
            async with self._rc._open(self._args, self._kwargs) as instance:
                opened.append(instance)
                ready.set()
                await self._stop.wait()
        except (Exception, KeyboardInterrupt) as exc:
            self._error.append(exc)
        finally:
            ready.set()
            self._done.set()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        from node.api.sync import portal

        stop, done = self._stop, self._done
        if stop is None or done is None:
            return

        async def leave() -> None:
            if exc is not None and self._opened:
                self._opened[0].abandon()
            stop.set()
            await done.wait()

        portal().run(leave)
        if self._error and exc is None:
            raise self._error[0]
