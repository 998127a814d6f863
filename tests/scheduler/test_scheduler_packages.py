"""A job's package needs against the ads' runtimes: `meets` filters, `unmet` names the one
no runtime has (with what they offer)."""

from __future__ import annotations

import pytest

from protocol import Runtime
from scheduler import Requirements
from scheduler.requirements import meets, package_spec, unmet
from tests.factories import NOW
from tests.factories import plain_ad as ad

NUMPY = ad(runtimes=(Runtime(name="python3", version="3.12", packages={"numpy": "2.4.6"},
                             digest="ab" * 32),))
TORCH = ad(runtimes=(Runtime(name="python3", version="3.12",
                             packages={"torch": "2.13.0+cpu", "numpy": "1.26.0"},
                             digest="cd" * 32),))


def need(*specs: str, runtime: str = "python3") -> Requirements:
    return Requirements(runtime=runtime, packages=tuple(package_spec(s) for s in specs))


@pytest.mark.parametrize(("specs", "fit"), [
    ((), {"numpy", "torch"}),
    (("numpy",), {"numpy", "torch"}),
    (("numpy>=2",), {"numpy"}),
    (("NumPy<2",), {"torch"}),
    (("torch==2.13.0",), {"torch"}),
    (("torch", "numpy>=2"), set()),
    (("scipy",), set()),
])
def test_meets_keeps_the_runtimes_that_have_every_package(specs: tuple[str, ...],
                                                           fit: set[str]) -> None:
    ads = {"numpy": NUMPY, "torch": TORCH}
    assert {k for k, a in ads.items() if meets(a, need(*specs), now_ms=NOW)} == fit


def test_unmet_names_the_package_no_runtime_has() -> None:
    assert unmet([NUMPY, TORCH], need("scipy"), now_ms=NOW) == (
        "no provider's python3 runtime has package scipy (they offer numpy 1.26.0, numpy "
        "2.4.6, torch 2.13.0+cpu)")
    assert "package numpy>=3 " in (unmet([NUMPY, TORCH], need("numpy>=3"), now_ms=NOW) or "")
    assert unmet([NUMPY, TORCH], need("torch", "numpy>=2"), now_ms=NOW) == (
        "no provider's python3 runtime has all of the packages torch, numpy>=2 together")
    assert unmet([NUMPY, TORCH], need("torch"), now_ms=NOW) is None
    assert "has package numpy (they offer no reported packages)" in (
        unmet([NUMPY], need("numpy", runtime="other"), now_ms=NOW) or "")


@pytest.mark.parametrize("bad", ["", "numpy>=", "nu mpy", "numpy~=2", "torch>=two"])
def test_a_bad_spec_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a package name"):
        package_spec(bad)
