"""What `offload submit` and `offload map` show while jobs move, and @remote's live prints.

A real provider process; the CLI under a pseudo-terminal (rich bars: bytes, percent, rate
and the job's phases), on pipes (plain lines on stderr only), with --json (stdout is the
one document); a map's items done of all and failed; a @remote print seen while the
function still sleeps.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

from tests.e2e.conftest import REPO, Network, _env

MIB = 1024 * 1024
JOB = """\
import os, time
data = open("big.bin", "rb").read()
print("read", len(data), "bytes", flush=True)
time.sleep(4)
os.makedirs("out", exist_ok=True)
open("out/back.bin", "wb").write(data[: 12 * 1024 * 1024])
print("done")
"""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def _job(root: Path) -> None:
    (root / "job.py").write_text(JOB)
    (root / "big.bin").write_bytes(os.urandom(24 * MIB))


def _submit_args(p: dict[str, str], out: str, *extra: str) -> list[str]:
    return ["submit", "job.py", "--file", "big.bin", "--bootstrap", p["addr"],
            "--timeout", "120", "--out", out, *extra]


def _under_pty(network: Network, args: list[str], env: dict[str, str],
               timeout: float = 240) -> tuple[int, str]:
    """Run `offload ARGS` with a terminal for stdin, stdout and stderr; all it drew."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    proc = network.net.spawn(network.net.command(network.root / "requester", *args),
                             env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal closed
                break
            if not data:
                break
            seen += data
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, seen.decode("utf-8", "replace")


def test_a_terminal_shows_bytes_percent_rate_and_the_phases(network: Network) -> None:
    p = network.start_provider()
    _job(network.root)
    # the stream path (no lane) is slow enough on loopback for bars between the ends
    code, drawn = _under_pty(network, _submit_args(p, "res", "--follow"),
                             env={"TERM": "xterm-256color", "OFFLOAD_LANE": "off",
                                  "COLUMNS": "200"})
    text = ANSI.sub("\n", drawn)
    assert code == 0, text
    assert re.search(r"uploading big\.bin: [\d.]+ MiB of 24\.0 MiB \((\d|[1-9]\d)%\) at "
                     r"[\d.]+ [KMG]?i?B/s", text), text
    assert re.search(r"uploaded big\.bin: 24\.0 MiB in [\d.]+ s at [\d.]+ [KMG]?i?B/s", text)
    assert re.search(r"downloaded back\.bin: 12\.0 MiB in [\d.]+ s at [\d.]+ [KMG]?i?B/s", text)
    for phase in (r"job \w+ quoted", r"job \w+ uploading", r"job \w+ running \d+ s",
                  r"job \w+ downloading", r"result of job \w+ verified \(ok\)"):
        assert re.search(phase, text), (phase, text)
    assert (network.root / "res" / "back.bin").stat().st_size == 12 * MIB
    # --follow: the job's lines whole, above the bars, while it runs (before the download)
    lines = text.splitlines()
    assert lines.count("read 25165824 bytes") == 1 and lines.count("done") == 1, text
    assert text.index("read 25165824 bytes") < text.index("downloading back.bin")


def test_pipes_get_plain_lines_on_stderr_and_json_alone_on_stdout(network: Network) -> None:
    p = network.start_provider()
    _job(network.root)
    res = network.offload(*_submit_args(p, "plain"), timeout=240, check=True)
    lines = res.stderr.splitlines()
    assert any(re.fullmatch(r"offload: \w+: uploaded big\.bin: 24\.0 MiB in [\d.]+ s at "
                            r"[\d.]+ [KMG]?i?B/s", line) for line in lines), res.stderr
    assert any(re.fullmatch(r"offload: \w+: downloaded back\.bin: 12\.0 MiB in .*", line)
               for line in lines), res.stderr
    assert any(re.fullmatch(r"offload: \w+: running job \w+ \(\d+ s\)", line)
               for line in lines), res.stderr
    assert "\x1b[" not in res.stderr  # no terminal codes in a log
    assert "offload:" not in res.stdout and "MiB" not in res.stdout, res.stdout

    res = network.offload(*_submit_args(p, "doc", "--json"), timeout=240, check=True)
    doc = json.loads(res.stdout)  # stdout is exactly the one document
    assert res.stdout.count("\n") == 1 and doc["status"] == "ok"
    assert "read 25165824 bytes" in doc["stdout"]


def test_a_map_shows_items_done_of_all_and_failures(network: Network) -> None:
    p = network.start_provider()
    script = network.root / "item.py"
    script.write_text("import sys\nif sys.argv[1] == 'bad':\n    sys.exit(3)\nprint(sys.argv[1])\n")
    items = network.root / "items.txt"
    items.write_text("a\nbad\nc\n")
    res = network.offload("map", str(script), "--items", str(items), "--out",
                          str(network.root / "m"), "--bootstrap", p["addr"], timeout=240)
    assert res.returncode == 1, res.stderr  # one item failed
    counts = re.findall(r"^offload: map: (\d)/3 items done(?:, (\d) failed)?$", res.stderr, re.M)
    assert counts[0] == ("0", "") and counts[-1] == ("3", "1"), res.stderr
    done = [int(n) for n, _ in counts]
    assert done == sorted(done) and len(done) >= 3, res.stderr


LIVE = textwrap.dedent("""\
    import sys, time
    from node import remote

    @remote(timeout=120)
    def slow() -> int:
        print("hello from the provider", flush=True)
        time.sleep(8)
        return 7

    print("returned", slow.remote(), flush=True)
""")


def test_a_remote_print_arrives_while_the_call_runs(network: Network) -> None:
    p = network.start_provider()
    script = network.root / "live.py"
    script.write_text(LIVE)
    env = _env() | {"OFFLOAD_HOME": str(network.root / "api"), "OFFLOAD_BOOTSTRAP": p["addr"],
                    "PYTHONPATH": str(REPO)}
    proc = network.net.spawn([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    printed_at = time.monotonic()
    assert first == "hello from the provider\n", (first, proc.stderr and proc.stderr.read())
    assert proc.poll() is None  # the call has not returned: the function still sleeps
    rest, err = proc.communicate(timeout=120)
    assert rest == "returned 7\n", err  # printed once, not again when the call returned
    assert time.monotonic() - printed_at > 3, "the print came only with the result"
