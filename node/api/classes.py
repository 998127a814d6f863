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
import operator
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import cloudpickle
import trio

from node.api.session_host import host_bytes
from node.api.shared import pickle_function, requester_for
from node.api.values import decode_return_bytes, remote_error
from node.errors import CallRaised, NoProviders, ResultRejected, UserError
from node.requester.sessions import RemoteSession, SessionRequest, open_session
from protocol.sessions import CLASS_FILE, HOST_FILE, MAX_CONCURRENCY, MAX_IDLE_S

if TYPE_CHECKING:
    from node.api.remote import Options

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A session's own settings, besides the @remote ones."""

    idle_timeout: int = 300
    max_duration: int = 3600
    concurrency: int = 1

    def __post_init__(self) -> None:
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
                 max_duration: int = 3600, concurrency: int = 1) -> None:
        self.cls = cls
        self.options = options
        self.lease = Lease(idle_timeout, max_duration, concurrency)
        self.session = _Opener(self)
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
                class_file.write_bytes(pickle_function(self.cls, (self.cls, args, kwargs)))
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
                ad = ranked[0][0]
                jr = r.request(job)
                request = SessionRequest(
                    class_file=class_file, host_file=host_file, files=files,
                    resources=jr.resources,
                    idle_timeout_s=self.lease.idle_timeout,
                    concurrency=self.lease.concurrency, max_price=jr.max_price,
                    runtime=jr.runtime, caps=jr.caps)
                async with open_session(r.core.host, ad, request, payments=r.core.payments,
                                        emit=r.emit, home=r.core.home,
                                        echo=_echo if self.options.echo else None) as s:
                    yield RemoteInstance(self.cls, s)
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


class RemoteInstance:
    """The object on the provider: each public method of the class, with `.aio`; a
    generator method's call iterates over its items as they come."""

    def __init__(self, cls: type, session: RemoteSession) -> None:
        self._cls = cls
        self.session = session

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = getattr(self._cls, name, None)
        if not callable(fn):
            raise AttributeError(f"{self._cls.__qualname__} has no method {name!r}")
        if inspect.isgeneratorfunction(fn):
            return _StreamMethod(self.session, name)
        return _CallMethod(self.session, name)


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


class _CallMethod:
    def __init__(self, session: RemoteSession, name: str) -> None:
        self._session = session
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from node.api.sync import portal

        return portal().run(functools.partial(self.aio, *args, **kwargs))

    async def aio(self, *args: Any, **kwargs: Any) -> Any:
        data, error = await self._session.call(self._name, _args(args, kwargs, self._name))
        return _value(self._session, data, error)


class _StreamMethod:
    def __init__(self, session: RemoteSession, name: str) -> None:
        self._session = session
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
        payload = _args(args, kwargs, self._name)
        async with aclosing(self._session.stream(self._name, payload)) as items:
            try:
                async for data in items:
                    yield _value(self._session, data, False)
            except CallRaised as exc:
                _value(self._session, exc.value, True)


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
            stop.set()
            await done.wait()

        portal().run(leave)
        if self._error and exc is None:
            raise self._error[0]
