"""Errors of the sandbox: each says what to run or change."""

from __future__ import annotations

from node.errors import NodeError


class SandboxError(NodeError):
    """Root of sandbox errors."""


class SandboxUnavailable(SandboxError):
    """This host cannot provide the requested isolation; the message names the fix."""


class LaunchFailed(SandboxError):
    """The launcher or bubblewrap failed before the job started."""
