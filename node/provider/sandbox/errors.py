"""Errors of the sandbox, defined with every node error in node/errors.py (one tree):

    HostError
        SandboxError              root of sandbox errors
            SandboxUnavailable    this host cannot provide the requested isolation
                SeccompUnsupported  no syscall table for this architecture
            LaunchFailed          the launcher or bubblewrap failed before the job started
            CgroupError           a cgroup could not be made, limited, emptied or removed

They are re-exported here so the sandbox's modules keep one short import.
landlock.py's LandlockUnsupported stays outside the tree: that file runs stdlib-only
inside the tier B sandbox and cannot import node/.
"""

from __future__ import annotations

from node.errors import CgroupError as CgroupError
from node.errors import LaunchFailed as LaunchFailed
from node.errors import SandboxError as SandboxError
from node.errors import SandboxUnavailable as SandboxUnavailable
from node.errors import SeccompUnsupported as SeccompUnsupported
