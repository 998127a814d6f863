"""A provider killed with -9 mid-job leaves nothing running, and nothing after its next start."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import uuid

import pytest

from tests.e2e.conftest import Network
from tests.e2e.leftovers import carrying, cgroup_tasks, job_dirs, job_groups, provide, wait_for

SLEEPER = "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(600)\n"


@pytest.mark.parametrize("tier", ["A", "B"])
def test_kill_9_mid_job_leaves_nothing(network: Network, tier: str) -> None:
    p = provide(network, "p1", "--warm", "0", "--slots", "1", "--sandbox-tier", tier, tag="a")
    script = f"sleeper_{uuid.uuid4().hex[:12]}.py"
    (network.root / script).write_text(SLEEPER)
    network.offload_async("submit", script, "--bootstrap", p["addr"], "--timeout", "600")
    assert wait_for(lambda: len(carrying(script)) >= 2, 90), p["log"].read_text()
    assert carrying(script, job_users=False)  # the launcher's watchdog, root, outside
    assert cgroup_tasks(p["base"]) and job_groups(p["base"]) and job_dirs(p["base"])
    if tier == "A":
        assert any(argv0.endswith("bwrap") for _, argv0 in carrying(script))

    p["proc"].send_signal(signal.SIGKILL)
    p["proc"].wait()
    assert wait_for(lambda: not carrying(script), 30), \
        f"outlived their daemon: {carrying(script)}"
    assert wait_for(lambda: not carrying(script, job_users=False), 30), "a launcher is left"
    assert wait_for(lambda: not cgroup_tasks(p["base"]), 30), cgroup_tasks(p["base"])

    again = provide(network, "p1", "--warm", "0", "--slots", "1", "--sandbox-tier", tier,
                    tag="b")
    assert again["peer_id"] == p["peer_id"]
    assert job_groups(p["base"]) == [] and job_dirs(p["base"]) == []
    assert not carrying(script)
    (network.root / "hello.py").write_text("print('alive')\n")
    res = network.offload("submit", "hello.py", "--bootstrap", again["addr"], "--timeout", "60",
                          "--json", check=True)
    assert json.loads(res.stdout)["stdout"] == "alive\n"


def test_canary_the_probes_see_a_process_left_running(network: Network) -> None:
    """The same probes, on a process that does outlive its parent, in a cgroup of a base."""
    from node.provider.sandbox.cgroups import detect_usable
    from node.provider.sandbox.users import user_name

    marker = f"canary_{uuid.uuid4().hex[:12]}.py"
    manager = detect_usable(base=f"offload-test-canary-{os.getpid()}")
    group = manager.create("job-canary")
    uid = pwd.getpwnam(user_name(0)).pw_uid
    code = ("import subprocess, sys\n"
            "p = subprocess.Popen(['/usr/bin/python3', '-c', 'import time; time.sleep(120)', "
            f"{marker!r}], start_new_session=True, user={uid})\n"
            "for f in sys.argv[1:]:\n    open(f, 'w').write(str(p.pid))\n")
    subprocess.run([sys.executable, "-c", code, *group.procs_files], check=True)
    try:
        assert wait_for(lambda: len(carrying(marker)) == 1, 10)
        assert cgroup_tasks(manager.base) == {carrying(marker)[0][0]}
        assert {g.name for g in job_groups(manager.base)} == {"job-canary"}
    finally:
        manager.cleanup_stale()
        manager.remove_bases()
    assert not carrying(marker) and not cgroup_tasks(manager.base)
