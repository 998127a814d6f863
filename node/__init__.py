"""Everything with I/O: libp2p host, DHT ads, stream handlers, provider, requester, CLI.

compat.py      every py-libp2p 0.8.1 workaround, in one place
host.py        our Host/Stream seam over libp2p: dial, listen, framed streams
discovery.py   Kademlia: signed CapacityAds under short keys, provider records, re-checks
home.py        OFFLOAD_HOME and the node's Ed25519 identity key
provider.py    the provider daemon: advertise, admit, run, sign results
executor.py    where jobs run: a proven sandbox tier (warm or cold) or, if allowed, plain
admission.py   slots, a bounded FIFO queue, a cap on open job streams
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
client.py      a requester-side node session (host, DHT client, bootstrap)
demo.py        `offload demo`: a local network and a torch job
cli.py         the `offload` command
errors.py      one error root: UserError (local) vs RemoteError (a peer)
sandbox/       job isolation (see its package docstring)
"""
