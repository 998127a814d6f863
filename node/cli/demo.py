"""`offload demo`: a local network of provider processes and one offloaded torch job."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

from node.errors import UserError
from node.localnet import local_providers

DEMO_JOB = Path(__file__).resolve().parents[2] / "examples" / "torch_demo.py"


def run_demo(providers: int, *, keep: Path | None = None) -> dict[str, Any]:
    if providers < 1 or providers > 8:
        raise UserError("--providers must be between 1 and 8 (a laptop carries about 10 nodes)")
    if not DEMO_JOB.is_file():
        raise UserError(f"the demo job {DEMO_JOB} is missing; run from a checkout of offload")
    with tempfile.TemporaryDirectory(prefix="offload-demo-") as tmp:
        root = keep or Path(tmp)
        with local_providers(providers, root) as ready:
            doc = trio.run(_submit, root, ready[0].addr)
        return {"providers": [p.peer_id for p in ready], **doc}


async def _submit(root: Path, bootstrap: str) -> dict[str, Any]:
    """The job goes the way every requester's does: through the Requester API."""
    from node.api.requester import Job, Requester

    async with Requester(home=root / "requester", bootstrap=[bootstrap],
                         out=root / "out") as requester:
        r = await requester.submit(Job(DEMO_JOB, args=["--steps", "20"], timeout=300))
    return {"job_id": r.job_id, "provider": r.provider, "verified": True,
            "exit_code": r.exit_code, "status": r.status, "stdout": r.stdout,
            "wall_s": round(r.wall_s, 3)}
