"""NAT traversal between real node processes in network namespaces the tests create.

topology.py          namespaces, a public bridge, NAT routers (cone, symmetric); cleanup
conftest.py          the `topology` fixture: skipped, with the reason, where it cannot run
test_topology.py     the namespaces behave as the NATs they stand for
test_nat_e2e.py      relays, AutoNAT, hole punching and relayed jobs across those NATs
"""
