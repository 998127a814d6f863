"""`@remote`: a Python function that runs on a provider as if it were called here.

    @remote(cpus=2, max_price=0.5)
    def square(x: int) -> int:
        return x * x

    square.remote(7)              # 49, computed on a provider (sync facade, node.api.sync)
    list(square.map(range(10)))   # split across providers, in input order
    square.local(7)               # here; square(7) too
    await square.remote.aio(7)    # in trio code (uses the open Requester, if any)
    square.call(7).outputs        # the whole verified Result: files from ./out/, price...

The function and its arguments are cloudpickled into input files that only the job's
sandbox unpickles (node.api.values.WRAPPER is the entrypoint); the return value comes back
as strict msgpack, never as a pickle. Session settings (home, bootstrap, config, out)
come from the decorator's arguments, else OFFLOAD_* variables, else requester.toml.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

import cloudpickle
import trio

from node.api.requester import Job, Requester, Result, Verify
from node.api.shared import pickle_function as pickle_function
from node.api.shared import requester_for
from node.api.values import (
    ARGS_FILE,
    FUNCTION_FILE,
    RETURN_FILE,
    WRAPPER,
    WRAPPER_NAME,
    RemoteFunctionError,
    decode_return,
    remote_error,
)
from node.errors import RemoteError, UserError, sole_error
from node.requester import events
from scheduler.decide import LOCAL

if TYPE_CHECKING:
    from node.api.classes import RemoteClass

log = logging.getLogger(__name__)
C = TypeVar("C")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


NEEDS = ("gpus", "cpus", "memory_gb", "disk_gb", "timeout", "max_price", "redundancy",
         "verify", "tolerance", "where", "runtime", "gflop", "include", "packages")
"""The fields of the one job description (node.requester.session.Job) @remote takes."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Per-function settings: the job's needs (a Job with no script yet), and the
    session it runs in."""

    job: Job = dataclasses.field(default_factory=lambda: Job(""))
    workers: int = 4
    plan: bool = False
    """map: let the offload plan keep a share of the items here (set gflop= for it)."""
    echo: bool = True
    """Print the remote stdout here (a call's as it runs, a map's in input order at the
    end), and the stderr of successful calls when they return."""
    include_imports: bool = False
    """Also ship the local modules and packages the function's module imports
    (node.requester.include.local_imports); what ships is printed once (echo) and logged."""
    home: str | None = None
    bootstrap: tuple[str, ...] | None = None
    config: str | None = None
    out: str = "offload-out"
    keep_warm: int = 0
    """Seconds a session holding the function stays open after its last call (0: each
    call is a job); node.api.warm."""

    @classmethod
    def of(cls, **settings: Any) -> Options:
        """`remote()`'s keywords: the needs go to the job, the rest to the session."""
        needs = {k: settings.pop(k) for k in NEEDS if k in settings}
        for key in ("include", "packages"):
            if isinstance(needs.get(key), (str, os.PathLike)):
                needs[key] = (needs[key],)
            if key in needs:
                needs[key] = tuple(needs[key])
        for name in settings:
            if name not in _SESSION:
                raise TypeError(f"remote() got an unexpected keyword argument {name!r}")
        return cls(job=Job("", python=PYTHON, **needs), **settings)

    def session(self) -> dict[str, Any]:
        """The keyword arguments of the Requester these calls open (when none is open)."""
        return {"home": self.home, "bootstrap": self.bootstrap, "config": self.config,
                "out": self.out, "workers": self.workers}


_SESSION = frozenset(f.name for f in dataclasses.fields(Options)) - {"job"}
MAX_KEEP_WARM_S = 3600
_LEASE = ("idle_timeout", "max_duration", "concurrency", "restart", "sample")
"""@remote's settings for classes only (node.api.classes)."""


class _Method(Generic[P, T]):
    """A method with a blocking call (through node.api.sync) and an `aio` coroutine."""

    def __init__(self, run: Callable[..., Awaitable[T]], doc: str) -> None:
        self._run = run
        self.__doc__ = doc

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        from node.api.sync import portal

        return portal().run(self._run, args, kwargs)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(args, kwargs)


class _MapMethod(Generic[R]):
    def __init__(self, fn: RemoteFunction[Any, R]) -> None:
        self._fn = fn

    @overload
    def __call__(self, *iterables: Iterable[Any],
                 return_exceptions: Literal[False] = False) -> Iterator[R]: ...

    @overload
    def __call__(self, *iterables: Iterable[Any],
                 return_exceptions: Literal[True]) -> Iterator[R | Exception]: ...

    def __call__(self, *iterables: Iterable[Any], return_exceptions: bool = False
                 ) -> Iterator[R | Exception]:
        """Results in input order (like the builtin map, one argument per iterable)."""
        from node.api.sync import portal

        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (args, {}) for args in zip(*iterables, strict=False)]
        yield from portal().run(self._fn._map, calls, return_exceptions)

    @overload
    def aio(self, *iterables: Iterable[Any],
            return_exceptions: Literal[False] = False) -> AsyncIterator[R]: ...

    @overload
    def aio(self, *iterables: Iterable[Any],
            return_exceptions: Literal[True]) -> AsyncIterator[R | Exception]: ...

    async def aio(self, *iterables: Iterable[Any], return_exceptions: bool = False
                  ) -> AsyncIterator[R | Exception]:
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            (args, {}) for args in zip(*iterables, strict=False)]
        for value in await self._fn._map(calls, return_exceptions):
            yield value


class RemoteFunction(Generic[P, R]):
    """A function with `.remote`, `.map`, `.call` (on providers) and `.local` (here)."""

    def __init__(self, fn: Callable[P, R], options: Options, *, concurrency: int = 1,
                 sample: float = 0.25) -> None:
        self.fn = fn
        self.options = options
        self._shipped: tuple[Path, ...] | None = None
        self._warm: RemoteClass[Any] | None = None
        if options.keep_warm:
            from node.api.warm import function_class

            self._warm = function_class(fn, options, keep_warm=options.keep_warm,
                                        concurrency=concurrency, sample=sample)
        functools.update_wrapper(self, fn)
        self.remote: _Method[P, R] = _Method(self._remote, "Run on a provider; the value.")
        self.call: _Method[P, Result] = _Method(self._call, "Run on a provider; the Result.")
        self.map: _MapMethod[R] = _MapMethod(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run it here, in this process."""
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside the sandbox a pickled RemoteFunction (say, a global the function uses)
        # is the plain function: node/ is not installed there.
        return (operator.itemgetter(0), ((self.fn,),))

    def __repr__(self) -> str:
        return f"<remote function {getattr(self.fn, '__qualname__', self.fn)!r}>"

    # the calls ------------------------------------------------------------------------
    async def _remote(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        if self._warm is not None:
            async with self._session() as r:
                warm_value: R = await self._warm_call(r, args, kwargs)
                return warm_value
        result = await self._call(args, kwargs)
        value: R = result.value
        return value

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Result:
        with _staged(self.fn, [(args, kwargs)]) as (jobs_files, _):
            async with self._session() as r:
                live = _Live(self.options.echo)
                unsubscribe = r.subscribe(live)
                try:
                    result = await r.submit(self._job(*jobs_files[0]))
                finally:
                    unsubscribe()
        return self._finish(result, live)

    async def _map(self, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
                   return_exceptions: bool) -> list[R | Exception]:
        if not calls:
            return []
        if self._warm is not None:
            return await self._warm_map(calls, return_exceptions)
        out: list[R | Exception | None] = [None] * len(calls)
        with _staged(self.fn, calls) as (jobs_files, _):
            async with self._session() as r:
                here = await self._planned_here(r, jobs_files[0], len(calls))
                away = len(calls) - here

                async def remotely() -> None:
                    got = await r.map([self._job(*f) for f in jobs_files[:away]],
                                      workers=self.options.workers,
                                      return_exceptions=return_exceptions)
                    for i, item in enumerate(got):
                        out[i] = item if isinstance(item, RemoteError) else self._value(
                            item, return_exceptions)

                async def locally() -> None:
                    for i in range(away, len(calls)):
                        args, kwargs = calls[i]
                        try:
                            out[i] = await trio.to_thread.run_sync(
                                functools.partial(self.fn, *args, **kwargs))
                        except Exception as exc:
                            if not return_exceptions:
                                raise
                            out[i] = exc

                try:
                    async with trio.open_nursery() as nursery:
                        if away:
                            nursery.start_soon(remotely)
                        if here:
                            nursery.start_soon(locally)
                except BaseExceptionGroup as group:
                    raise (sole_error(group) or group) from None
        return out  # type: ignore[return-value]  # every slot is filled by now

    async def _warm_call(self, r: Requester, args: tuple[Any, ...],
                         kwargs: dict[str, Any]) -> Any:
        from node.api.warm import call

        assert self._warm is not None
        return await call(r, self, self._warm, self.options.keep_warm, args, kwargs)

    async def _warm_map(self, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
                        return_exceptions: bool) -> list[R | Exception]:
        """Every call on the one warm session, as many at once as its concurrency."""
        assert self._warm is not None
        out: list[Any] = [None] * len(calls)
        limiter = trio.CapacityLimiter(self._warm.lease.concurrency)

        async def one(r: Requester, i: int) -> None:
            async with limiter:
                try:
                    out[i] = await self._warm_call(r, *calls[i])
                except (RemoteError, RemoteFunctionError) as exc:
                    if not return_exceptions:
                        raise
                    out[i] = exc

        async with self._session() as r:
            try:
                async with trio.open_nursery() as nursery:
                    for i in range(len(calls)):
                        nursery.start_soon(one, r, i)
            except BaseExceptionGroup as group:
                raise (sole_error(group) or group) from None
        return out

    async def _planned_here(self, r: Requester, files: tuple[Path, Path, Path],
                            items: int) -> int:
        """How many items the offload plan keeps on this machine (0 unless plan=True)."""
        if not self.options.plan:
            return 0
        plan = await r.plan(self._job(*files), items=items)
        here = sum(p.items for p in plan.chosen.parts if p.peer == LOCAL)
        log.info("map of %d item(s): %s, %d here (%s)", items, plan.decision, here,
                 plan.reason)
        return min(here, items)

    def _value(self, result: Result, return_exceptions: bool) -> R | Exception:
        try:
            value: R = self._finish(result).value
            return value
        except (RemoteError, RemoteFunctionError) as exc:
            if not return_exceptions:
                raise
            return exc

    def _session(self) -> AbstractAsyncContextManager[Requester]:
        return requester_for(self.options.session())

    def _job(self, wrapper: Path, fn_file: Path, args_file: Path) -> Job:
        job = self.options.job
        return dataclasses.replace(job, script=wrapper, files=(fn_file, args_file),
                                   include=(*job.include, *self.shipped))

    @property
    def shipped(self) -> tuple[Path, ...]:
        """What include_imports found to ship (besides `include`), found at the first call."""
        if self._shipped is None:
            self._shipped = ()
            module = sys.modules.get(getattr(self.fn, "__module__", "") or "")
            if self.options.include_imports and module is not None:
                from node.requester.include import local_imports

                given = {Path(p).resolve() for p in self.options.job.include}
                self._shipped = tuple(p for p in local_imports(module)
                                      if p.resolve() not in given)
                what = ", ".join(p.name + ("/" if p.is_dir() else "") for p in self._shipped)
                line = (f"offload: {self.fn.__qualname__} ships its local imports: "
                        f"{what or 'none found'}")
                log.info(line)
                if self.options.echo:
                    print(line, file=sys.stderr)
        return self._shipped

    def _finish(self, result: Result, live: _Live | None = None) -> Result:
        """Decode the return value (strictly); raise the remote exception if there was one."""
        path = result.out_dir / RETURN_FILE
        if not path.exists():
            result.check()  # a timeout or a limit: JobFailed says which
        returned = decode_return(path)
        if self.options.echo:
            if rest := live.rest(result) if live is not None else result.stdout:
                sys.stdout.write(rest)
            if returned.ok and result.stderr:
                sys.stderr.write(result.stderr)
        if not returned.ok:
            raise remote_error(returned, job_id=result.job_id, provider=result.provider)
        outputs = {k: v for k, v in result.outputs.items() if k != RETURN_FILE}
        return dataclasses.replace(result, value=returned.value, outputs=outputs)


class _Live:
    """A call's stdout printed here while it runs (from the first job that streams any:
    a replica or a retry may stream too); `rest` is what the result holds beyond it."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.job: str | None = None
        self.shown = ""

    def __call__(self, ev: events.Event) -> None:
        if (self.echo and isinstance(ev, events.LogLine) and ev.stream == "stdout"
                and self.job in (None, ev.job_id)):
            self.job = ev.job_id
            self.shown += ev.text
            sys.stdout.write(ev.text)
            sys.stdout.flush()

    def rest(self, result: Result) -> str:
        if result.job_id != self.job:
            return result.stdout
        if self.shown.startswith(result.stdout):  # the capped result holds no more
            return ""
        if result.stdout.startswith(self.shown):
            return result.stdout[len(self.shown):]
        return result.stdout


@functools.lru_cache(maxsize=1)
def _wrapper_bytes() -> bytes:
    return WRAPPER.encode()


class _staged:
    """A temp dir with the wrapper, the pickled function and one args file per call."""

    def __init__(self, fn: Callable[..., Any],
                 calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.fn = fn
        self.calls = calls

    def __enter__(self) -> tuple[list[tuple[Path, Path, Path]], Path]:
        self.dir = Path(tempfile.mkdtemp(prefix="offload-remote-"))
        try:
            wrapper = self.dir / WRAPPER_NAME
            wrapper.write_bytes(_wrapper_bytes())
            fn_file = self.dir / FUNCTION_FILE
            try:
                fn_file.write_bytes(pickle_function(self.fn))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                raise UserError(f"cannot send {getattr(self.fn, '__qualname__', self.fn)} "
                                f"to a provider: {exc}; keep what it uses picklable (no "
                                "open files, locks or sockets)") from None
            jobs = []
            for i, (args, kwargs) in enumerate(self.calls):
                d = self.dir / str(i)
                d.mkdir()
                try:
                    (d / ARGS_FILE).write_bytes(cloudpickle.dumps(
                        (tuple(args), dict(kwargs)), protocol=pickle.DEFAULT_PROTOCOL))
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    raise UserError(f"cannot send the arguments of call {i} to a provider: "
                                    f"{exc}; pass picklable values") from None
                jobs.append((wrapper, fn_file, d / ARGS_FILE))
            return jobs, self.dir
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _Decorator(Protocol):
    @overload
    def __call__(self, fn: type[C], /) -> RemoteClass[C]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(self, fn: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def remote(fn: type[C], /) -> RemoteClass[C]: ...  # type: ignore[overload-overlap]


@overload
def remote(fn: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def remote(*, gpus: int = 0, cpus: int = 1, memory_gb: float = 2.0, disk_gb: float = 1.0,
           timeout: int | None = None, max_price: float | None = None, redundancy: int = 1,
           verify: Verify = "none", tolerance: float | None = None, where: str | None = None,
           runtime: str | None = None, gflop: float | None = None,
           include: Sequence[str | os.PathLike[str]] = (), include_imports: bool = False,
           packages: Sequence[str] = (), workers: int = 4,
           plan: bool = False, echo: bool = True, home: str | os.PathLike[str] | None = None,
           bootstrap: Sequence[str] | None = None,
           config: str | os.PathLike[str] | None = None,
           out: str | os.PathLike[str] = "offload-out", idle_timeout: int = 300,
           max_duration: int = 3600, concurrency: int = 1,
           restart: bool = False, sample: float = 0.25, keep_warm: int = 0) -> _Decorator: ...


def remote(fn: Any = None, /, **settings: Any) -> Any:
    """Make `fn` offloadable: `@remote` or `@remote(gpus=1, max_price=2.0, ...)`.

    gpus, cpus, memory_gb, disk_gb, timeout (s), max_price (credits), where, runtime: what
    each call needs. redundancy, verify, tolerance: how its result is checked. workers:
    most providers a map uses; plan: a map asks the offload plan (`offload plan`) and
    runs the share it keeps here in this process (gflop: one call's size, for the plan).
    include: local .py modules and package folders that travel with each call (cached by
    the provider); include_imports=True also ships the local modules the function's module
    imports, and prints what it ships. packages: what the provider's runtime must have
    ("torch", "numpy>=2"); no provider has one: NeedsUnmet names it, before any job runs.
    home, bootstrap, config, out: the session, as the CLI's --home/--bootstrap/--config
    (OFFLOAD_HOME, OFFLOAD_BOOTSTRAP, OFFLOAD_REQUESTER_CONFIG).

    On a class, it gives a RemoteClass (node.api.classes): `with Chat.session(...) as
    chat:` builds one object on a provider and calls its methods there; idle_timeout and
    max_duration (s) bound the lease, concurrency is how many calls may run at once;
    restart: a lost session is opened again on another provider (the constructor runs
    again) and a call in flight is retried if its method is marked `@idempotent`;
    verify="sample" replays a `sample` share of calls on a second provider's session.

    keep_warm (s), on a function: its calls are served by one session kept open on a
    provider until keep_warm seconds after the last call (node.api.warm): milliseconds a
    call instead of a fresh sandbox each; `concurrency` calls at once (map uses it too);
    verify "none" or "sample". `.call()` still runs each call as a job.
    """
    lease = {k: settings.pop(k) for k in _LEASE if k in settings}
    for key in ("home", "config", "out"):
        if settings.get(key) is not None:
            settings[key] = os.fspath(settings[key])
    if settings.get("bootstrap") is not None:
        if isinstance(settings["bootstrap"], str):
            settings["bootstrap"] = (settings["bootstrap"],)
        settings["bootstrap"] = tuple(settings["bootstrap"])
    try:
        options = Options.of(**settings)
    except TypeError as exc:
        raise UserError(f"@remote: {exc}; see help(node.api.remote)") from None
    job = options.job
    if job.redundancy < 1 or job.cpus < 1 or job.gpus < 0:
        raise UserError("@remote: cpus and redundancy must be at least 1, gpus at least 0")

    def wrap(f: Any) -> Any:
        if isinstance(f, type):
            from node.api.classes import RemoteClass

            if job.include or job.packages or options.include_imports:
                raise UserError("@remote: include, include_imports and packages are for "
                                "functions (a class's session does not take them yet)")
            if options.keep_warm:
                raise UserError("@remote: keep_warm is for functions; a class's session "
                                "stays open for its block (idle_timeout bounds it)")
            return RemoteClass(f, options, **lease)
        if options.keep_warm:
            if job.include or options.include_imports:
                raise UserError("@remote: include and include_imports are for jobs, not "
                                "keep_warm sessions (yet)")
            if not 0 < options.keep_warm <= MAX_KEEP_WARM_S:
                raise UserError(f"@remote: keep_warm must be 1 .. {MAX_KEEP_WARM_S} s")
            if job.verify not in ("none", "sample") or job.redundancy > 1:
                raise UserError("@remote: a keep_warm function takes verify=\"none\" or "
                                "\"sample\" (its calls are session calls), not redundancy")
            warm_only = {"concurrency", "sample"}
        else:
            warm_only = set()
        if set(lease) - warm_only:
            raise UserError(f"@remote: {', '.join(sorted(set(lease) - warm_only))} are for "
                            "classes (sessions), not functions")
        return RemoteFunction(f, options, **lease)

    return wrap(fn) if fn is not None else wrap
