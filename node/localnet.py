"""Local networks of real node processes: N `offload provide` daemons on loopback.

One launcher for `offload demo`, the e2e tests and the benchmarks. Each provider gets a
home under the net's root, a ready file, a log, and its own process group; `close()`
stops every process it started (SIGTERM, then SIGKILL of the whole group after a grace
period) and reaps it, pass or fail.

    with LocalNet(root) as net:
        first = net.start()
        net.start(bootstrap=first.addr, extra=["--slots", "1"])
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from node.errors import ProviderDidNotStart as ProviderDidNotStart

TREE = Path(__file__).resolve().parents[1]
"""The code tree these processes import `node` from (the one this module came from)."""
LOOPBACK = "/ip4/127.0.0.1/tcp/0"
READY_TIMEOUT_S = 90.0
KEEP_ENV = ("OFFLOAD_LOG",)


def clean_env(extra: Mapping[str, str] | None = None,
              keep: Sequence[str] = KEEP_ENV) -> dict[str, str]:
    """This process's environment without OFFLOAD_* settings (but `keep`), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OFFLOAD_") or k in keep}
    return env | dict(extra or {})


@dataclasses.dataclass
class LocalProvider:
    """One provider process and what its ready file said (peer_id, addrs, ...)."""

    name: str
    home: Path
    ready_file: Path
    log: Path
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]

    @property
    def addr(self) -> str:
        return str(self.info["addrs"][0])

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])


class LocalNet:
    """Node processes of one code tree under `root`; every one is stopped by `close()`."""

    def __init__(self, root: Path, *, tree: Path = TREE, env: Mapping[str, str] | None = None,
                 ready_timeout_s: float = READY_TIMEOUT_S, grace_s: float = 5.0) -> None:
        self.root = root
        self.tree = tree
        self.env = clean_env(env) | {"PYTHONPATH": str(tree)}
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        """How long close() waits after SIGTERM before it kills a group (0: kill at once)."""
        self.providers: list[LocalProvider] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> LocalNet:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def command(self, home: Path, *args: str, entry: Sequence[str] = ("node",)) -> list[str]:
        return [sys.executable, "-m", *entry, "--home", str(home), *args]

    def spawn(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              **popen: Any) -> subprocess.Popen[Any]:
        """Start `cmd` in its own process group (cwd: the root), stopped by close()."""
        popen.setdefault("cwd", self.root)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            list(cmd), start_new_session=True, env=self.env | dict(env or {}), **popen)
        self.procs.append(proc)
        return proc

    def start(self, name: str | None = None, *, home: Path | None = None,
              bootstrap: str | Sequence[str] = (), extra: Sequence[str] = (),
              config: str | None = None, env: Mapping[str, str] | None = None,
              benchmark: bool = False, entry: Sequence[str] = ("node",),
              listen: str = LOOPBACK, wrap: Sequence[str] = ()) -> LocalProvider:
        """Start one provider and wait for its ready file. `config` is provider.toml text;
        `entry` the module run with -m (tests use a faulty one); `home` defaults to
        root/name, so a name reused after stop() restarts the same provider; `wrap`
        prefixes the command (`ip netns exec NS`)."""
        name = name or f"p{len(self.providers) + 1}"
        home = home or self.root / name
        ready, log = self.root / f"{name}.ready", self.root / f"{name}.log"
        ready.unlink(missing_ok=True)
        args = ["provide", "--listen", listen, "--ready-file", str(ready)]
        for addr in [bootstrap] if isinstance(bootstrap, str) else bootstrap:
            args += ["--bootstrap", addr]
        if config is not None:
            toml = self.root / f"{name}.toml"
            toml.write_text(config)
            args += ["--config", str(toml)]
        args += extra
        if not benchmark:  # a few CPU-seconds per provider: only where one looks at it
            args.append("--no-benchmark")
        provider = self._launch(name, home, ready, log, args, entry=entry, env=env, wrap=wrap)
        self.providers.append(provider)
        return provider

    def relay(self, name: str, *, bootstrap: str | Sequence[str] = (),
              listen: str = LOOPBACK, wrap: Sequence[str] = (),
              extra: Sequence[str] = ()) -> LocalProvider:
        """Start `offload relay` (circuit relay v2, AutoNAT, DHT server) and wait for it."""
        ready, log = self.root / f"{name}.ready", self.root / f"{name}.log"
        ready.unlink(missing_ok=True)
        args = ["relay", "--listen", listen, "--ready-file", str(ready), *extra]
        for addr in [bootstrap] if isinstance(bootstrap, str) else bootstrap:
            args += ["--bootstrap", addr]
        return self._launch(name, self.root / name, ready, log, args, wrap=wrap)

    def _launch(self, name: str, home: Path, ready: Path, log: Path, args: Sequence[str], *,
                entry: Sequence[str] = ("node",), env: Mapping[str, str] | None = None,
                wrap: Sequence[str] = ()) -> LocalProvider:
        with log.open("wb") as out:
            proc = self.spawn([*wrap, *self.command(home, *args, entry=entry)], env=env,
                              stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return LocalProvider(name=name, home=home, ready_file=ready, log=log, proc=proc,
                             info=self._wait_ready(name, ready, proc, log))

    def chain(self, n: int, **kwargs: Any) -> list[LocalProvider]:
        """`n` providers, each bootstrapping from the one started before it."""
        started: list[LocalProvider] = []
        for _ in range(n):
            started.append(self.start(bootstrap=started[-1].addr if started else (),
                                      **kwargs))
        return started

    def _wait_ready(self, name: str, ready: Path, proc: subprocess.Popen[Any],
                    log: Path) -> dict[str, Any]:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if ready.exists():
                try:
                    info: dict[str, Any] = json.loads(ready.read_text())
                    return info
                except ValueError:  # written but not yet complete
                    pass
            if proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        tail = log.read_text(errors="replace")[-4000:]
        why = (f"exited with {proc.returncode}" if proc.poll() is not None
               else f"was not ready within {self.ready_timeout_s:.0f} s")
        stop(proc, grace_s=0)
        raise ProviderDidNotStart(f"local provider {name} {why} (log {log}):\n{tail}")

    def stop(self, provider: LocalProvider, *, grace_s: float | None = None) -> None:
        stop(provider.proc, grace_s=self.grace_s if grace_s is None else grace_s)

    def close(self) -> None:
        """Stop every process started here: SIGTERM to each group, SIGKILL after the
        grace period, then reap."""
        stop_all(self.procs, grace_s=self.grace_s)


def stop(proc: subprocess.Popen[Any], *, grace_s: float) -> None:
    stop_all([proc], grace_s=grace_s)


def stop_all(procs: Sequence[subprocess.Popen[Any]], *, grace_s: float) -> None:
    live = [p for p in procs if p.poll() is None]
    if grace_s > 0:
        for p in live:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in live:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs:  # the group too: a daemon's helpers must not outlive it
        _signal_group(p, signal.SIGKILL)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def local_providers(n: int, root: Path, **kwargs: Any) -> Iterator[list[LocalProvider]]:
    """`n` providers in a bootstrap chain under `root`; all stopped on exit."""
    with LocalNet(root) as net:
        yield net.chain(n, **kwargs)
