"""py-libp2p without the transports we never use: QUIC, WebSocket, WebTransport, AutoTLS.

`import libp2p` imports all of them (aioquic among them): about half of its import time,
paid by every CLI process that opens a host. `install()` puts a finder first on
sys.meta_path that answers those packages with empty stand-ins: a capitalised name in one
is a class of its own (so `isinstance`, `except` and annotations that name it still
work, and never match), any other name a function that returns False. Nothing of ours
dials or listens on those transports (every address we use is /tcp, or a relay circuit
over it); a process that imported the real modules first keeps them.

Modules we may need but rarely do (RSA keys and pycryptodome, secio, PSK, mDNS and
zeroconf, libp2p's Prometheus metrics and prometheus_client, the DNS resolver and
dnspython) are `Deferred`: the finder answers them with a module whose listed names load
the real one on first use (a call, a class attribute, an `isinstance`), so a peer with an
RSA key or a /dns4 address still works.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

ABSENT = ("libp2p.transport.quic", "libp2p.transport.websocket",
          "libp2p.transport.webtransport", "libp2p.security.tls.autotls", "aioquic")


class SwarmEvent:
    """libp2p.metrics.swarm.SwarmEvent, a plain record, without its module's prometheus_client
    (tests check it against the real one)."""

    peer_id: str | None = None
    conn_incoming: bool = False
    conn_incoming_error: bool = False
    dial_attempt: bool = False
    dial_attempt_error: bool = False


CLASS, LAZY, FUNCTION = "class", "lazy", "function"
DEFERRED: dict[str, dict[str, object]] = {
    "libp2p.crypto.rsa": {"RSAPrivateKey": CLASS, "RSAPublicKey": CLASS,
                          "create_new_key_pair": FUNCTION},
    "libp2p.security.pnet.psk_conn": {"PskConn": CLASS},
    "libp2p.security.secio.transport": {"Transport": CLASS},
    "libp2p.discovery.mdns": {},
    "libp2p.discovery.mdns.mdns": {"MDNSDiscovery": CLASS, "create_mdns_discovery": FUNCTION},
    "libp2p.metrics.swarm": {"SwarmEvent": SwarmEvent},
    "libp2p.rcmgr.prometheus_exporter": {"PrometheusExporter": CLASS,
                                         "create_prometheus_exporter": FUNCTION},
    "multiaddr.resolvers.dns": {"DNSResolver": LAZY, "DNSADDR_TXT_PREFIX": "dnsaddr="},
}
"""Per deferred module, its names that do not load it: a kind (CLASS: a `Later` class,
LAZY: one whose instances are made on first use too; FUNCTION), or the value itself."""


class Absent(types.ModuleType):
    """A stand-in module: every public name is made on first use, and never does anything."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        made: Any
        if name[:1].isupper():
            made = type(name, (Exception,), {"__module__": self.__name__})
        else:
            def made(*args: Any, **kwargs: Any) -> bool:
                return False
            made.__name__ = made.__qualname__ = name
        setattr(self, name, made)
        return made


_loading = threading.RLock()


class Deferred(types.ModuleType):
    """A stand-in whose listed names load the real module (`real`) when first used;
    any other name loads it at once."""

    def __init__(self, name: str, spec: importlib.machinery.ModuleSpec) -> None:
        super().__init__(name)
        self._spec = spec
        self._real: types.ModuleType | None = None

    def real(self) -> types.ModuleType:
        """The real module, executed once (visible while it runs, as in sys.modules)."""
        with _loading:
            if self._real is None:
                module = importlib.util.module_from_spec(self._spec)
                assert self._spec.loader is not None
                self._real = module
                try:
                    self._spec.loader.exec_module(module)
                except BaseException:
                    self._real = None
                    raise
            return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        kind = DEFERRED[self.__name__].get(name)
        made: Any
        if kind in (CLASS, LAZY):
            made = Later(name, (), {"_module": self, "_lazy": kind == LAZY,
                                    "__module__": self.__name__})
        elif kind == FUNCTION:
            def made(*args: Any, **kwargs: Any) -> Any:
                return getattr(self.real(), name)(*args, **kwargs)
            made.__name__ = made.__qualname__ = name
        elif kind is not None:
            made = kind
        else:
            made = getattr(self.real(), name)
        setattr(self, name, made)
        return made


class Later(type):
    """A deferred class: its attributes are taken as methods of the real class, called
    there; calling it makes a real instance (a lazy one's is an `Instance`)."""

    _module: Deferred
    _lazy: bool

    def real(cls) -> Any:
        return getattr(cls._module.real(), cls.__name__)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return getattr(cls.real(), name)(*args, **kwargs)
        return method

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return Instance(cls, args, kwargs) if cls._lazy else cls.real()(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        if isinstance(obj, Instance):
            return obj._of is cls
        return isinstance(obj, cls.real())

    def __subclasscheck__(cls, sub: type) -> bool:
        return sub is cls or issubclass(sub, cls.real())


class Instance:
    """An instance of a lazy `Later` class, made the first time one of its attributes is
    read."""

    def __init__(self, of: Later, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._of, self._args, self._kwargs = of, args, kwargs
        self._made: Any = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_of", "_args", "_kwargs", "_made"):
            raise AttributeError(name)
        if self._made is None:
            self._made = self._of.real()(*self._args, **self._kwargs)
        return getattr(self._made, name)


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if any(fullname == a or fullname.startswith(a + ".") for a in ABSENT):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname in DEFERRED:
            real = importlib.machinery.PathFinder.find_spec(fullname, path)
            if real is not None:
                spec = importlib.machinery.ModuleSpec(fullname, self, loader_state=real)
                spec.submodule_search_locations = real.submodule_search_locations
                return spec
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.loader_state is not None:
            deferred = Deferred(spec.name, spec.loader_state)
            if spec.submodule_search_locations is not None:
                deferred.__path__ = list(spec.submodule_search_locations)
            return deferred
        module = Absent(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder())
