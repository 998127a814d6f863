"""The provider: a daemon that advertises capacity, admits signed jobs, runs them in
sandboxes and answers with signed results.

daemon.py      the daemon: builds ledger, cache, telemetry, then serves and advertises
exchange.py    the provider's side of the job and settle exchanges (protocol/exchange.py)
admission.py   slots, a bounded FIFO queue and per-peer shares, decided at quote time
executor.py    where jobs run: a proven sandbox tier (warm or cold) or, if allowed, plain
jobio.py       a job's files: inputs via the cache (resumable), outputs out
sessions.py    the provider's side of the session exchange: a host process, many calls
session_host_io.py  the frames to and from the session host (HOST_FRAMES)
live.py        live job output: runner chunks to capped `Output` frames
cache.py       content-addressed input cache: LRU by bytes, pins, resumable partials
results.py     recent signed results, for requesters that lost theirs
board.py       jobs running here by id: their output tail, followers, stop events
control.py     a requester's control of its jobs: logs (live with follow) and cancel
kept.py        detached jobs' signed results and outputs, kept on disk to be fetched
replies.py     the named error frames a provider answers with
runner.py      a plain subprocess with capped output, wall timeout and group kill
telemetry.py   live host and GPU load (pynvml) for ads and admission
metrics.py     Prometheus metrics on loopback
status.py      the status file `offload status` reads
sandbox/       job isolation: tiers A and B, job users, cgroups (see its docstring)

The device benchmark its ads carry is node/benchmark.py (requester plans measure it too).
"""
