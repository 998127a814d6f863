"""NAT traversal between real node processes in network namespaces the tests create.

netns.py             the fixture library: namespaces, a public bridge, NAT routers (cone,
                     symmetric), processes run inside them; cleanup, stale-run sweep
conftest.py          the `topology` fixture (a netns.Topology): skipped, with the reason,
                     where it cannot run
test_topology.py     the namespaces behave as the NATs they stand for, and leave nothing
test_nat_e2e.py      relays, AutoNAT, hole punching and relayed jobs across those NATs
"""
