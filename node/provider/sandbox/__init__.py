"""Job sandboxes: tier A (bubblewrap) and tier B (Landlock), both as a job user.

runner.py     one job's sandbox: tmpfs work dir, inputs, cgroup, launch, wait, kill, usage
launch.py     exec helper (stdlib only): a watchdog that cleans up if the daemon dies, and
              its child: join cgroups, rlimits, drop to the job user, exec
bwrap.py      the bubblewrap command line (pure), GPU binds included
seccomp.py    the seccomp-BPF filter, generated without libseccomp
landlock.py   Landlock rules and seccomp install for tier B (stdlib only)
cgroups.py    job cgroups on v1 (hybrid) and v2 hosts: limits, usage, kill-all
users.py      the dedicated job users and their leases
reap.py       at start and stop: what this daemon's cgroup base and job dirs still hold
runtime.py    job runtimes: world-readable venvs with a manifest and digest
pool.py       warm workers: sandboxes with torch imported, one job each
gpu.py        NVIDIA GPUs through pynvml; device nodes, libraries, cgroup rules
probes.py     escape probes, each judged on the host side
check.py      running the probes; the tier a host proves
commands.py   `offload sandbox setup|check`
errors.py     SandboxError and its kinds
"""
