"""Library side of `offload sandbox setup|check`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import trio

from node.home import Home
from node.provider.sandbox import runtime, users
from node.provider.sandbox.errors import SandboxError


def setup(*, users_count: int = users.DEFAULT_COUNT) -> dict[str, Any]:
    count = users_count
    if os.geteuid() != 0:
        raise SandboxError("`offload sandbox setup` needs root: it creates users under /etc "
                           "and a runtime under /opt")
    if shutil.which("bwrap") is None:
        raise SandboxError("bubblewrap is missing; run `apt-get install bubblewrap` first")
    created = users.create(count)
    info = runtime.install()
    return {"users": [u.name for u in created],
            "runtime": {"name": info.name, "path": str(info.path), "digest": info.digest}}


async def full_check(home: Path) -> dict[str, Any]:
    """Every probe, resource ones included; tier "none" with the reason if no sandbox."""
    from node.provider.sandbox.cgroups import CgroupError, detect_usable
    from node.provider.sandbox.check import check
    from node.provider.sandbox.runner import Sandbox

    try:
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root to switch to the job users")
        if shutil.which("bwrap") is None:
            raise SandboxError("bubblewrap is missing; run `apt-get install bubblewrap`")
        cgroups = await trio.to_thread.run_sync(
            lambda: detect_usable(base=f"offload-check-{os.getpid()}"))
        sandbox = Sandbox(users=users.UserPool(users.lookup(2)), cgroups=cgroups,
                          runtime=runtime.describe())
        try:
            report = await check(sandbox, key_file=Home(home).identity, quick=False)
        finally:
            cgroups.cleanup_stale()
            cgroups.remove_bases()
    except (SandboxError, CgroupError, OSError) as exc:
        return {"tier": "none", "probes": {}, "startup_ms": None, "error": str(exc)}
    doc = report.to_json()
    doc["details"] = report.details
    return doc


def format_report(doc: dict[str, Any]) -> str:
    if doc.get("error"):
        return f"tier none: {doc['error']}"
    width = max(len(n) for n in doc["probes"])
    lines = [f"{name:<{width}}  {verdict:<8}  {doc['details'].get(name, '')}"
             for name, verdict in doc["probes"].items()]
    escaped = [n for n, v in doc["probes"].items() if v == "escaped"]
    lines.append(f"tier {doc['tier']}: {len(doc['probes']) - len(escaped)} of "
                 f"{len(doc['probes'])} probes blocked; sandbox start-up {doc['startup_ms']} ms"
                 + (f"; ESCAPED: {', '.join(escaped)}" if escaped else ""))
    return "\n".join(lines)
