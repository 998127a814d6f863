"""@remote(keep_warm=...)'s options are checked where they are given (the calls against
real providers are in tests/e2e/test_keep_warm.py)."""

from __future__ import annotations

from typing import Any

import pytest

from node.api.remote import remote
from node.errors import UserError


def seen(x: int) -> int:
    return x


@pytest.mark.parametrize("bad, match", [
    ({"keep_warm": -1}, "keep_warm must be"),
    ({"keep_warm": 10, "verify": "k", "redundancy": 2}, "verify"),
    ({"keep_warm": 10, "idle_timeout": 5}, "idle_timeout are for classes"),
    ({"concurrency": 2}, "concurrency are for classes"),
])
def test_keep_warm_options_are_checked(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(UserError, match=match):
        remote(**bad)(seen)


def test_keep_warm_is_refused_on_a_class() -> None:
    class C:
        pass

    with pytest.raises(UserError, match="keep_warm is for functions"):
        remote(keep_warm=10)(C)
