"""scheduler/ has one error root, drawn in scheduler/errors.py's docstring."""

from __future__ import annotations

import scheduler
from scheduler import errors
from scheduler.errors import FilterError, SchedulerError
from tests.errortree import drawn, tree_problems


def test_the_docstring_tree_matches_the_classes() -> None:
    assert tree_problems(errors) == []
    assert drawn(errors) == {"SchedulerError": None, "FilterError": "SchedulerError"}


def test_a_bad_filter_is_a_scheduler_error_and_still_a_value_error() -> None:
    try:
        scheduler.parse("cpus >=")
    except SchedulerError as exc:
        assert isinstance(exc, FilterError) and isinstance(exc, ValueError)
        assert exc.column == 8
    else:
        raise AssertionError("the filter parsed")


def test_the_canary_notices_an_undrawn_class() -> None:
    class Undrawn(SchedulerError):
        pass

    Undrawn.__module__ = errors.__name__
    errors.Undrawn = Undrawn  # type: ignore[attr-defined]
    try:
        assert tree_problems(errors) == ["Undrawn is defined but not drawn in the docstring tree"]
    finally:
        del errors.Undrawn  # type: ignore[attr-defined]
