"""Check an errors.py docstring's drawn tree against the classes the module defines."""

from __future__ import annotations

import inspect
import re
from types import ModuleType

_LINE = re.compile(r"^( +)([A-Z][A-Za-z0-9]*)\b")


def drawn(module: ModuleType) -> dict[str, str | None]:
    """Each class named in the docstring's tree, with the class drawn above it (None: a root)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in (module.__doc__ or "").splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        depth, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def defined(module: ModuleType) -> dict[str, type[BaseException]]:
    return {name: obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException)
            and obj.__module__ == module.__name__}


def tree_problems(module: ModuleType, outside: dict[str, type] | None = None) -> list[str]:
    """What is wrong between the drawn tree and the module ([] when they agree). `outside`
    names classes the tree may draw that live elsewhere (e.g. a parent in another package)."""
    tree, classes = drawn(module), defined(module)
    known: dict[str, type] = {**(outside or {}), **classes}
    problems = [f"{name} is defined but not drawn in the docstring tree"
                for name in classes if name not in tree]
    for name, parent in tree.items():
        if name not in known:
            problems.append(f"{name} is drawn but not defined")
        elif parent is not None and parent in known and not issubclass(known[name],
                                                                        known[parent]):
            problems.append(f"{name} is drawn under {parent} but does not derive from it")
    return problems
