"""Everything with I/O: libp2p host, DHT ads, stream handlers, provider, requester, CLI.

compat.py      every py-libp2p 0.8.1 workaround but the DHT's, in one place
compat_kad.py  the DHT's: one-peer Kademlia requests that raise, a fair DHT server
host.py        our Host/Stream seam over libp2p: dial, listen, framed streams
discovery.py   Kademlia: signed CapacityAds under short keys, provider records, re-checks
home.py        OFFLOAD_HOME and the node's Ed25519 identity key
provider.py    the provider daemon: advertise, admit, run, sign results
executor.py    where jobs run: a proven sandbox tier (warm or cold) or, if allowed, plain
admission.py   slots, a bounded FIFO queue and per-peer shares, decided when a job is quoted
limits.py      per-peer and per-IP shares of streams and connections; peer errors by kind
replies.py     the named error frames a provider answers with
results.py     the provider's recent signed results, for requesters that lost theirs
jobio.py       a job's files on the provider: inputs via the cache (resumable), outputs
config.py      provider.toml / requester.toml: loading and one-line validation errors
telemetry.py   live host and GPU telemetry (pynvml) for ads
benchmark.py   matmul and memory-bandwidth benchmarks with the job runtime, on a schedule
cache.py       content-addressed input cache: LRU by bytes, pins, resumable partials
metrics.py     Prometheus metrics on loopback
status.py      the status file `offload status` reads
runner.py      a plain subprocess with capped output, wall timeout and group kill
transfer.py    content-addressed files in <= 1 MiB chunks
requester.py   choose a provider, send spec and inputs, verify the result
verify.py      offline checks of a saved result
escrows.py     leases of live requester processes; escrows of dead ones swept at start
client.py      a requester-side node session (host, DHT client, bootstrap)
demo.py        `offload demo`: a local network and a torch job
cli.py         the `offload` command
errors.py      one error root: UserError (local) vs RemoteError (a peer)
api.py         the Python API: `async with Requester(...)`: offers, submit, map, plan, events
remote.py      `@remote` functions: .remote(), .map(), .call(), .local()
values.py      @remote's sandbox-side wrapper and the strict decoder of return values
sync.py        the blocking facade (a trio loop in a helper thread), SyncRequester
sandbox/       job isolation (see its package docstring)

`from node import Requester, remote, Result, Job` loads the API on first use, so the
CLI does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.api.remote import RemoteFunction, remote
    from node.api.requester import Job, JobFailed, MapItemFailed, Offer, Requester, Result
    from node.api.sync import SyncRequester
    from node.api.values import RemoteFunctionError, ReturnValueRejected

__all__ = ["Job", "JobFailed", "MapItemFailed", "Offer", "RemoteFunction",
           "RemoteFunctionError", "Requester", "Result", "ReturnValueRejected",
           "SyncRequester", "remote"]
_API = "node.api.requester"
_LAZY = {"Job": _API, "JobFailed": _API, "MapItemFailed": _API, "Offer": _API,
         "Requester": _API, "Result": _API,
         "RemoteFunction": "node.api.remote", "remote": "node.api.remote",
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
