"""node.net.lean: libp2p loads without its QUIC, WebSocket and AutoTLS modules, whose
names stay usable as never-matching stand-ins (a real host pair is in every e2e test)."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.conftest import REPO

PROBE = """
import sys
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
