"""Dedicated unprivileged host users, one per job slot: `offload-job0`, `offload-job1`, ..."""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess

from node.provider.sandbox.errors import SandboxUnavailable

PREFIX = "offload-job"
DEFAULT_COUNT = 4


@dataclasses.dataclass(frozen=True, slots=True)
class JobUser:
    name: str
    uid: int
    gid: int


def user_name(index: int) -> str:
    return f"{PREFIX}{index}"


def lookup(count: int = DEFAULT_COUNT) -> list[JobUser]:
    """The first `count` job users; SandboxUnavailable names the setup command if any is missing."""
    users = []
    for i in range(count):
        try:
            entry = pwd.getpwnam(user_name(i))
        except KeyError:
            raise SandboxUnavailable(f"job user {user_name(i)} is missing; run "
                                     "`offload sandbox setup` as root") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise SandboxUnavailable(f"job user {user_name(i)} must not be root or in group 0")
        users.append(JobUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid))
    return users


def create(count: int = DEFAULT_COUNT) -> list[JobUser]:
    """Create the missing job users (root only): system users, no home, no login shell."""
    if os.geteuid() != 0:
        raise SandboxUnavailable("creating job users needs root; run `sudo offload sandbox setup`")
    for i in range(count):
        name = user_name(i)
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
    return lookup(count)


class UserPool:
    """Leases each job user to one sandbox at a time."""

    def __init__(self, users: list[JobUser]) -> None:
        self._free = list(users)
        self.size = len(users)

    def lease(self) -> JobUser | None:
        return self._free.pop(0) if self._free else None

    def release(self, user: JobUser) -> None:
        if user not in self._free:
            self._free.append(user)

    @property
    def free(self) -> int:
        return len(self._free)
