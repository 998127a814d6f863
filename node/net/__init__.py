"""Networking, below every role: the only part of node/ that imports libp2p.

host.py        our Host/Stream seam (typing.Protocols) and their libp2p form: dial, listen
compat.py      every py-libp2p 0.8.1 workaround but the DHT's, in one place
compat_kad.py  the DHT's: one-peer Kademlia requests that raise, a fair DHT server
lean.py        libp2p without its QUIC, WebSocket and AutoTLS modules (half its import time)
memory.py      an in-memory host pair on trio memory streams, for tests without sockets
client.py      a requester-side node session: a host, a DHT client and the bootstrap peers
addrs.py       peer addresses as text, checked without importing libp2p
discovery.py   Kademlia: signed CapacityAds under short keys, provider records, re-checks
gossip.py      receipts on a pubsub topic, so reputation needs no central server
guard.py       a Stream whose every frame passes one side's exchange table
transfer.py    content-addressed files in <= 1 MiB chunks, resumable
lane.py        a fast lane for bulk data: TLS 1.3 on a direct TCP connection, certificates
               bound to libp2p peer ids, negotiated over the job stream, else the stream
nat.py         behind NATs: circuit relay v2 served and dialled, AutoNAT, hole punching
reach.py       our reachability (public / private) and the relay reservations it needs
relay.py       `offload relay`: a public relay, AutoNAT and DHT server that runs no jobs
proximity.py   Vivaldi coordinates from measured round trips
peers.py       the requester's memory of peers: RTTs, its coordinate, trust and bans
limits.py      per-peer and per-IP shares of streams and connections; peer errors by kind
"""

from node.net.lean import install as _lean

_lean()
