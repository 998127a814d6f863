"""The requester: one core under both the CLI and the Python API.

session.py     the core: opens identity, ledger, host, discovery, gossip, payments, holds;
               builds a request from one job description, places, maps and plans
include.py     local code that travels: modules as files, package folders as deterministic
               zips, a launcher that puts them on sys.path; local_imports finds them
exchange.py    one job exchange with a provider, driven by protocol/exchange.py's table
sessions.py    one session (a lease on one provider): calls, streamed items, transcript
               checks, close and settlement (last checkpoint if the provider vanished)
records.py     the sessions this node opened, and the signed result each settled on,
               kept under the home for `offload sessions` and `offload verify`
offers.py      the offer cache: verified ads reused until they expire, in memory and
               under the home (re-verified when read), refreshed in the background
placement.py   placing one job: rank offers, try providers until one delivers, verify
mapper.py      a distributed map: N jobs over several providers, results in input order
plan.py        the offload decision with real inputs: local benchmark, hints, offers
payments.py    the money path: escrow per attempt, then release, reject or refund once
holds.py       books of the home: payments held back, detached jobs' escrows
detach.py      detached jobs: submit, then result, logs and cancel from any process
escrows.py     leases of live requester processes; escrows of dead ones swept at start
agreement.py   when two providers' results agree; canary jobs
verify.py      offline checks of a saved result: signature and output digests
events.py      typed events of a requester's work, for progress, logs and subscribers
"""
