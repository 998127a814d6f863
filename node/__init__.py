"""Everything with I/O, by role; a newcomer finds any concept from the folder names.

net/           networking below every role: the Host/Stream seam over libp2p (the only
               place libp2p is imported), discovery, gossip, transfer, proximity, peers
provider/      the provider daemon: exchange handlers, admission, executor, sandbox/, cache
requester/     the one requester core (session) under the CLI and the API: placement,
               payments, holds, map, plan, verify, events
api/           what Python users import: Requester, @remote, values, the sync facade
cli/           the `offload` command: one thin module per verb group
errors.py      one error tree: local (fix your command or config) vs remote (a peer)
home.py        OFFLOAD_HOME: the files under a home, the identity key, the provider lock
config.py      provider.toml / requester.toml: settings resolved flag > env > file > default
benchmark.py   matmul and memory-bandwidth benchmarks of this machine (provider ads and
               requester plans both measure it)
localnet.py    N local provider processes on loopback: demo, e2e tests and benchmarks

Dependencies inside node/ (tests/test_layout.py): only net/ imports libp2p; provider/ and
requester/ never import each other; api/ goes through requester/; nothing imports cli/.
`from node import Requester, remote, split, File, Result, Job` loads the API on first use, so the
CLI does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.api.classes import File, RemoteClass, idempotent
    from node.api.remote import RemoteFunction, remote
    from node.api.requester import Job, JobFailed, MapItemFailed, Offer, Requester, Result
    from node.api.split import Split, split
    from node.api.sync import SyncRequester
    from node.api.values import RemoteFunctionError, ReturnValueRejected

__all__ = ["File", "Job", "JobFailed", "MapItemFailed", "Offer", "RemoteClass", "RemoteFunction",
           "RemoteFunctionError", "Requester", "Result", "ReturnValueRejected",
           "Split", "SyncRequester", "idempotent", "remote", "split"]
_API = "node.api.requester"
_LAZY = {"Job": _API, "JobFailed": _API, "MapItemFailed": _API, "Offer": _API,
         "Requester": _API, "Result": _API,
         "RemoteFunction": "node.api.remote", "remote": "node.api.remote",
         "File": "node.api.classes", "RemoteClass": "node.api.classes",
         "idempotent": "node.api.classes", "split": "node.api.split", "Split": "node.api.split",
         "SyncRequester": "node.api.sync", "RemoteFunctionError": "node.api.values",
         "ReturnValueRejected": "node.api.values"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'node' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
