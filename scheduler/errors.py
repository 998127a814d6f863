"""Errors of scheduler/: one root; every scheduler error is local (a bad request of ours).

    SchedulerError        root of every error raised by scheduler/
        FilterError       a --where filter that does not parse (also a ValueError)

scheduler/ is pure decision logic over validated inputs, so nothing here is remote; node/
translates a SchedulerError that reaches it into node.errors.InvalidInput.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of every error raised by scheduler/."""


class FilterError(SchedulerError, ValueError):
    """A filter that does not parse; `column` (1-based) and `token` say where and what."""

    expression: str = ""
    column: int = 0
    token: str | None = None

    def caret(self) -> str:
        """Two lines for a terminal: the filter and a caret under the bad column."""
        line = "".join(" " if c.isspace() else c for c in self.expression)
        return f"{line}\n{' ' * (self.column - 1)}^"
