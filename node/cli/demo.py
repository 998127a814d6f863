"""`offload demo`: a local network of provider processes and one offloaded torch job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from node.errors import NodeError, UserError
from node.home import init_identity
from node.net.client import open_client
from node.requester.exchange import JobRequest, choose_provider, run_job
from protocol import Resources
from scheduler import Requirements

DEMO_JOB = Path(__file__).resolve().parents[2] / "examples" / "torch_demo.py"
READY_TIMEOUT_S = 90.0


@contextmanager
def provider_processes(n: int, root: Path) -> Iterator[list[dict[str, Any]]]:
    """Start `n` providers, each bootstrapping from the one before; all stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    ready: list[dict[str, Any]] = []
    try:
        for i in range(n):
            home = root / f"provider{i + 1}"
            ready_file = root / f"provider{i + 1}.ready"
            cmd = [sys.executable, "-m", "node", "--home", str(home), "provide",
                   "--listen", "/ip4/127.0.0.1/tcp/0", "--ready-file", str(ready_file),
                   "--no-benchmark"]
            if ready:
                cmd += ["--bootstrap", ready[-1]["addrs"][0]]
            log = (root / f"provider{i + 1}.log").open("wb")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
            ready.append(wait_ready(ready_file, procs[-1], root / f"provider{i + 1}.log"))
        yield ready
    finally:
        stop_all(procs)


def wait_ready(path: Path, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists():
            info: dict[str, Any] = json.loads(path.read_text())
            return info
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise NodeError(f"a demo provider exited with {proc.returncode}:\n{tail}")
        time.sleep(0.1)
    raise NodeError(f"a demo provider was not ready within {READY_TIMEOUT_S:.0f} s")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_demo(providers: int, *, keep: Path | None = None) -> dict[str, Any]:
    if providers < 1 or providers > 8:
        raise UserError("--providers must be between 1 and 8 (a laptop carries about 10 nodes)")
    if not DEMO_JOB.is_file():
        raise UserError(f"the demo job {DEMO_JOB} is missing; run from a checkout of offload")
    with tempfile.TemporaryDirectory(prefix="offload-demo-") as tmp:
        root = keep or Path(tmp)
        with provider_processes(providers, root) as ready:
            identity, _ = init_identity(root / "requester")
            bootstrap = ready[0]["addrs"][0]
            outcome = trio.run(_submit, identity, bootstrap, root / "out")
        r = outcome.result
        return {"providers": [p["peer_id"] for p in ready], "job_id": r.job_id,
                "provider": r.provider, "verified": True, "exit_code": r.exit_code,
                "status": r.status, "stdout": r.stdout, "wall_s": round(outcome.wall_s, 3)}


async def _submit(identity: Any, bootstrap: str, out: Path) -> Any:
    async with open_client(identity, [bootstrap]) as (host, disc):
        ad = await choose_provider(disc, Requirements())
        request = JobRequest(script=DEMO_JOB, args=("--steps", "20"),
                             resources=Resources(max_seconds=300))
        return await run_job(host, ad.message, request, out)
