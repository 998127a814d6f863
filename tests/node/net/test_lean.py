"""node.net.lean: libp2p loads without its QUIC, WebSocket and AutoTLS modules, whose
names stay usable as never-matching stand-ins (a real host pair is in every e2e test), and
loads the deferred ones (RSA, mDNS, DNS, Prometheus) only when they are used."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import get_type_hints

from node.net import lean
from tests.e2e.conftest import REPO

PROBE = """
import sys
from typing import get_type_hints
{first}
import node.net
import libp2p
from libp2p.transport.quic.config import QUICTransportConfig
from libp2p.transport.quic.utils import is_quic_multiaddr
real = [m for m in sys.modules if m.startswith("aioquic")
        and type(sys.modules[m]).__name__ != "Absent"]
print(len(real), issubclass(QUICTransportConfig, Exception), is_quic_multiaddr("x"),
      isinstance(object(), QUICTransportConfig),
      type(sys.modules["libp2p.transport.tcp.tcp"]).__name__)
"""


def probe(first: str = "") -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_libp2p_loads_without_quic_and_its_names_never_match() -> None:
    assert probe() == "0 True False False module"


def test_a_process_that_imported_the_real_modules_keeps_them() -> None:
    real, is_class, *_ = probe("import libp2p.transport.quic.config").split()
    assert int(real) > 0 and is_class == "False"  # canary: the probe sees real modules


HEAVY = ("numpy", "rich", "zeroconf", "dns", "Crypto", "prometheus_client", "fastecdsa")
"""What the deferred stand-ins keep out of a process that only uses Ed25519 over /ip4."""

PAIR = """
import sys
from typing import get_type_hints
import trio
import node.net
from node.net.compat import new_host, running_host


def rsa_host():
    from libp2p import new_host as libp2p_host
    from libp2p.crypto.rsa import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as x25519
    from libp2p.custom_types import TProtocol
    from libp2p.security.noise.transport import PROTOCOL_ID, Transport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX, Yamux
    kp = create_new_key_pair(1024)
    noise = Transport(kp, noise_privkey=x25519().private_key)
    return libp2p_host(key_pair=kp, sec_opt={{TProtocol(PROTOCOL_ID): noise}},
                       muxer_opt={{TProtocol(YAMUX): Yamux}})


async def main() -> None:
    from libp2p.peer.peerinfo import info_from_p2p_addr
    a = new_host(b"\\1" * 32)
    b = {dialer}
    async with running_host(a, ["/ip4/127.0.0.1/tcp/0"]), \\
            running_host(b, ["/ip4/127.0.0.1/tcp/0"]):
        await b.connect(info_from_p2p_addr(a.get_addrs()[0]))
        with trio.fail_after(10):
            while not a.get_network().get_connections(b.get_id()):
                await trio.sleep(0.01)
        conn = a.get_network().get_connections(b.get_id())[0]
        print(conn.muxed_conn.peer_id == b.get_id(),
              *[m for m in {heavy} if m in sys.modules])

trio.run(main)
"""


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_a_host_pair_connects_without_the_deferred_packages() -> None:
    assert run(PAIR.format(dialer='new_host(b"\\2" * 32)', heavy=HEAVY)) == "True"


def test_a_peer_with_an_rsa_key_loads_the_real_module_and_connects() -> None:
    assert run(PAIR.format(dialer="rsa_host()", heavy=HEAVY)) == "True Crypto"


def test_the_dns_resolver_is_made_on_first_use_and_resolves() -> None:
    out = run("""
import sys, trio, node.net
from multiaddr import Multiaddr
from multiaddr.resolvers import DNSResolver
r = DNSResolver()
print("dns" in sys.modules, isinstance(r, DNSResolver), end=" ")
print(trio.run(r.resolve, Multiaddr("/ip4/10.0.0.1/tcp/1")), "dns" in sys.modules,
      type(r._resolver).__module__)
""")
    assert out == "False True [<Multiaddr /ip4/10.0.0.1/tcp/1>] True dns.asyncresolver"


def test_every_deferred_name_is_what_the_real_module_has() -> None:
    for name, names in lean.DEFERRED.items():
        module = importlib.import_module(name)
        real = module.real() if isinstance(module, lean.Deferred) else module
        for attr, kind in names.items():
            value = getattr(real, attr)
            if kind in (lean.CLASS, lean.LAZY):
                assert isinstance(value, type), (name, attr)
            elif kind == lean.FUNCTION:
                assert callable(value) and not isinstance(value, type), (name, attr)
            elif isinstance(kind, type):  # a copy of a plain record
                fields = {k: v for k, v in vars(value).items() if not k.startswith("__")}
                ours = {k: v for k, v in vars(kind).items() if not k.startswith("__")}
                assert ours == fields and get_type_hints(kind) == get_type_hints(value)
            else:
                assert value == kind, (name, attr)
