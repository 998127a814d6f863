"""ledger/errors.py draws its whole tree in its docstring."""

from __future__ import annotations

from ledger import errors
from tests.errortree import drawn, tree_problems


def test_the_docstring_tree_matches_the_classes() -> None:
    assert tree_problems(errors) == []
    tree = drawn(errors)
    assert tree["LedgerError"] is None
    assert tree["LocalLedgerError"] == tree["RemoteLedgerError"] == "LedgerError"
