"""py-libp2p without the transports we never use: QUIC, WebSocket, WebTransport, AutoTLS.

`import libp2p` imports all of them (aioquic among them): about half of its import time,
paid by every CLI process that opens a host. `install()` puts a finder first on
sys.meta_path that answers those packages with empty stand-ins: a capitalised name in one
is a class of its own (so `isinstance`, `except` and annotations that name it still
work, and never match), any other name a function that returns False. Nothing of ours
dials or listens on those transports (every address we use is /tcp, or a relay circuit
over it); a process that imported the real modules first keeps them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

ABSENT = ("libp2p.transport.quic", "libp2p.transport.websocket",
          "libp2p.transport.webtransport", "libp2p.security.tls.autotls", "aioquic")


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


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if any(fullname == a or fullname.startswith(a + ".") for a in ABSENT):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = Absent(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, Finder())
